"""The weights cache offline: file:// URLs and a local HTTP server (cache hit, resume, checksum
mismatch, sources in order, mirror, offline message), and the commands that take weights by name."""

import dataclasses
import hashlib
import http.server
import threading
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.cli import main
from fcnseg.config import resolve_config
from fcnseg.errors import FcnsegError
from fcnseg.fetch import _drive_confirm_url, google_drive_id
from fcnseg.weights import registry
from fcnseg.weights.download import cache_dir, download
from test_weights_convert import caffemodel_bytes, random_reference

PAYLOAD = b"PK\x03\x04" + bytes(range(256)) * 300  # starts as a zip does: a PyTorch file at first sight


def entry(urls, checksum=None, name="tiny", **changes):
    base = registry.get_entry("vgg16")
    return dataclasses.replace(base, name=name, urls=tuple(urls), checksum=checksum, **changes)


def sha_prefix(data):
    return "sha256-prefix:" + hashlib.sha256(data).hexdigest()[:8]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FCNSEG_MIRROR", raising=False)
    monkeypatch.delenv("FCNSEG_OFFLINE", raising=False)
    return tmp_path / "home"


class Server(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    ranges: list = []

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.ranges.append(start)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Server.files, Server.ranges = {}, []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_cache_hit_needs_no_source(tmp_path, home):
    src = tmp_path / "w-abc.pth"
    src.write_bytes(PAYLOAD)
    e = entry([src.as_uri()], sha_prefix(PAYLOAD))
    path = download(e, progress=False)
    assert path == home / "weights" / "w-abc.pth" and path.read_bytes() == PAYLOAD
    src.unlink()  # the source is gone: the verified cache answers
    assert download(e, progress=False) == path


def test_resume_partial_download_over_http(server, home):
    Server.files["/models/w.pth"] = PAYLOAD
    e = entry([server + "/models/w.pth"], "md5:" + hashlib.md5(PAYLOAD).hexdigest())
    part = home / "weights" / "w.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:20000])
    assert download(e, progress=False).read_bytes() == PAYLOAD
    assert Server.ranges == [20000] and not part.exists()


def test_checksum_mismatch_is_removed_and_reported(server, home):
    Server.files["/w.pth"] = PAYLOAD
    e = entry([server + "/w.pth"], "sha256-prefix:00000000")
    with pytest.raises(FcnsegError, match="complete file .* failed its check .SHA-256.*it was removed") as info:
        download(e, progress=False)
    assert len(str(info.value).splitlines()) == 1
    assert not list((home / "weights").glob("w.pth*"))


def test_corrupt_cached_file_is_removed_and_fetched_again(tmp_path, home, caplog):
    src = tmp_path / "w.pth"
    src.write_bytes(PAYLOAD)
    e = entry([src.as_uri()], sha_prefix(PAYLOAD))
    cached = home / "weights" / "w.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    assert download(e, progress=False).read_bytes() == PAYLOAD
    assert "failed its check (SHA-256" in caplog.text


def test_sources_tried_in_order_and_mirror(server, tmp_path, monkeypatch):
    Server.files["/backup/w.pth"] = PAYLOAD
    e = entry([server + "/gone/w.pth", server + "/backup/w.pth"], sha_prefix(PAYLOAD))
    assert download(e, progress=False).read_bytes() == PAYLOAD
    # the mirror replaces scheme and host and keeps the path
    mirror = tmp_path / "mirror"
    (mirror / "models").mkdir(parents=True)
    (mirror / "models" / "m.pth").write_bytes(PAYLOAD)
    monkeypatch.setenv("FCNSEG_MIRROR", mirror.as_uri())
    m = entry(["https://download.example.invalid/models/m.pth"], sha_prefix(PAYLOAD), name="m")
    assert download(m, progress=False).read_bytes() == PAYLOAD


def test_offline_names_the_url_and_the_path(server, home, monkeypatch, capsys):
    e = entry([server + "/nothing/w.pth"], None)
    with pytest.raises(FcnsegError) as info:
        download(e, progress=False)
    message = str(info.value)
    assert f"fetch {server}/nothing/w.pth by hand and put it at {home / 'weights' / 'w.pth'}" in message
    assert len(message.splitlines()) == 1
    monkeypatch.setenv("FCNSEG_OFFLINE", "1")
    with pytest.raises(FcnsegError, match="not cached and FCNSEG_OFFLINE is set; fetch"):
        download(e, progress=False)
    # the published entries name the publisher's URL in the same way
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    assert main(["predict", "--weights", "fcn8s-voc", str(home), "--out", str(home / "p")]) == 2
    err = capsys.readouterr().err
    assert "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel by hand" in err
    assert str(cache_dir() / "fcn8s-heavy-pascal.caffemodel") in err


def test_google_drive_links_and_confirm_page():
    assert (
        google_drive_id("https://drive.google.com/uc?id=0B9P1L--7Wd2vT0FtdThWREhjNkU") == "0B9P1L--7Wd2vT0FtdThWREhjNkU"
    )
    assert google_drive_id("https://download.pytorch.org/models/x.pth") is None
    form = (
        '<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
        '<input type="hidden" name="id" value="ABC"><input type="hidden" name="export" value="download">'
        '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1"></form>'
    )
    url = _drive_confirm_url(form, "ABC")
    assert url.startswith("https://drive.usercontent.google.com/download?") and "confirm=t" in url and "uuid=u-1" in url
    assert "confirm=XyZ" in _drive_confirm_url('<a href="/uc?export=download&amp;confirm=XyZ&amp;id=ABC">', "ABC")
    assert _drive_confirm_url("<html>Quota exceeded</html>", "ABC") is None


# ----------------------------------------------------------------- commands taking weights by name


@pytest.fixture
def tiny_model_entry(tmp_path, monkeypatch):
    data = caffemodel_bytes(random_reference("fcn8s", num_classes=6))
    src = tmp_path / "tiny-fcn8s.caffemodel"
    src.write_bytes(data)
    e = entry(
        [src.as_uri()],
        "md5:" + hashlib.md5(data).hexdigest(),
        name="tiny-fcn8s",
        kind="model",
        format="caffe",
        model="fcn8s",
        normalization="caffe",
        model_kwargs={"num_classes": 6, "backbone": "vgg16", "geometry": "caffe", "width": 0.125},
        class_names=("bg", "disk", "rectangle", "triangle", "line", "ring"),
        palette=tuple((i * 40, 0, 0) for i in range(6)),
    )
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    return e


def test_predict_and_evaluate_by_name(tmp_path, tiny_model_entry, capsys):
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(tmp_path / "photo.jpg")
    assert (
        main(
            [
                "predict",
                "--weights",
                "tiny-fcn8s",
                str(tmp_path / "photo.jpg"),
                "--out",
                str(tmp_path / "p"),
                "--no-fast",
            ]
        )
        == 0
    )
    assert np.array(Image.open(tmp_path / "p" / "photo.png")).shape == (24, 32)
    assert (
        main(
            [
                "evaluate",
                "--weights",
                "tiny-fcn8s",
                "--data",
                "shapes",
                "--max-images",
                "2",
                "--plot",
                str(tmp_path / "c.png"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "tiny-fcn8s on shapes" in capsys.readouterr().out
    assert main(["weights", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("tiny-fcn8s"))
    assert " yes" in line
    assert main(["evaluate", "--weights", "vgg16", "--data", "shapes"]) == 2
    assert "backbone weights, not a segmentation model" in capsys.readouterr().err


def test_train_backbone_weights_by_name(tmp_path, monkeypatch):
    from fcnseg.models.backbones import vgg16

    trunk = vgg16(width=0.0625)
    state = {k: (v.flatten(1) if k == "classifier.0.weight" else v) for k, v in trunk.state_dict().items()}
    path = tmp_path / "vgg16-tiny.pth"
    torch.save(state, path)
    e = entry([path.as_uri()], None, name="vgg16-tiny")
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                "shapes",
                "--model",
                "fcn32s",
                "--width",
                "0.0625",
                "--geometry",
                "same",
                "--max-val-images",
                "2",
                "--num-samples",
                "1",
                "--iterations",
                "1",
                "--no-progress",
                "--backbone-weights",
                "vgg16-tiny",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert (cache_dir() / "vgg16-tiny.pth").is_file()
    # the run records the name (resolved to the verified cache file when the trunk is built)
    assert "backbone_weights: vgg16-tiny" in (run / "config.yaml").read_text()


def test_voc_aug_paper_presets_use_the_papers_splits():
    for preset in ("paper", "paper-16s", "paper-8s", "paper-atonce"):
        cfg = resolve_config(preset, None, {"data": "voc-aug:/d/VOC,/d/SBD"})
        assert (cfg.train_split, cfg.val_split) == ("train_aug", "seg11valid"), preset
    cfg = resolve_config("paper", None, {"data": "voc-aug:/d/VOC,/d/SBD", "val_split": "val"})
    assert (cfg.train_split, cfg.val_split) == ("train_aug", "val")
    cfg = resolve_config("paper", None, {"data": "voc:/d/VOC"})
    assert (cfg.train_split, cfg.val_split) == ("train", "val")


def test_create_model_takes_a_registered_backbone_name(tmp_path, monkeypatch):
    import fcnseg
    from fcnseg.models.backbones import vgg16

    trunk = vgg16(width=0.0625)
    torch.nn.init.constant_(trunk.features[0].bias, 0.25)
    path = tmp_path / "vgg16-tiny.pth"
    torch.save(trunk.state_dict(), path)
    monkeypatch.setitem(registry.REGISTRY, "vgg16-tiny", entry([path.as_uri()], None, name="vgg16-tiny"))
    model = fcnseg.create_model("fcn32s", 3, width=0.0625, backbone_weights="vgg16-tiny")
    assert torch.equal(model.backbone.features[0].bias, torch.full_like(model.backbone.features[0].bias, 0.25))
    with pytest.raises(FcnsegError, match="not backbone weights"):
        fcnseg.create_model("fcn32s", 3, backbone_weights="fcn8s-voc")


# ----------------------------------------------------------------- faults that really happen on the wire


class FaultServer(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` ({path: body}); ``faults`` ({path: [fault, ...]}) is consumed one per request:
    "cut" (sends half of what it announced, then closes the connection), "short" (announces 1000 bytes
    more than it sends), "html" (a 200 login page), "norange" (ignores Range: 200 with the whole file)."""

    files: ClassVar[dict] = {}
    faults: ClassVar[dict] = {}
    ranges: ClassVar[list] = []

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        fault = self.faults.get(self.path, []).pop(0) if self.faults.get(self.path) else None
        if fault == "html":
            page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        start = 0
        if self.headers.get("Range") and fault != "norange":
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.ranges.append(start)
        rest = body[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(rest) + (1000 if fault == "short" else 0)))
        self.end_headers()
        self.wfile.write(rest[: len(rest) // 2] if fault == "cut" else rest)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def faults():
    FaultServer.files, FaultServer.faults, FaultServer.ranges = {}, {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FaultServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def caffe_bytes():
    return caffemodel_bytes(random_reference("fcn32s", num_classes=3))


def caffe_entry(url, monkeypatch, checksum=None):
    e = entry([url], checksum, name="tiny-caffe", kind="model", format="caffe", model="fcn32s")
    monkeypatch.setitem(registry.REGISTRY, e.name, e)
    return e


def cached_files(home):
    return sorted(p.name for p in (home / "weights").iterdir() if p.is_file()) if (home / "weights").is_dir() else []


def test_cut_connection_keeps_the_part_and_the_next_run_resumes(faults, home, monkeypatch, capsys, caffe_bytes):
    """No checksum is published for the Caffe files: a half file must neither be cached nor stamped."""
    FaultServer.files["/m.caffemodel"] = caffe_bytes
    FaultServer.faults["/m.caffemodel"] = ["cut"]
    caffe_entry(faults + "/m.caffemodel", monkeypatch)
    assert main(["weights", "download", "tiny-caffe"]) == 2
    err = capsys.readouterr().err
    half = len(caffe_bytes) // 2
    assert f"{half} of {len(caffe_bytes)} bytes received" in err and "run the same command again to resume" in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert cached_files(home) == ["m.caffemodel.part"]  # nothing in the cache, no stamp
    assert main(["weights", "download", "tiny-caffe"]) == 0  # the same command resumes
    assert FaultServer.ranges == [half]
    assert (home / "weights" / "m.caffemodel").read_bytes() == caffe_bytes
    assert cached_files(home) == ["m.caffemodel", "m.caffemodel.verified"]
    assert "every Caffe layer read to the end" in (home / "weights" / "m.caffemodel.verified").read_text()


def test_short_body_with_a_checksum_keeps_the_part_too(faults, home, capsys):
    """A short transfer of a checksummed (torchvision) file is not "a different file": it resumes."""
    FaultServer.files["/w.pth"] = PAYLOAD
    FaultServer.faults["/w.pth"] = ["short"]
    e = entry([faults + "/w.pth"], sha_prefix(PAYLOAD))
    with pytest.raises(FcnsegError) as info:
        download(e, progress=False)
    message = str(info.value)
    assert f"{len(PAYLOAD)} of {len(PAYLOAD) + 1000} bytes received" in message
    assert "different file" not in message and "run the same command again to resume" in message
    assert (home / "weights" / "w.pth.part").read_bytes() == PAYLOAD
    assert download(e, progress=False).read_bytes() == PAYLOAD  # resumed: the server has no more to add
    assert "SHA-256 prefix" in (home / "weights" / "w.pth.verified").read_text()


def test_html_page_answered_with_200_is_never_kept(faults, home, monkeypatch, capsys, caffe_bytes):
    FaultServer.files["/m.caffemodel"] = caffe_bytes
    FaultServer.faults["/m.caffemodel"] = ["html"]
    caffe_entry(faults + "/m.caffemodel", monkeypatch)
    assert main(["weights", "download", "tiny-caffe"]) == 2
    err = capsys.readouterr().err
    assert "an HTML page (a login or error page?)" in err and "nothing was kept" in err
    assert cached_files(home) == []
    assert main(["weights", "download", "tiny-caffe"]) == 0  # the page is gone: the file comes
    assert (home / "weights" / "m.caffemodel").read_bytes() == caffe_bytes


def test_wrong_kind_of_file_is_refused_from_its_first_bytes(faults, home, monkeypatch):
    FaultServer.files["/m.caffemodel"] = b"%PDF-1.4 " + bytes(5000)  # served as octet-stream
    caffe_entry(faults + "/m.caffemodel", monkeypatch)
    with pytest.raises(FcnsegError, match="not a .caffemodel.*nothing was kept"):
        download(registry.get_entry("tiny-caffe"), progress=False)
    assert cached_files(home) == []


def test_server_ignoring_range_restarts_cleanly(faults, home, caffe_bytes, monkeypatch):
    FaultServer.files["/m.caffemodel"] = caffe_bytes
    FaultServer.faults["/m.caffemodel"] = ["norange"]
    e = caffe_entry(faults + "/m.caffemodel", monkeypatch)
    part = home / "weights" / "m.caffemodel.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 5000)  # a part that, appended to, would make a corrupt file
    assert download(e, progress=False).read_bytes() == caffe_bytes
    assert not part.exists()


def test_truncated_caffe_file_served_as_complete_is_refused(faults, home, monkeypatch, caffe_bytes):
    """The source itself holds a cut file (size announced = size sent): only the full parse can tell."""
    FaultServer.files["/m.caffemodel"] = caffe_bytes[: len(caffe_bytes) * 2 // 3]
    caffe_entry(faults + "/m.caffemodel", monkeypatch)
    with pytest.raises(FcnsegError, match=r"complete file .* failed its check \(caffemodel .*truncated"):
        download(registry.get_entry("tiny-caffe"), progress=False)
    assert cached_files(home) == []


def test_cached_file_damaged_later_is_checked_again_and_replaced(tmp_path, home, monkeypatch, caffe_bytes, caplog):
    src = tmp_path / "m.caffemodel"
    src.write_bytes(caffe_bytes)
    e = caffe_entry(src.as_uri(), monkeypatch)
    cached = download(e, progress=False)
    with open(cached, "r+b") as f:  # damaged after it was stamped
        f.truncate(len(caffe_bytes) // 3)
    assert download(e, progress=False).read_bytes() == caffe_bytes
    assert "failed its check (caffemodel" in caplog.text


def test_force_replaces_the_cached_file_only_with_one_that_passed(faults, home, monkeypatch, caffe_bytes, capsys):
    from fcnseg.weights.download import replace_hint

    FaultServer.files["/m.caffemodel"] = caffe_bytes
    e = caffe_entry(faults + "/m.caffemodel", monkeypatch)
    cached = download(e, progress=False)
    hint = replace_hint(cached)
    assert hint == "replace it with `fcnseg weights download tiny-caffe --force`"
    assert replace_hint(faults and tmp_file(home)) is None  # a file outside the cache: only its owner knows
    FaultServer.faults["/m.caffemodel"] = ["html"]  # --force while the source is broken: the old file stays
    assert main(["weights", "download", "tiny-caffe", "--force"]) == 2
    assert cached.read_bytes() == caffe_bytes
    before = cached.stat().st_ino
    assert main(["weights", "download", "tiny-caffe", "--force"]) == 0
    assert cached.read_bytes() == caffe_bytes and cached.stat().st_ino != before  # a new file, renamed in
    assert "tiny-caffe: replaced in the cache at" in capsys.readouterr().err


def tmp_file(home):
    path = home / "elsewhere.caffemodel"
    path.write_bytes(b"x")
    return path


def test_every_name_lookup_suggests_the_closest_names(capsys, tmp_path):
    """One suggestion rule (errors.did_you_mean) wherever a registered name is looked up."""
    import fcnseg

    assert main(["train", "--data", "shapes", "--backbone-weights", "vgg17", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'vgg17' is neither a registered backbone weights name nor an existing file (did you mean vgg16" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(FcnsegError, match=r"did you mean resnet50 or resnet101\?"):
        fcnseg.create_model("fcn32s", 3, backbone_weights="resnet5O")
    assert main(["weights", "download", "fcn8s-vco"]) == 2
    assert "(did you mean fcn8s-voc" in capsys.readouterr().err
    assert main(["data", "check", "shapez"]) == 2
    assert "unknown dataset 'shapez' (did you mean shapes?)" in capsys.readouterr().err
    assert main(["data", "download", "voc2013", "--root", str(tmp_path / "d")]) == 2
    assert "(did you mean voc2012 or voc2010?)" in capsys.readouterr().err


def test_registry_rows_name_where_each_fact_was_confirmed():
    for e in registry.list_weights():
        assert e.confirmed and ("torchvision 0." in e.confirmed or " at " in e.confirmed), e.name
    # pytorch-fcn re-uploaded three files in 2021 (torchfcn 1.9.7); fcn8s-atonce kept its 2017 id
    drive = {
        e.name: (google_drive_id(e.urls[0]), e.checksum) for e in registry.list_weights() if e.format == "pytorch-fcn"
    }
    assert drive == {
        "fcn32s-voc-torchfcn": ("11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f", "md5:d3eb467a80e7da0468a20dfcbc13e6c8"),
        "fcn16s-voc-torchfcn": ("1bctu58B6YH9bu6lBBSBB2rUeGlGhYLoP", "md5:a2d4035f669f09483b39c9a14a0d6670"),
        "fcn8s-voc-torchfcn": ("1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI", "md5:de93e540ec79512f8770033849c8ae89"),
        "fcn8s-atonce-voc-torchfcn": ("0B9P1L--7Wd2vblE1VUIxV1o2d2M", "md5:bfed4437e941fef58932891217fe6464"),
    }


def test_page_sniffing_refuses_pages_and_keeps_binaries_under_a_wrong_text_type(caffe_bytes):
    from fcnseg.fetch import page_problem

    assert "HTML page" in page_problem(b"\n  <!DOCTYPE html><html>", "application/octet-stream")
    assert "HTML page" in page_problem(b"PK\x03\x04", "text/html; charset=utf-8")
    assert "text (application/json)" in page_problem(b'{"error": "quota exceeded"}', "application/json")
    # old web servers send unknown extensions as text/plain: a binary body is still the file
    assert page_problem(caffe_bytes[:1024], "text/plain") is None
    assert page_problem(PAYLOAD[:1024], "text/plain") is None
