"""`fcnseg weights`: list the published weights, download them ahead of time, convert any weights file.

    fcnseg weights list                         name, kind, model, classes, published result, size, cached?
    fcnseg weights download fcn8s-voc           fetch into the cache (resumable, checked before it is kept)
    fcnseg weights download fcn8s-voc --force   fetch it again, replacing the cached file once the new one passed
    fcnseg weights convert fcn8s-heavy-pascal.caffemodel --out fcn8s-voc.pt

The cache is $FCNSEG_HOME/weights (default ~/.cache/fcnseg/weights); $FCNSEG_MIRROR (or --mirror)
replaces the publisher's scheme and host, e.g. file:///srv/weights or https://intranet/fcn.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="list, download and convert published weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="registered weights with their published results")
    p.add_argument("--json", action="store_true", help="print the registry as JSON (URLs and checksums too)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.set_defaults(func=run_list)
    p = sub.add_parser(
        "download",
        help="download weights into the cache (resumable; kept only once its "
        "checksum matches, or, where none is published, its format reads in full)",
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--mirror", help="replace the publisher's scheme and host with this (also $FCNSEG_MIRROR)")
    p.add_argument(
        "--force",
        action="store_true",
        help="download again even if cached (a cached file found corrupt); the cached file is "
        "replaced atomically, only once the new one has passed its check",
    )
    p.set_defaults(func=run_download)
    p = sub.add_parser(
        "convert",
        help="convert a .caffemodel / pytorch-fcn / torchvision file (or a registered name) into an fcnseg checkpoint",
    )
    p.add_argument("source", metavar="FILE_OR_NAME")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument(
        "--model",
        help="architecture, where the file cannot tell (e.g. fcn8s-atonce for a "
        "pytorch-fcn file); checked against the file otherwise",
    )
    p.add_argument("--mirror", help="replace the publisher's scheme and host with this (also $FCNSEG_MIRROR)")
    p.set_defaults(func=run_convert)


def _size(mb: float | None) -> str:
    return "?" if mb is None else f"{mb:.0f} MB"


def _cached(path) -> str:
    """yes: in the cache and checked; unchecked: a file there not checked since it last changed
    (its next use checks it); no."""
    from fcnseg.weights.download import verified_by

    return "yes" if verified_by(path) else "unchecked" if path.is_file() else "no"


def rows() -> list[dict]:
    from fcnseg.weights.download import cached_path
    from fcnseg.weights.registry import list_weights

    return [
        {
            "name": e.name,
            "kind": e.kind,
            "model": e.model,
            "classes": e.num_classes or "-",
            "result": e.result,
            "size": _size(e.size_mb),
            "cached": _cached(cached_path(e)),
            "note": "" if e.runnable else "download only",
        }
        for e in list_weights()
    ]


def run_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from fcnseg.weights.download import cache_dir
    from fcnseg.weights.registry import list_weights

    if args.json:
        print(json.dumps([asdict(e) for e in list_weights()], indent=2))
        return 0
    table = rows()
    columns = ["name", "kind", "model", "classes", "result", "size", "cached"]
    if args.markdown:
        print("| " + " | ".join(columns[:-1]) + " |")
        print("|" + "---|" * (len(columns) - 1))
        for r in table:
            note = f" ({r['note']})" if r["note"] else ""
            print("| " + " | ".join(str(r[c]) + (note if c == "name" else "") for c in columns[:-1]) + " |")
        return 0
    widths = {c: max(len(c), *(len(str(r[c])) for r in table)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in table:
        line = "  ".join(str(r[c]).ljust(widths[c]) for c in columns)
        print(line + (f"  {r['note']}" if r["note"] else ""))
    print(f"cache: {cache_dir()}  (set FCNSEG_HOME to move it)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    import logging

    from fcnseg.weights.download import cached_path, download, verified_by
    from fcnseg.weights.registry import get_entry

    log = logging.getLogger("fcnseg.cli.weights")
    entries = [get_entry(name) for name in args.names]  # every name checked before anything downloads
    for entry in entries:
        was_cached = not args.force and verified_by(cached_path(entry)) is not None
        path = download(entry, mirror=args.mirror, force=args.force)
        if was_cached:  # (a download logs what it did itself)
            log.info("%s: already in the cache (%s)", entry.name, verified_by(path))
        print(f"{entry.name}: {path}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from fcnseg.weights.api import convert

    out = convert(args.source, args.out, model=args.model, mirror=args.mirror)
    import logging

    logging.getLogger("fcnseg.cli.weights").info("wrote %s; use it with --checkpoint %s", out, out)
    return 0
