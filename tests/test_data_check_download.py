"""`fcnseg data check` and `fcnseg data download`, offline (file:// and a local HTTP server)."""

import hashlib
import http.server
import io
import json
import tarfile
import threading
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from fcnseg.cli import main
from fcnseg.data import load_dataset
from fcnseg.data.download import download_dataset, download_file, safe_extract
from fcnseg.errors import FcnsegError
from test_data_formats import make_folder, make_sbd, make_voc, write_jpg


def test_check_clean_dataset_exit_zero(tmp_path, capsys):
    make_folder(tmp_path / "d")
    make_folder(tmp_path / "d", "val", stems=("c",))
    (tmp_path / "d" / "classes.json").write_text(json.dumps(["bg", "one", "two"]))
    assert main(["data", "check", f"folder:{tmp_path / 'd'}", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [s["split"] for s in report["splits"]] == ["train", "val"]
    train = report["splits"][0]
    assert train["samples"] == 2 and train["image_sizes"] == {"16x12": 2}
    assert train["class_pixels"] == {"bg": 96 * 2, "one": 96, "two": 96} and train["problems"] == []
    assert "OK: no problems" in capsys.readouterr().out


def test_check_lists_every_problem(tmp_path, capsys):
    root = tmp_path / "d"
    make_folder(root, stems=("a", "b", "c", "d", "e"))  # labels 0 and 1..5
    (root / "classes.json").write_text(json.dumps(["bg", "1", "2", "3", "4", "5"]))
    write_jpg(root / "train" / "images" / "lonely.jpg")  # image without mask
    write_jpg(root / "train" / "images" / "b.jpg", h=10)  # size mismatch
    Image.fromarray(np.full((12, 16), 7, np.uint8)).save(root / "train" / "masks" / "c.png")  # label 7
    data = (root / "train" / "masks" / "d.png").read_bytes()
    (root / "train" / "masks" / "d.png").write_bytes(data[:60])  # truncated
    (root / "train" / "images" / "e.jpg").write_bytes(b"not a jpeg")  # unreadable
    assert main(["data", "check", f"folder:{root}", "--split", "train", "--json", str(tmp_path / "r.json")]) == 1
    problems = {
        p["file"].rsplit("/", 2)[-2] + "/" + p["file"].rsplit("/", 1)[-1]: p["problem"]
        for p in json.loads((tmp_path / "r.json").read_text())["splits"][0]["problems"]
    }
    assert problems["images/lonely.jpg"] == "image without mask"
    assert problems["masks/b.png"] == "mask is 16x12 but the image is 16x10"
    assert problems["masks/c.png"] == "labels 7 are not classes (0..5) or 255"
    assert problems["masks/d.png"].startswith("cannot read mask")
    assert problems["images/e.jpg"].startswith("cannot read image")
    assert len(problems) == 5
    assert "FAILED: 5 problems" in capsys.readouterr().out


def test_check_bad_spec_is_one_line_error(tmp_path, capsys):
    assert main(["data", "check", f"voc:{tmp_path / 'nowhere'}"]) == 1  # reported as a problem per split
    assert "does not exist" in capsys.readouterr().out
    assert main(["data", "check", "bogus:x"]) == 2


# ---------------------------------------------------------------- downloads


def tar_of(src_dir, path):
    with tarfile.open(path, "w:gz") as tar:
        for p in sorted(src_dir.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(src_dir)), recursive=False)
    return path


def md5(data):
    return hashlib.md5(data).hexdigest()


def test_download_voc_and_sbd_from_file_urls(tmp_path, capsys):
    make_voc(tmp_path / "stage_voc")
    archive = tar_of(tmp_path / "stage_voc", tmp_path / "VOCtrainval.tar")
    root = tmp_path / "data"
    target = download_dataset("voc2012", root, url=archive.as_uri(), md5=md5(archive.read_bytes()), progress=False)
    assert target == root / "VOCdevkit" / "VOC2012" and not (root / "VOCtrainval.tar").exists()
    assert len(load_dataset(f"voc:{root}", "train")) == 2
    make_sbd(tmp_path / "stage_sbd")
    sbd_archive = tar_of(tmp_path / "stage_sbd", tmp_path / "benchmark.tgz")
    assert (
        main(
            [
                "data",
                "download",
                "sbd",
                "--root",
                str(root),
                "--url",
                sbd_archive.as_uri(),
                "--md5",
                md5(sbd_archive.read_bytes()),
                "--no-progress",
            ]
        )
        == 0
    )
    assert f"use it as sbd:{root}" in capsys.readouterr().out
    assert len(load_dataset(f"sbd:{root}", "train")) == 2
    assert len(load_dataset(f"voc-aug:{root},{root}", "train_aug")) == 4
    # the published checksum applies to the real archive, so a different file is refused -- and kept
    assert (
        main(
            [
                "data",
                "download",
                "sbd",
                "--root",
                str(tmp_path / "other"),
                "--url",
                sbd_archive.as_uri(),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "not the published archive (it was left as it is); pass --md5" in err and "--no-checksum" in err
    assert sbd_archive.is_file() and archive.is_file()  # the user's own archives are never deleted
    assert not (tmp_path / "other" / "benchmark.tgz").exists()  # nor copied


def test_own_archive_inside_the_root_is_never_deleted(tmp_path):
    make_voc(tmp_path / "stage")
    root = tmp_path / "data"
    root.mkdir()
    archive = tar_of(tmp_path / "stage", root / "VOCtrainval_11-May-2012.tar")
    data = archive.read_bytes()
    download_dataset("voc2012", root, url=archive.as_uri(), md5=None, progress=False)
    assert archive.read_bytes() == data
    assert len(load_dataset(f"voc:{root}", "train")) == 2
    assert not list(root.glob(".fcnseg-extract-*"))


def test_file_download_resumes_from_partial(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    dest = tmp_path / "out" / "src.bin"
    dest.parent.mkdir()
    (dest.parent / "src.bin.part").write_bytes(b"\xff" * 1000)  # pretend 1000 bytes arrived earlier
    download_file(source.as_uri(), dest, md5=None, progress=False)
    assert dest.read_bytes() == b"\xff" * 1000 + source.read_bytes()[1000:]  # appended from the offset


class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = bytes(range(256)) * 400
    ranges_seen = []

    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        if header:
            start = int(header.split("=")[1].split("-")[0])
            self.ranges_seen.append(start)
        body = self.payload[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_download_resumes_with_range(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/file.bin"
        dest = tmp_path / "file.bin"
        (tmp_path / "file.bin.part").write_bytes(RangeHandler.payload[:30000])
        download_file(url, dest, md5=md5(RangeHandler.payload), progress=False)
        assert dest.read_bytes() == RangeHandler.payload and RangeHandler.ranges_seen == [30000]
    finally:
        server.shutdown()


def evil_archive(path, kind):
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("fine/file.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"hi"))
        bad = tarfile.TarInfo({"absolute": "/tmp/evil.txt", "dotdot": "fine/../../evil.txt"}.get(kind, "fine/link"))
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "../../outside"
        elif kind == "abs_symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "../evil.txt"
        else:
            bad.size = 4
            tar.addfile(bad, io.BytesIO(b"evil"))
            return path
        tar.addfile(bad)
    return path


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "abs_symlink", "hardlink"])
def test_extraction_refuses_members_escaping_the_target(tmp_path, kind):
    archive = evil_archive(tmp_path / "evil.tar", kind)
    target = tmp_path / "a" / "b"
    with pytest.raises(FcnsegError, match="refusing to extract"):
        safe_extract(archive, target)
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (target / "fine").exists()  # nothing extracted at all: members are checked first


def test_safe_extract_keeps_inside_links(tmp_path):
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        f = tarfile.TarInfo("d/file.txt")
        f.size = 2
        tar.addfile(f, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("d/link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "file.txt"
        tar.addfile(link)
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "link.txt").read_text() == "hi"


def test_unknown_download_name(tmp_path):
    with pytest.raises(FcnsegError, match="available: voc2012, sbd"):
        download_dataset("imagenet", tmp_path)
    with pytest.raises(FcnsegError, match=r"'voc2013' \(did you mean voc2012 or voc2010\?\)"):
        download_dataset("voc2013", tmp_path)


# ---------------------------------------------------------------- faults on the wire and on extraction


class ArchiveServer(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` at any path; ``faults`` is consumed one per request: "cut" (half of it, then
    the connection closes), "html" (a 200 error page)."""

    body = b""
    faults: ClassVar[list] = []
    ranges: ClassVar[list] = []

    def do_GET(self):
        fault = self.faults.pop(0) if self.faults else None
        if fault == "html":
            page = b"<html><body>Service unavailable</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        if start:
            self.ranges.append(start)
        rest = self.body[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(self.body) - 1}/{len(self.body)}")
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest[: len(rest) // 2] if fault == "cut" else rest)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def archive_server():
    ArchiveServer.faults, ArchiveServer.ranges = [], []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ArchiveServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_cut_transfer_keeps_the_part_and_the_same_command_resumes(tmp_path, archive_server, capsys):
    make_voc(tmp_path / "stage")
    ArchiveServer.body = tar_of(tmp_path / "stage", tmp_path / "v.tar").read_bytes()
    ArchiveServer.faults = ["cut"]
    root = tmp_path / "data"
    command = [
        "data",
        "download",
        "voc2012",
        "--root",
        str(root),
        "--url",
        archive_server + "/v.tar",
        "--md5",
        md5(ArchiveServer.body),
        "--no-progress",
    ]
    assert main(command) == 2
    err = capsys.readouterr().err
    half = len(ArchiveServer.body) // 2
    assert f"{half} of {len(ArchiveServer.body)} bytes received" in err and "run the same command again" in err
    assert (root / "v.tar.part").stat().st_size == half and not (root / "VOCdevkit").exists()
    assert main(command) == 0
    assert ArchiveServer.ranges == [half]
    assert not (root / "v.tar").exists() and not (root / "v.tar.part").exists()  # ours: removed after use
    assert len(load_dataset(f"voc:{root}", "train")) == 2


def test_html_answer_is_refused_before_anything_is_kept(tmp_path, archive_server, capsys):
    ArchiveServer.body = b"irrelevant"
    ArchiveServer.faults = ["html"]
    root = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "download",
                "voc2012",
                "--root",
                str(root),
                "--url",
                archive_server + "/v.tar",
                "--no-checksum",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "an HTML page (a login or error page?)" in capsys.readouterr().err
    assert [p.name for p in root.iterdir()] == []


def test_failed_extraction_leaves_the_earlier_folder_and_says_so(tmp_path):
    make_voc(tmp_path / "stage")
    whole = tar_of(tmp_path / "stage", tmp_path / "v.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])  # a gzip stream that ends half-way through a member
    root = tmp_path / "data"
    with pytest.raises(FcnsegError, match=f"nothing was written to {root / 'VOCdevkit' / 'VOC2012'}"):
        download_dataset("voc2012", root, url=cut.as_uri(), md5=None, progress=False)
    assert not (root / "VOCdevkit").exists() and not list(root.glob(".fcnseg-extract-*"))
    earlier = root / "VOCdevkit" / "VOC2012"
    (earlier / "JPEGImages").mkdir(parents=True)
    (earlier / "JPEGImages" / "mine.jpg").write_bytes(b"user data")
    with pytest.raises(FcnsegError, match=f"the earlier {earlier} is untouched") as info:
        download_dataset("voc2012", root, url=cut.as_uri(), md5=None, progress=False)
    assert len(str(info.value).splitlines()) == 1 and "delete it" not in str(info.value)  # the user's file
    assert sorted(p.name for p in earlier.rglob("*")) == ["JPEGImages", "mine.jpg"]
    assert not list(root.glob(".fcnseg-extract-*")) and cut.is_file()
    # a complete archive replaces the earlier folder only once it is all out
    download_dataset("voc2012", root, url=(tmp_path / "v.tar.gz").as_uri(), md5=None, progress=False)
    assert not (earlier / "JPEGImages" / "mine.jpg").exists() and len(load_dataset(f"voc:{root}", "train")) == 2


def test_folder_left_by_a_killed_extraction_is_removed(tmp_path):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root = tmp_path / "data"
    stale = root / f".fcnseg-extract-{int(gone.stdout)}-abc" / "VOCdevkit"
    stale.mkdir(parents=True)
    (stale / "big.bin").write_bytes(bytes(1000))
    make_voc(tmp_path / "stage")
    archive = tar_of(tmp_path / "stage", tmp_path / "v.tar")
    download_dataset("voc2012", root, url=archive.as_uri(), md5=None, progress=False)
    assert not list(root.glob(".fcnseg-extract-*"))
