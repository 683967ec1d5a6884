"""The HTTP API and the page: a FastAPI app around one loaded model.

    GET  /               the page (HTML/JS/CSS shipped in this package; nothing from a CDN)
    POST /predict        an image (raw body or multipart) -> index-mask PNG, or JSON with ?format=json
    GET  /model          what is served: model, classes and colours, normalisation, limits
    GET  /health         liveness and the pool's load
    GET  /docs           the API's Swagger page (its JS/CSS from the fastapi-offline package, no CDN)
    GET  /openapi.json   the API description

Every request passes :class:`fcnseg.serving.guards.Guard` (Host allow-list, the app's request
limit, clean 503s at shutdown); ``fcnseg serve`` runs it on ``GuardedH11Protocol`` (header
timeout, connection limit). An upload is read in full (within its byte, time and stall limits)
before it asks the inference pool for a place, so slow or stalled senders hold no place.

``create_app(segmenter, config)`` builds the app around a model already loaded;
``app_from_env()`` is the import-string factory uvicorn's worker processes call
(``fcnseg.serving.app:app_from_env``), reading the config from the environment.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import time
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fcnseg.data.normalize import IMAGENET_STD_RGB, parse_mode
from fcnseg.errors import FcnsegError
from fcnseg.palette import class_colours
from fcnseg.predict_options import MAX_SCALES, MAX_TILE, MIN_TILE, SCALE_RANGE, tile_problem
from fcnseg.predict_options import parse_scales as parse_scales_option
from fcnseg.serving.config import ServeConfig, load_segmenter
from fcnseg.serving.guards import GUARD_STATE, ConnectionLimits, Guard
from fcnseg.serving.pool import Busy, InferencePool
from fcnseg.serving.uploads import ApiError, ClientGone, decode_image, image_bytes
from fcnseg.viz import index_png_bytes

log = logging.getLogger(__name__)

STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
MAX_OVERLAP = 0.75

REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image: raw bytes or a multipart form with one file",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
PREDICT_RESPONSES = {
    200: {
        "description": "index-mask PNG (pixel value = class id, palette = class colours), or JSON with "
        "?format=json / Accept: application/json; with &mask=png the JSON carries the "
        "index-mask PNG as base64 (mask_png), with &mask=rle each class carries its pixels "
        "as COCO's uncompressed RLE (rle: {size: [height, width], counts}, column-major, "
        "counts start with a run of zeros; pycocotools.mask.frPyObjects reads it)",
        "content": {"image/png": {}, "application/json": {}},
    },
    400: {"description": "empty body, corrupt image or malformed form"},
    408: {"description": "the upload took longer than the server's upload timeout, or paused too long"},
    413: {"description": "upload over the byte limit or image over the pixel limit"},
    415: {"description": "Content-Type is not an image or multipart form"},
    421: {"description": "the Host header names a host this server was not started for (--allow-host)"},
    422: {"description": "a query parameter is out of bounds"},
    503: {
        "description": "busy (all inference threads and the waiting line are full, or too many requests) "
        "or shutting down; see Retry-After"
    },
}


def page_file(name: str) -> str:
    return (resources.files("fcnseg.serving") / "static" / name).read_text(encoding="utf-8")


def class_palette(seg) -> list[tuple[int, int, int]]:
    """The model's class colours by the one palette rule (``fcnseg.palette``), as predict uses."""
    return class_colours(seg.palette, seg.num_classes)


def normalization_info(mode: str) -> dict:
    """What the model expects of its input, for people: the mode, its mean (and std), one sentence."""
    kind, mean = parse_mode(mode)
    if kind == "caffe":
        return {
            "mode": mode,
            "kind": "caffe",
            "mean_bgr": list(mean),
            "description": "Caffe: pixels as BGR in [0, 255], minus the mean (B, G, R) = "
            + ", ".join(f"{v:.2f}" for v in mean),
        }
    return {
        "mode": mode,
        "kind": "imagenet",
        "mean_rgb": list(mean),
        "std_rgb": list(IMAGENET_STD_RGB),
        "description": "ImageNet: RGB scaled to [0, 1], minus mean ("
        + ", ".join(f"{v:g}" for v in mean)
        + "), divided by std ("
        + ", ".join(f"{v:g}" for v in IMAGENET_STD_RGB)
        + ")",
    }


def parse_scales(text: str | None) -> tuple[float, ...]:
    try:
        return parse_scales_option(text, "scales")
    except FcnsegError as exc:
        raise ApiError(422, str(exc)) from None


def wants_json(fmt: str | None, accept: str | None) -> bool:
    if fmt is not None:
        return fmt == "json"
    accept = (accept or "").lower()
    return "application/json" in accept and "image/png" not in accept


def coco_rle(mask: np.ndarray, class_id: int) -> dict:
    """Where ``mask == class_id``, as COCO's uncompressed RLE: {"size": [h, w], "counts": [...]}, runs
    over the pixels in column-major order, alternating absent/present and starting with absent
    (a leading 0 when the first pixel is present). pycocotools' frPyObjects and decode read it."""
    flat = (mask == class_id).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def create_app(segmenter, config: ServeConfig) -> FastAPI:
    """The app serving ``segmenter`` (a loaded :class:`fcnseg.inference.Segmenter`) under ``config``."""
    pool = InferencePool(config.threads, config.waiting)
    palette = class_palette(segmenter)
    names = segmenter.class_names
    source = Path(config.checkpoint or config.weights).name  # never the server's folders
    meta = segmenter.meta  # a fcnseg.weights.ModelMeta
    model_info = {
        "model": meta.model_name,
        "source": source,
        "num_classes": segmenter.num_classes,
        "trained_on": meta.trained_on,
        "classes": [{"id": i, "name": names[i], "color": list(palette[i])} for i in range(segmenter.num_classes)],
        "normalization": normalization_info(segmenter.normalization),
        "model_kwargs": {
            k: v for k, v in meta.model_kwargs.items() if isinstance(v, (int, float, str, bool)) or v is None
        },
        "backend": segmenter.backend,
        "fast_path": bool(segmenter.fast),
        "description": segmenter.describe(),
        "limits": {
            "max_upload_bytes": config.max_upload_bytes,
            "max_pixels": config.max_pixels,
            "threads": pool.threads,
            "waiting": pool.waiting,
        },
        "options": {
            "tile": f"0 (whole image) or {MIN_TILE}-{MAX_TILE}",
            "overlap": f"0-{MAX_OVERLAP}",
            "flip": "true/false",
            "scales": f"1-{MAX_SCALES} of {SCALE_RANGE[0]:g}-{SCALE_RANGE[1]:g}",
        },
    }
    index_html = page_file("index.html")
    static = {name: page_file(name) for name in STATIC}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # the state reaches GuardedH11Protocol in every worker process (uvicorn's app_state)
        yield {GUARD_STATE: ConnectionLimits(config.header_timeout, config.max_connections)}
        pool.shutdown()

    from fastapi_offline import FastAPIOffline

    app = FastAPIOffline(
        title="fcnseg",
        version=_version(),
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        static_url="/docs-assets",
        favicon_url="/static/icon.svg",
        swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
        description=f"Semantic segmentation with {model_info['model']} ({segmenter.num_classes} "
        "classes). POST an image to /predict; GET /model for the classes.",
    )
    app.state.segmenter, app.state.pool, app.state.config = segmenter, pool, config
    app.add_middleware(Guard, config=config, retry_after=pool.retry_after)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone):
        log.info("%s %s: the client hung up during its upload", request.method, request.url.path)
        return Response(status_code=400)  # nobody reads it; uvicorn drops it quietly

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy):
        return error_response(
            503,
            f"all {pool.threads} inference threads are busy and {pool.waiting} "
            f"requests are waiting; retry in {exc.retry_after} s",
            {"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail
        if exc.status_code == 404:
            message = f"no such page or endpoint: {request.url.path}; see /openapi.json"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /openapi.json"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "query")
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "; ".join(parts) + "; see GET /model for the bounds")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); the server keeps serving")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(index_html)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in static:  # a fixed set of names: no request ever reaches the file system
            raise StarletteHTTPException(404)
        return Response(static[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/health", summary="liveness and load")
    async def health():
        return {"status": "ok", "model": model_info["model"], **pool.stats()}

    @app.get("/model", summary="the served model: classes, colours, normalisation, limits")
    async def model():
        return model_info

    @app.post("/predict", summary="segment one image", openapi_extra=REQUEST_BODY, responses=PREDICT_RESPONSES)
    async def predict(
        request: Request,
        format: str | None = Query(
            None, pattern="^(png|json)$", description="png (default) or json; or send Accept: application/json"
        ),
        mask: str | None = Query(
            None,
            pattern="^(png|rle|true|false)$",
            description="with format=json: png = the index-mask PNG as base64 (mask_png; "
            "true means png), rle = each class's pixels as COCO "
            "uncompressed RLE (column-major)",
        ),
        tile: int | None = Query(
            None,
            ge=0,
            le=MAX_TILE,
            description=f"sliding-window tile in pixels (0 = whole image; default: "
            f"whole image up to 2.25 MP); {MIN_TILE}-{MAX_TILE}",
        ),
        overlap: float = Query(0.25, ge=0.0, le=MAX_OVERLAP, description="tile overlap fraction"),
        flip: bool = Query(False, description="test-time augmentation: average with the mirrored image"),
        scales: str | None = Query(
            None,
            max_length=64,
            description=f"test-time scales, e.g. 0.75,1,1.25 (1-{MAX_SCALES} values "
            f"in {SCALE_RANGE[0]:g}-{SCALE_RANGE[1]:g})",
        ),
    ):
        if tile_problem(tile):
            raise ApiError(422, f"tile={tile}: {tile_problem(tile)}")
        options = {"tile": tile, "overlap": overlap, "tta_flip": flip, "scales": parse_scales(scales)}
        as_json = wants_json(format, request.headers.get("accept"))
        start = time.perf_counter()
        # the whole body first, holding nothing: only a complete upload asks the pool for a place
        data = await image_bytes(request, config.max_upload_bytes, config.upload_timeout, config.header_timeout)
        async with pool.admit() as job:
            result = await job.run(lambda: _segment(segmenter, data, config.max_pixels, options))
        mask_png = index_png_bytes(result["mask"], palette) if (mask in ("png", "true") or not as_json) else None
        total_ms = (time.perf_counter() - start) * 1000
        height, width = result["mask"].shape
        timing = {
            "inference_ms": round(result["inference_ms"], 2),
            "decode_ms": round(result["decode_ms"], 2),
            "total_ms": round(total_ms, 2),
        }
        if not as_json:
            present = ",".join(str(c) for c in np.flatnonzero(result["counts"]))
            return Response(
                mask_png,
                media_type="image/png",
                headers={
                    "X-Inference-Ms": f"{timing['inference_ms']:.2f}",
                    "X-Image-Size": f"{width}x{height}",
                    "X-Classes-Present": present,
                    "Server-Timing": f"decode;dur={timing['decode_ms']:.2f}, model;dur={timing['inference_ms']:.2f}",
                },
            )
        pixels = width * height
        counts = result["counts"]
        body = {
            "model": model_info["model"],
            "width": width,
            "height": height,
            **timing,
            "options": {**options, "scales": list(options["scales"])},
            "classes": [
                {
                    "id": int(c),
                    "name": names[c],
                    "color": list(palette[c]),
                    "pixels": int(counts[c]),
                    "share": counts[c] / pixels,
                }
                for c in sorted(np.flatnonzero(counts), key=lambda c: -counts[c])
            ],
        }
        if mask == "rle":
            for entry in body["classes"]:
                entry["rle"] = coco_rle(result["mask"], entry["id"])
        if mask_png is not None:
            body["mask_png"] = base64.b64encode(mask_png).decode("ascii")
        return JSONResponse(body)

    return app


def _segment(segmenter, data: bytes, max_pixels: int, options: dict) -> dict:
    """Runs on a pool thread: decode, predict with this request's options, count classes."""
    t0 = time.perf_counter()
    rgb = decode_image(data, max_pixels)
    t1 = time.perf_counter()
    seg = copy.copy(segmenter)  # same model and session; this request's tiling and TTA
    seg.tile, seg.overlap = options["tile"], options["overlap"]
    seg.tta_flip, seg.scales = options["tta_flip"], options["scales"]
    mask, _ = seg.segment(rgb)
    t2 = time.perf_counter()
    counts = np.bincount(mask.ravel(), minlength=segmenter.num_classes)[: segmenter.num_classes]
    return {"mask": mask, "counts": counts, "decode_ms": (t1 - t0) * 1000, "inference_ms": (t2 - t1) * 1000}


def _version() -> str:
    from fcnseg import __version__

    return __version__


def app_from_env() -> FastAPI:
    """uvicorn's factory for worker processes: config from the environment, model loaded here."""
    config = ServeConfig.from_env()
    return create_app(load_segmenter(config), config)
