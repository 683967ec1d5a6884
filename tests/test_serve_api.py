"""The HTTP API in process (FastAPI's TestClient): every endpoint, every refusal, the busy pool."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="needs the serve extra")  # make test installs it
from fastapi.testclient import TestClient  # noqa: E402

from fcnseg.engine.checkpoint import save_checkpoint  # noqa: E402
from fcnseg.inference import Segmenter  # noqa: E402
from fcnseg.models import create_model  # noqa: E402
from fcnseg.serving.app import create_app  # noqa: E402
from fcnseg.serving.config import ServeConfig  # noqa: E402
from fcnseg.serving.pool import Busy, InferencePool  # noqa: E402

# 5 classes: not a channel count of the 1/16-width trunk (4, 8, 16, 32), so no layer looks like a score layer
META = {
    "model_name": "fcn8s",
    "model_kwargs": {"num_classes": 5, "width": 1 / 16},
    "class_names": ["background", "sky", "road", "tree", "car"],
    "palette": [[0, 0, 0], [70, 130, 180], [128, 64, 128], [107, 142, 35], [0, 0, 142]],
    "normalization": "imagenet",
}


BASE = "http://127.0.0.1"  # the server answers only its own host names (TestClient's default is testserver)


def tiny_checkpoint(path, **meta):
    torch.manual_seed(0)
    model = create_model("fcn8s", **META["model_kwargs"])
    with torch.no_grad():  # score layers start at zero: give them noise so several classes appear
        for p in model.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.1)
    save_checkpoint(path, model.state_dict(), {**META, **meta})
    return path


def png(size=(64, 48), seed=0, mode="RGB", fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pt")


@pytest.fixture(scope="module")
def segmenter(ckpt):
    return Segmenter.from_checkpoint(ckpt, max_pixels=10_000)


def make_client(segmenter, ckpt, **config) -> TestClient:
    config = ServeConfig(checkpoint=str(ckpt), **{"max_pixels": 10_000, "concurrency": 2, **config})
    return TestClient(create_app(segmenter, config), raise_server_exceptions=False, base_url=BASE)


@pytest.fixture(scope="module")
def client(segmenter, ckpt):
    with make_client(segmenter, ckpt, max_upload_mb=0.05) as c:
        yield c


def assert_one_line_error(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
    return body["error"]


def test_health_and_model(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["threads"] == 2 and health["in_flight"] == 0
    info = client.get("/model").json()
    assert info["model"] == "fcn8s" and info["num_classes"] == 5 and info["source"] == "tiny.pt"
    assert [c["name"] for c in info["classes"]] == META["class_names"]
    assert info["classes"][1]["color"] == [70, 130, 180]
    assert info["normalization"]["mode"] == "imagenet" and "0.485" in info["normalization"]["description"]
    assert info["limits"] == {"max_upload_bytes": 52428, "max_pixels": 10_000, "threads": 2, "waiting": 16}
    assert "/" not in info["source"]  # the server's folders are not shown


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/app.js"' in page.text and "http" not in page.text.replace('href="openapi.json"', "")
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "predict?format=json" in js.text
    assert "text/css" in client.get("/static/style.css").headers["content-type"]
    assert "https://" not in js.text + client.get("/static/style.css").text  # nothing from a CDN


@pytest.mark.parametrize(
    "path",
    [
        "/static/index.html",
        "/static/..%2fapp.py",
        "/static/%2e%2e/%2e%2e/config.py",
        "/static/../../../etc/passwd",
        "/static/",
        "/etc/passwd",
        "/nope",
    ],
)
def test_no_request_names_a_server_file(client, path):
    assert_one_line_error(client.get(path), 404)


def test_openapi_describes_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/model", "/health"} <= set(spec["paths"])
    post = spec["paths"]["/predict"]["post"]
    assert {"image/*", "multipart/form-data"} <= set(post["requestBody"]["content"])
    params = {p["name"]: p for p in post["parameters"]}
    assert params["tile"]["schema"]["anyOf"][0]["maximum"] == 4096
    assert {"200", "413", "415", "503"} <= set(post["responses"])


def test_predict_png_raw_and_multipart_match_the_model(client, segmenter):
    data = png((64, 48))
    expected = segmenter.predict(Image.open(io.BytesIO(data)))
    raw = client.post("/predict", content=data, headers={"Content-Type": "image/png"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    mask = Image.open(io.BytesIO(raw.content))
    assert mask.mode == "P" and mask.size == (64, 48)
    assert mask.getpalette()[3:6] == [70, 130, 180]  # class 1's colour
    np.testing.assert_array_equal(np.asarray(mask), expected)
    assert raw.headers["x-image-size"] == "64x48" and float(raw.headers["x-inference-ms"]) > 0
    assert raw.headers["x-classes-present"] == ",".join(str(c) for c in np.unique(expected))
    form = client.post("/predict", files={"image": ("photo.jpg", data, "image/jpeg")})
    assert form.status_code == 200 and form.content == raw.content
    octet = client.post("/predict", content=data, headers={"Content-Type": "application/octet-stream"})
    assert octet.content == raw.content
    assert len(np.unique(expected)) >= 2  # the test model predicts several classes


def test_predict_json_counts_shares_timing(client, segmenter):
    data = png((50, 40), seed=3)
    expected = segmenter.predict(Image.open(io.BytesIO(data)))
    for response in (
        client.post("/predict?format=json", content=data),
        client.post("/predict", content=data, headers={"Accept": "application/json"}),
    ):
        assert response.status_code == 200
        body = response.json()
        assert (body["width"], body["height"], body["model"]) == (50, 40, "fcn8s")
        counts = {c["name"]: c["pixels"] for c in body["classes"]}
        want = np.bincount(expected.ravel(), minlength=5)
        assert counts == {META["class_names"][i]: int(n) for i, n in enumerate(want) if n}
        assert sum(c["share"] for c in body["classes"]) == pytest.approx(1.0)
        assert [c["pixels"] for c in body["classes"]] == sorted(counts.values(), reverse=True)
        assert body["inference_ms"] > 0 and body["total_ms"] >= body["inference_ms"]
        assert "mask_png" not in body
    with_mask = client.post("/predict?format=json&mask=true", content=data).json()
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(with_mask["mask_png"]))))
    np.testing.assert_array_equal(decoded, expected)


def test_predict_options_tiles_and_tta(client, segmenter):
    data = png((70, 45), seed=5)
    tiled = Segmenter(
        segmenter.model, segmenter.meta, fast=segmenter.fast, tile=32, overlap=0.5, tta_flip=True, scales=(0.5, 1.0)
    )
    expected = tiled.predict(Image.open(io.BytesIO(data)))
    response = client.post("/predict?tile=32&overlap=0.5&flip=true&scales=0.5,1&format=json&mask=png", content=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["options"] == {"tile": 32, "overlap": 0.5, "tta_flip": True, "scales": [0.5, 1.0]}
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    np.testing.assert_array_equal(decoded, expected)
    assert segmenter.tile is None and not segmenter.tta_flip  # the shared model's settings are untouched


@pytest.mark.parametrize(
    "query",
    [
        "tile=5",
        "tile=5000",
        "tile=-1",
        "overlap=0.9",
        "overlap=x",
        "scales=3",
        "scales=0.5,1,1.5,1.75,2",
        "scales=a,b",
        "format=xml",
        "flip=maybe",
    ],
)
def test_out_of_bounds_options_are_refused(client, query):
    assert_one_line_error(client.post(f"/predict?{query}", content=png()), 422)


def test_bad_uploads_get_one_line_errors_and_the_server_keeps_serving(client):
    good = png()
    truncated = good[: len(good) // 2]
    cases = [
        (dict(content=b"", headers={"Content-Type": "image/png"}), 400, "empty"),
        (dict(content=b"not an image at all", headers={"Content-Type": "image/png"}), 400, "not an image"),
        (dict(content=truncated, headers={"Content-Type": "image/png"}), 400, "truncated or corrupt"),
        (dict(content=good, headers={"Content-Type": "text/plain"}), 415, "text/plain"),
        (dict(content=b'{"image": "/etc/passwd"}', headers={"Content-Type": "application/json"}), 415, "json"),
        (
            dict(content=b"image=/etc/passwd", headers={"Content-Type": "application/x-www-form-urlencoded"}),
            415,
            "curl",
        ),
        (dict(data={"note": "no file"}, files={"other": ("", b"", "")}), 400, ""),
        (dict(content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"}), 400, ""),
        (dict(files={"image": ("a.png", b"", "image/png")}), 400, "empty"),
        (dict(content=b"\0" * 60_000, headers={"Content-Type": "image/png"}), 413, "0.05 MB"),
        (dict(content=iter([b"\0" * 30_000] * 3), headers={"Content-Type": "image/png"}), 413, "limit"),  # chunked
        (dict(content=png((101, 100))), 413, "megapixels"),  # 10100 pixels > 10000, checked before decoding
    ]
    for kwargs, status, words in cases:
        message = assert_one_line_error(client.post("/predict", **kwargs), status)
        assert words in message, message
    health = client.get("/health").json()
    assert health["in_flight"] == 0  # every refused request gave its place back
    assert client.post("/predict", content=good).status_code == 200


def png_header(width: int, height: int) -> bytes:
    """A PNG that announces width x height pixels but holds almost no data (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(9000, 9000), (20000, 20000)])  # over our limit; over Pillow's own as well
def test_decompression_bomb_is_refused_before_decoding(client, size):
    message = assert_one_line_error(client.post("/predict", content=png_header(*size)), 413)
    assert "decompression bomb" in message
    assert client.post("/predict", content=png()).status_code == 200


def test_wrong_method_and_unknown_path(client):
    assert "GET is not allowed" in assert_one_line_error(client.get("/predict"), 405)
    assert_one_line_error(client.post("/model"), 405)


def test_internal_error_is_500_and_the_server_keeps_serving(segmenter, ckpt, monkeypatch):
    with make_client(segmenter, ckpt) as c:

        def boom(*args, **kwargs):
            raise RuntimeError("out of memory\nsecond line")

        monkeypatch.setattr(type(segmenter), "segment", boom)
        assert "RuntimeError" in assert_one_line_error(c.post("/predict", content=png()), 500)
        monkeypatch.undo()
        assert c.post("/predict", content=png()).status_code == 200
        assert c.get("/health").json()["in_flight"] == 0


class BlockingSegmenter:
    """Stands in for a slow model: segment() waits until the test releases it."""

    def __init__(self, real):
        self.__dict__.update(real.__dict__)
        self._real = real
        self.release = threading.Event()

    def segment(self, rgb, probs_out=None):
        assert self.release.wait(30)
        return self._real.segment(rgb)

    def describe(self):
        return self._real.describe()


def test_full_pool_answers_503_with_retry_after(segmenter, ckpt):
    slow = BlockingSegmenter(segmenter)
    with make_client(slow, ckpt, concurrency=1, queue=1) as c:
        results = {}

        def post(name):
            results[name] = c.post("/predict", content=png())

        first = [threading.Thread(target=post, args=(n,)) for n in ("running", "waiting")]
        for t in first:
            t.start()
        deadline = time.monotonic() + 20
        while c.get("/health").json()["in_flight"] < 2:
            assert time.monotonic() < deadline, "the two requests never arrived"
            time.sleep(0.02)
        refused = c.post("/predict", content=png())
        message = assert_one_line_error(refused, 503)
        assert int(refused.headers["retry-after"]) >= 1 and "busy" in message
        assert c.get("/health").status_code == 200  # health answers while inference is saturated
        slow.release.set()
        for t in first:
            t.join(30)
        assert results["running"].status_code == 200 and results["waiting"].status_code == 200
        stats = c.get("/health").json()
        assert stats["in_flight"] == 0 and stats["refused"] == 1 and stats["served"] == 2


def test_pool_keeps_a_place_until_abandoned_work_finishes():
    import asyncio

    async def scenario():
        pool = InferencePool(threads=1, waiting=0)
        gate = threading.Event()

        async def request():
            async with pool.admit() as job:
                return await job.run(lambda: gate.wait(10))

        task = asyncio.ensure_future(request())
        await asyncio.sleep(0.05)
        task.cancel()  # the client hangs up; its inference is still running on the thread
        await asyncio.sleep(0.05)
        assert pool.admitted == 1
        with pytest.raises(Busy):
            async with pool.admit():
                pass
        gate.set()
        for _ in range(100):
            if pool.admitted == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.admitted == 0
        async with pool.admit() as job:
            assert await job.run(lambda: 42) == 42
        pool.shutdown()

    asyncio.run(scenario())


def test_config_from_env_round_trip(monkeypatch):
    from fcnseg.errors import FcnsegError
    from fcnseg.serving.config import ENV_VAR

    config = ServeConfig(checkpoint="m.pt", port=9000, workers=2, max_pixels=123)
    monkeypatch.setenv(ENV_VAR, config.to_env())
    assert ServeConfig.from_env() == config
    with pytest.raises(FcnsegError, match="exactly one"):
        ServeConfig()
    with pytest.raises(FcnsegError, match="--workers"):
        ServeConfig(checkpoint="m.pt", workers=0)


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_serves_exported_models(ckpt, tmp_path, fmt):
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    from fcnseg.engine.checkpoint import model_from_checkpoint
    from fcnseg.inference import export_onnx, export_safetensors
    from fcnseg.serving.config import load_segmenter

    model, meta = model_from_checkpoint(str(ckpt), str(ckpt))
    path = tmp_path / f"tiny.{fmt}"
    (export_onnx if fmt == "onnx" else export_safetensors)(model, meta, path)
    threads = torch.get_num_threads()
    try:
        config = ServeConfig(checkpoint=str(path), fast=False)
        seg = load_segmenter(config)
    finally:
        torch.set_num_threads(threads)  # load_segmenter sets the server's thread count
    with TestClient(create_app(seg, config), base_url=BASE) as c:
        info = c.get("/model").json()
        assert info["backend"] == ("onnxruntime" if fmt == "onnx" else "torch") and info["source"] == path.name
        assert [x["name"] for x in info["classes"]] == META["class_names"]
        data = png((40, 30), seed=7)
        response = c.post("/predict", content=data)
        assert response.status_code == 200
        reference = Segmenter(model, meta, fast=False).predict(Image.open(io.BytesIO(data)))
        agree = (np.asarray(Image.open(io.BytesIO(response.content))) == reference).mean()
        assert agree > 0.99  # onnxruntime's fp32 kernels differ from torch's in the last bits


def test_weights_option_loads_through_the_weights_resolver(ckpt):
    from fcnseg.serving.config import load_segmenter

    threads = torch.get_num_threads()
    try:
        config = ServeConfig(weights=str(ckpt), fast=False)
        seg = load_segmenter(config)
    finally:
        torch.set_num_threads(threads)
    with TestClient(create_app(seg, config), base_url=BASE) as c:
        info = c.get("/model").json()
        assert info["source"] == "tiny.pt" and info["num_classes"] == 5
        assert c.post("/predict", content=png()).status_code == 200


@pytest.mark.parametrize(
    "mode, words",
    [
        ("imagenet", ["ImageNet", "0.485", "0.229"]),
        ("caffe", ["Caffe", "BGR", "104.01, 116.67, 122.68"]),
        ("caffe:116.190,97.203,92.318", ["Caffe", "116.19, 97.20, 92.32"]),
    ],
)
def test_model_states_its_normalisation(mode, words):
    from fcnseg.serving.app import normalization_info

    info = normalization_info(mode)
    assert info["mode"] == mode and info["kind"] == mode.split(":")[0]
    assert all(w in info["description"] for w in words), info["description"]


def rle_decode(rle: dict) -> np.ndarray:
    """COCO's uncompressed RLE back to a bool mask (runs alternate absent/present, column-major)."""
    h, w = rle["size"]
    values = np.concatenate([np.full(n, i % 2 == 1) for i, n in enumerate(rle["counts"])])
    return values.reshape((h, w), order="F")


def test_json_answer_carries_the_mask_as_rle_or_png(client, segmenter):
    data = png((40, 30), seed=4)
    expected = segmenter.predict(Image.open(io.BytesIO(data)))
    body = client.post("/predict?format=json&mask=rle", content=data).json()
    assert "mask_png" not in body
    rebuilt = np.full(expected.shape, -1)
    for entry in body["classes"]:
        assert entry["rle"]["size"] == [30, 40] and sum(entry["rle"]["counts"]) == 30 * 40
        pixels = rle_decode(entry["rle"])
        assert pixels.sum() == entry["pixels"]
        rebuilt[pixels] = entry["id"]
    np.testing.assert_array_equal(rebuilt, expected)  # every pixel, once, with its class
    body = client.post("/predict?format=json&mask=png", content=data).json()
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    np.testing.assert_array_equal(decoded, expected)
    assert "rle" not in body["classes"][0]
    assert_one_line_error(client.post("/predict?format=json&mask=jpeg", content=data), 422)


def test_coco_rle_starts_with_the_absent_run():
    from fcnseg.serving.app import coco_rle

    mask = np.array([[1, 1, 0], [1, 0, 0]])
    assert coco_rle(mask, 1) == {"size": [2, 3], "counts": [0, 3, 3]}  # column-major: 1,1 | 1,0 | 0,0
    assert coco_rle(mask, 0) == {"size": [2, 3], "counts": [3, 3]}
    assert coco_rle(mask, 7) == {"size": [2, 3], "counts": [6]}


def test_docs_page_and_its_assets_are_served_locally(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text), "a script or style from elsewhere"
    assert "cdn" not in page.text.lower()
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text)
    urls = re.findall(r"""url:\s*['"]([^'"]+)['"]""", page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    for path in assets + urls:
        response = client.get(path)
        assert response.status_code == 200 and len(response.content) > 100, path
    assert client.get("/redoc").status_code == 404


def test_model_card_says_what_the_model_was_trained_on(segmenter, ckpt, tmp_path):
    with make_client(segmenter, ckpt) as c:
        assert c.get("/model").json()["trained_on"] is None  # not recorded: said so, not guessed
    described = tiny_checkpoint(tmp_path / "described.pt", trained_on="shapes train (400 images)")
    seg = Segmenter.from_checkpoint(described, max_pixels=10_000)
    with make_client(seg, described) as c:
        assert c.get("/model").json()["trained_on"] == "shapes train (400 images)"


def test_allow_host_option(segmenter, ckpt):
    config = ServeConfig(checkpoint=str(ckpt), max_pixels=10_000, concurrency=1, allow_host=["seg.example.org"])
    with TestClient(create_app(segmenter, config), base_url="http://seg.example.org") as c:
        assert c.get("/health").status_code == 200
    with TestClient(create_app(segmenter, config), base_url="http://other.example.org") as c:
        assert "--allow-host other.example.org" in assert_one_line_error(c.get("/health"), 421)
    config = ServeConfig(checkpoint=str(ckpt), max_pixels=10_000, concurrency=1, allow_host=["*"])
    with TestClient(create_app(segmenter, config), base_url="http://anything.example") as c:
        assert c.get("/health").status_code == 200
