"""Published weights: a registry, a verified download cache, and converters (no Caffe needed).

    open_model(source) -> OpenedModel          THE front door: any name or file, by content -> module or
                                               ONNX bytes + ModelMeta (fcnseg.weights.open)
    ModelMeta                                  typed model metadata (fcnseg.weights.meta)
    resolve(name_or_path) -> Path               registered name -> cached, verified file; paths as they are
    load(name_or_path) -> (model, ModelMeta)    open_model, torch weights only
    convert(source, out) -> Path                any of those -> an fcnseg checkpoint
    create_model(name, ..., weights=, backbone_weights=)
    list_weights(), get_entry(name), cache_dir()

Layer: above models and data, below engine and inference (see docs/ARCHITECTURE.md).
"""

from fcnseg._lazy import lazy_exports

_EXPORTS = {
    "open_model": "fcnseg.weights.open",
    "OpenedModel": "fcnseg.weights.open",
    "file_kind": "fcnseg.weights.open",
    "ModelMeta": "fcnseg.weights.meta",
    "resolve": "fcnseg.weights.api",
    "load": "fcnseg.weights.api",
    "convert": "fcnseg.weights.api",
    "create_model": "fcnseg.weights.api",
    "backbone_file": "fcnseg.weights.api",
    "is_registered": "fcnseg.weights.api",
    "list_weights": "fcnseg.weights.registry",
    "get_entry": "fcnseg.weights.registry",
    "WeightsEntry": "fcnseg.weights.registry",
    "cache_dir": "fcnseg.weights.download",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
