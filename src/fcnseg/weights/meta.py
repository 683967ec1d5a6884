"""ModelMeta: what a model is and how to read its output, in one typed place.

Every model fcnseg loads or writes carries one: checkpoints (``"meta"``), safetensors and ONNX
exports (JSON under the key "fcnseg"), int8 models (the same key), registry entries and converted
third-party files. ``to_dict()`` writes the current layout (with ``meta_version``); ``from_dict()``
reads it and every older one:

    meta_version 1 / none   {"model_name", "model_kwargs", "class_names", "palette",
                             "normalization" (absent in the first checkpoints: "imagenet"),
                             "fcnseg_version", "source" (registry), "output_stride" (exports)}
    meta_version 2          the above plus "trained_on", "data", "train_split", and "modality"
                            (written only when it is not "rgb": "hha", "rgb-hha"; absent = "rgb")

Defaults live here only (``DEFAULT_NORMALIZATION``). Layer: weights (no torch needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fcnseg.errors import FcnsegError

META_VERSION = 2
DEFAULT_NORMALIZATION = "imagenet"
DEFAULT_MODALITY = "rgb"
# data spec kind -> how a model card names it
_DATA_NAMES = {
    "shapes": "shapes (synthetic)",
    "voc": "PASCAL VOC",
    "sbd": "SBD",
    "voc-aug": "PASCAL VOC + SBD",
    "cityscapes": "Cityscapes",
    "nyud": "NYUDv2",
}


# registry name part -> the data the published model was trained on
_PUBLISHED_DATA = {
    "coco": "COCO (VOC classes)",
    "voc": "PASCAL VOC",
    "nyud": "NYUDv2",
    "siftflow": "SIFT Flow",
    "context": "PASCAL-Context",
}


def published_data(registry_name: str) -> str | None:
    """What a published model (by registry name, e.g. "fcn8s-voc") was trained on."""
    parts = registry_name.lower().split("-")
    return next((text for part, text in _PUBLISHED_DATA.items() if part in parts), None)


def describe_data(spec: str | None, split: str | None = None) -> str | None:
    """How a model card names a data spec: "shapes (synthetic)", "PASCAL VOC (train)", "folder DATA"."""
    if not spec:
        return None
    kind, _, arg = str(spec).partition(":")
    name = _DATA_NAMES.get(kind.strip().lower())
    if name is None:
        name = f"{kind} {arg.rstrip('/').rsplit('/', 1)[-1]}".strip() if arg else kind
    return f"{name} ({split})" if split and kind.strip().lower() != "shapes" else name


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to rebuild a model and read its output (nothing about training state).

    ``model_kwargs`` always holds ``num_classes``. ``palette`` may be empty (the palette rule then
    picks colours). ``trained_on`` names the data ("shapes (synthetic)"; None = not recorded);
    ``data``/``train_split`` are the spec and split `fcnseg train` used (quantize calibrates on them).
    ``modality`` is the input the model takes (fcnseg.data.base.MODALITIES: "rgb", "hha", "rgb-hha").
    """

    model_name: str
    model_kwargs: dict = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    normalization: str = DEFAULT_NORMALIZATION
    source: str | None = None  # registry name, when the weights are published ones
    trained_on: str | None = None
    data: str | None = None
    train_split: str | None = None
    output_stride: int | None = None
    fcnseg_version: str | None = None
    modality: str = DEFAULT_MODALITY

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names or ()))
        object.__setattr__(self, "palette", tuple(tuple(int(v) for v in c) for c in self.palette or ()))
        object.__setattr__(self, "normalization", self.normalization or DEFAULT_NORMALIZATION)
        object.__setattr__(self, "modality", self.modality or DEFAULT_MODALITY)

    @property
    def num_classes(self) -> int:
        if "num_classes" not in self.model_kwargs:
            raise FcnsegError(f"the metadata of this {self.model_name} does not give its number of classes")
        return int(self.model_kwargs["num_classes"])

    @property
    def names(self) -> list[str]:
        """Class names, "0", "1", ... where the model has none."""
        return list(self.class_names) or [str(i) for i in range(self.num_classes)]

    def with_(self, **changes: Any) -> ModelMeta:
        """A copy with ``changes`` (None values leave a field as it is)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def model_card(self) -> str:
        """One line: "fcn8s, 6 classes, trained on shapes (synthetic)" (", hha input" where not RGB)."""
        trained = f"trained on {self.trained_on}" if self.trained_on else "training data not recorded"
        takes = f", {self.modality} input" if self.modality != DEFAULT_MODALITY else ""
        return f"{self.model_name}, {self.num_classes} classes{takes}, {trained}"

    # ------------------------------------------------------------------ the dict in files

    def to_dict(self) -> dict:
        """The JSON/checkpoint form (plain lists, no Nones), with ``meta_version``."""
        out: dict[str, Any] = {
            "meta_version": META_VERSION,
            "model_name": self.model_name,
            "model_kwargs": dict(self.model_kwargs),
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "normalization": self.normalization,
        }
        for name in ("source", "trained_on", "data", "train_split", "output_stride", "fcnseg_version"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.modality != DEFAULT_MODALITY:
            out["modality"] = self.modality
        return out

    @classmethod
    def from_dict(cls, data: Mapping | ModelMeta, label: str = "model") -> ModelMeta:
        """Read any layout written so far (see the module docstring); FcnsegError naming ``label``."""
        if isinstance(data, ModelMeta):
            return data
        if not isinstance(data, Mapping):
            raise FcnsegError(
                f"{label} has no metadata (found {type(data).__name__}); it was not written "
                "by fcnseg: pass a file from `fcnseg train` or `fcnseg export`"
            )
        version = data.get("meta_version", 1)
        if not isinstance(version, int) or version > META_VERSION:
            raise FcnsegError(
                f"{label} has metadata version {version!r}, newer than this fcnseg reads "
                f"({META_VERSION}); upgrade fcnseg"
            )
        if not isinstance(data.get("model_name"), str):
            raise FcnsegError(f"{label} has no model name in its metadata; it is damaged or not from fcnseg")
        kwargs = data.get("model_kwargs")
        if (
            not isinstance(kwargs, Mapping)
            or isinstance(kwargs.get("num_classes"), bool)
            or not isinstance(kwargs.get("num_classes", 0), int)
        ):
            raise FcnsegError(
                f"{label} has no valid model options (num_classes) in its metadata; it is damaged or not from fcnseg"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise FcnsegError(f"{label} has malformed metadata ({exc}); it is damaged or not from fcnseg") from None

    # Read-only dict access for code written against the old untyped meta (``meta["model_name"]``):
    # the values the dict had (lists for class names and palette).
    def __getitem__(self, key: str) -> Any:
        if key == "meta_version":
            return META_VERSION
        if key not in _FIELDS:
            raise KeyError(key)
        if key == "palette":
            return [list(c) for c in self.palette]
        return list(self.class_names) if key == "class_names" else getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value


_FIELDS = frozenset(f.name for f in fields(ModelMeta))


def as_meta(meta: Mapping | ModelMeta, label: str = "model") -> ModelMeta:
    """``meta`` as a ModelMeta (dicts of any layout are read with :meth:`ModelMeta.from_dict`)."""
    return ModelMeta.from_dict(meta, label)
