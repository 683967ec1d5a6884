"""`fcnseg data`: list dataset formats, download public datasets, check a dataset for problems.

fcnseg data list
fcnseg data download voc2012 --root ~/data         then use voc:~/data
fcnseg data download pascal-context --root ~/data  VOC2010 + PASCAL-Context: pascal-context:~/data
fcnseg data download cityscapes --root ~/data      no public archive: prints where to get it, exit 3
fcnseg data check voc:~/data --split val --json report.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.config import arg_type


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="list, download and check datasets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="dataset formats and downloadable datasets")
    p.set_defaults(func=run_list)

    p = sub.add_parser(
        "download",
        help="download and extract a public dataset (resumable, checksummed)",
        description="Download and extract a public dataset. Exit status 0: done; 2: an error; 3: the "
        "dataset's host publishes no archive a program may fetch, nothing was downloaded and one line "
        "says where to get it.",
    )
    p.add_argument("name", help="voc2012, sbd, voc2010, pascal-context, cityscapes (see `fcnseg data list`)")
    p.add_argument("--root", required=True, type=Path, help="folder to download and extract into")
    p.add_argument("--url", help="download from this address instead (a mirror, or a file:// URL)")
    check = p.add_mutually_exclusive_group()
    check.add_argument("--md5", help="expected MD5 of the archive (default: the published one)")
    check.add_argument("--no-checksum", action="store_true", help="skip the checksum verification")
    p.add_argument("--keep-archive", action="store_true", help="keep the archive after extracting it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_download)

    p = sub.add_parser("check", help="read every sample and report counts, sizes, class pixels and all problems")
    p.add_argument(
        "spec",
        help="dataset: shapes, voc:PATH, sbd:PATH, voc-aug:VOC,SBD, cityscapes:PATH, folder:PATH, pascal-context:PATH, nyud:PATH",
    )
    p.add_argument("--split", action="append", help="split to check (repeatable; default: the usual train/val pair)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--workers", type=arg_type(int, min=1), default=2, help="reading threads (default 2)")
    p.add_argument(
        "--write-classes",
        action="store_true",
        help="folder datasets: first write the classes.json that binary 0/255 or RGB colour masks need "
        "(never replaces an existing one)",
    )
    p.set_defaults(func=run_check)


def run_list(args: argparse.Namespace) -> int:
    from fcnseg.data.base import list_formats
    from fcnseg.data.download import RESOURCES

    print("dataset specs: " + ", ".join(list_formats()))
    print("downloads (fcnseg data download NAME --root DIR):")
    for name, r in RESOURCES.items():
        print(f"  {name:14s} {r.about}; then use {r.spec}:DIR\n                 {r.url or r.manual}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from fcnseg.data.download import MANUAL_EXIT, RESOURCES, download_dataset, manual_step
    from fcnseg.files import check_output_dir

    by_hand = manual_step(args.name)
    if by_hand:
        print(by_hand)
        return MANUAL_EXIT
    check_output_dir(args.root, "--root")
    md5 = None if args.no_checksum else (args.md5 or "registry")
    target = download_dataset(
        args.name, args.root, url=args.url, md5=md5, keep_archive=args.keep_archive, progress=not args.no_progress
    )
    print(f"{args.name} is in {target}; use it as {RESOURCES[args.name].spec}:{args.root}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from fcnseg.data.check import check_dataset, format_report
    from fcnseg.files import check_output_file, write_json

    if args.json:  # before reading the whole dataset, not after
        check_output_file(args.json, "--json")
    if args.write_classes:
        write_classes(args.spec)
    report = check_dataset(args.spec, args.split, workers=args.workers)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return 1 if report["num_problems"] else 0


def write_classes(spec: str) -> None:
    import logging

    from fcnseg.data.base import parse_spec
    from fcnseg.data.folder import write_suggested_classes
    from fcnseg.errors import FcnsegError

    name, root = parse_spec(spec)
    if name != "folder":
        raise FcnsegError(f"--write-classes is for folder:PATH datasets; {spec} defines its own classes")
    written = write_suggested_classes(root)
    log = logging.getLogger("fcnseg.cli.data")
    if written is None:
        log.info("%s: the masks are index masks that need no classes.json (one may still name the classes)", root)
    else:
        log.info("wrote %s with %d classes; rename them there as you like", written[0], len(written[1]["classes"]))
