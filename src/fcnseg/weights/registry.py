"""The registry of published weights: what each file is, where it comes from and how it was scored.

Every entry names the publisher's address(es), tried in order, and the checksum the publisher
gives: torchvision writes the first hex digits of the file's SHA-256 into its file names (checked
as torch.hub does), pytorch-fcn gives MD5 sums in its model classes, and the FCN authors publish
no checksum for their Caffe models (none is checked; the converter still checks every layer's
name and shape; the download is kept only once the whole file parses). ``confirmed`` says where
each URL, checksum, size and result was last read in the publisher's own current code.

Not confirmable from code: the Caffe files' and pytorch-fcn files' sizes (no publisher states them;
computed here from the parameter count), and whether a Google Drive id still answers today.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fcnseg.data.context import CLASS_NAMES as CONTEXT_CLASSES
from fcnseg.data.nyud import CLASS_NAMES as NYUD_CLASS_NAMES
from fcnseg.data.nyud import COLOR_NORMALIZATION, HHA_NORMALIZATION, RGB_HHA_NORMALIZATION
from fcnseg.data.siftflow import CLASS_NAMES as SIFT_FLOW_CLASSES
from fcnseg.data.siftflow import GEOMETRIC
from fcnseg.data.voc import CLASS_NAMES as VOC_CLASSES
from fcnseg.data.voc import voc_colormap
from fcnseg.errors import FcnsegError, did_you_mean

TORCHVISION = "https://download.pytorch.org/models/"
CAFFE = "http://dl.caffe.berkeleyvision.org/"
FCN_REPO = "https://github.com/shelhamer/fcn.berkeleyvision.org"
# Where the facts were read (the publishers' newest code, checked 2026-12-02):
_TV_SOURCE = "torchvision 0.29.1 (the PyPI wheel)"
_FCN_COMMIT = "1305c7378a9f (2018-04-04, the repository's newest commit)"
_TORCHFCN_COMMIT = "4b988509bfd1 (2023-02-05, torchfcn 1.9.7, its latest release)"


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    kind: str  # "model" (a trained segmenter) or "backbone" (ImageNet trunk)
    format: str  # "torchvision", "torchvision-seg", "caffe", "pytorch-fcn"
    model: str  # fcnseg model name ("fcn8s") or trunk name ("vgg16")
    urls: tuple[str, ...]  # tried in order
    checksum: str | None  # "sha256-prefix:397923af", "md5:<32 hex>", or None (none published)
    size_mb: float | None  # MiB, as published (torchvision) or computed from the parameter count
    result: str  # the published result
    published: str  # where the result (and file) are published
    confirmed: str  # where the URL and checksum were read
    model_kwargs: dict = field(default_factory=dict)
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    normalization: str = "imagenet"
    note: str = ""
    runnable: bool = True  # False: downloadable, but fcnseg has no matching architecture yet
    modality: str = "rgb"  # the input it takes (fcnseg.data.base.MODALITIES)

    @property
    def filename(self) -> str:
        return (
            self.urls[0].rsplit("/", 1)[-1].split("?")[0] if "drive.google" not in self.urls[0] else f"{self.name}.pth"
        )

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) or None

    def meta(self) -> dict:
        """Checkpoint metadata for a model entry (see fcnseg.weights.format)."""
        return {
            "model_name": self.model,
            "model_kwargs": dict(self.model_kwargs),
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "normalization": self.normalization,
            "source": self.name,
            **({"modality": self.modality} if self.modality != "rgb" else {}),
        }


def _palette(n: int) -> tuple[tuple[int, int, int], ...]:
    return tuple(tuple(int(v) for v in c) for c in voc_colormap(n))


NYUD_CLASSES = NYUD_CLASS_NAMES  # the reference's data/nyud/classes.txt

_VOC = {"class_names": VOC_CLASSES, "palette": _palette(len(VOC_CLASSES))}
_TV_RESULT = "ImageNet-1K top-1 {}"


def _tv_confirmed(where: str) -> str:
    return f"{_TV_SOURCE}: torchvision/models/{where}.IMAGENET1K_V1 (url, _file_size, _metrics)"


def _backbone(name: str, file: str, size: float, top1: str, where: str) -> WeightsEntry:
    return WeightsEntry(
        name=name,
        kind="backbone",
        format="torchvision",
        model=name,
        urls=(TORCHVISION + file,),
        checksum="sha256-prefix:" + file.rsplit("-", 1)[1].split(".")[0],
        size_mb=size,
        result=_TV_RESULT.format(top1),
        published="torchvision model docs",
        confirmed=_tv_confirmed(where),
    )


def _tv_fcn(depth: str, file: str, size: float, miou: str, acc: str) -> WeightsEntry:
    return WeightsEntry(
        name=f"fcn-{depth}-coco",
        kind="model",
        format="torchvision-seg",
        model=f"fcn-{depth}",
        urls=(TORCHVISION + file,),
        checksum="sha256-prefix:" + file.rsplit("-", 1)[1].split(".")[0],
        size_mb=size,
        result=f"{miou} mean IU, {acc} pixel acc. (COCO val2017, VOC classes)",
        published="torchvision model docs (FCN_ResNet*_Weights)",
        confirmed=f"{_TV_SOURCE}: torchvision/models/segmentation/fcn.py FCN_ResNet{depth[6:]}_Weights."
        "COCO_WITH_VOC_LABELS_V1 (url, _file_size, _metrics)",
        model_kwargs={"num_classes": 21, "backbone": depth, "geometry": "same"},
        **_VOC,
        note="trained on the COCO subset with the 20 VOC classes; its aux_classifier is dropped on load",
    )


def _caffe(
    name: str,
    file: str,
    model: str,
    size: float,
    result: str,
    repo_dir: str,
    classes: tuple[str, ...] = VOC_CLASSES,
    note: str = "",
    runnable: bool = True,
    backbone: str = "vgg16",
    normalization: str = "caffe",
    geometric_classes: int = 0,
    modality: str = "rgb",
) -> WeightsEntry:
    kwargs = {"num_classes": len(classes), "backbone": backbone, "geometry": "caffe"}
    if geometric_classes:
        kwargs["geometric_classes"] = geometric_classes
    return WeightsEntry(
        name=name,
        kind="model",
        format="caffe",
        model=model,
        urls=(CAFFE + file,),
        checksum=None,
        size_mb=size,
        result=result,
        published=f"{FCN_REPO} ({repo_dir}, README)",
        confirmed=f"{FCN_REPO} at {_FCN_COMMIT}: {repo_dir}/caffemodel-url (URL; no checksum published), "
        "README.md (result)",
        model_kwargs=kwargs,
        class_names=classes,
        palette=_palette(len(classes)),
        normalization=normalization,
        note=note,
        runnable=runnable,
        modality=modality,
    )


def _pytorch_fcn(name: str, model: str, drive_id: str, md5: str, result: str, size: float) -> WeightsEntry:
    return WeightsEntry(
        name=name,
        kind="model",
        format="pytorch-fcn",
        model=model,
        urls=(f"https://drive.google.com/uc?id={drive_id}",),
        checksum=f"md5:{md5}",
        size_mb=size,
        result=result + " (the Caffe model it was converted from)",
        published="https://github.com/wkentaro/pytorch-fcn (README)",
        confirmed=f"https://github.com/wkentaro/pytorch-fcn at {_TORCHFCN_COMMIT}: torchfcn/models/"
        f"{'fcn8s.py FCN8sAtOnce' if model == 'fcn8s-atonce' else model + '.py ' + model.upper()[:-1] + 's'}"
        ".download() (Drive id and md5), README.md (result)",
        model_kwargs={"num_classes": 21, "backbone": "vgg16", "geometry": "caffe"},
        **_VOC,
        normalization="caffe",
        note="Google Drive link (Drive refuses when a file's download quota is exceeded); the same "
        "weights, converted from it, are in the authors' Caffe model (fcn*-voc)",
    )


# The Caffe models' input means (BGR), from the reference's data layers: PASCAL VOC and PASCAL-Context
# (voc_layers.py, pascalcontext_layers.py) subtract the ImageNet VGG mean ("caffe"); NYUDv2 and SIFT
# Flow subtract their own (nyud_layers.py mean_bgr, siftflow_layers.py mean).
_NYUD = COLOR_NORMALIZATION
_SIFT_FLOW = "caffe:114.578,115.294,108.353"

# Sizes of the Caffe and pytorch-fcn files: 4 bytes per parameter of the architecture (counted with
# fcnseg, the fixed upsamplers included), in MiB -- the publishers state none.
_NO_RESULT = "no score published with this file (the paper reports its architecture's)"
_ENTRIES = [
    _backbone("vgg16", "vgg16-397923af.pth", 527.796, "71.592", "vgg.py VGG16_Weights"),
    _backbone("vgg16_bn", "vgg16_bn-6c64b313.pth", 527.866, "73.360", "vgg.py VGG16_BN_Weights"),
    _backbone("alexnet", "alexnet-owt-7be5be79.pth", 233.087, "56.522", "alexnet.py AlexNet_Weights"),
    _backbone("resnet50", "resnet50-0676ba61.pth", 97.781, "76.130", "resnet.py ResNet50_Weights"),
    _backbone("resnet101", "resnet101-63fe2227.pth", 170.511, "77.374", "resnet.py ResNet101_Weights"),
    _tv_fcn("resnet50", "fcn_resnet50_coco-1167a1af.pth", 135.009, "60.5", "91.4"),
    _tv_fcn("resnet101", "fcn_resnet101_coco-7ecb50ca.pth", 207.711, "63.7", "91.9"),
    _caffe(
        "fcn32s-voc",
        "fcn32s-heavy-pascal.caffemodel",
        "fcn32s",
        519.4,
        "63.6 mean IU, PASCAL VOC seg11valid",
        "voc-fcn32s",
    ),
    _caffe(
        "fcn16s-voc",
        "fcn16s-heavy-pascal.caffemodel",
        "fcn16s",
        514.3,
        "65.0 mean IU, PASCAL VOC seg11valid",
        "voc-fcn16s",
    ),
    _caffe(
        "fcn8s-voc",
        "fcn8s-heavy-pascal.caffemodel",
        "fcn8s",
        513.0,
        "65.5 mean IU seg11valid, 67.2 seg12test",
        "voc-fcn8s",
    ),
    _caffe(
        "fcn8s-atonce-voc",
        "fcn8s-atonce-pascal.caffemodel",
        "fcn8s-atonce",
        513.0,
        "65.4 mean IU, PASCAL VOC seg11valid",
        "voc-fcn8s-atonce",
    ),
    _caffe(
        "fcn-alexnet-voc",
        "fcn-alexnet-pascal.caffemodel",
        "fcn32s",
        223.9,
        "48.0 mean IU, PASCAL VOC seg11valid",
        "voc-fcn-alexnet",
        backbone="caffenet",
        note="CaffeNet trunk (grouped convolutions, LRN) and a 63x63 upsampler: fcnseg's "
        "caffenet backbone, not torchvision's single-tower alexnet",
    ),
    _caffe(
        "fcn32s-nyud-color",
        "nyud-fcn32s-color-heavy.caffemodel",
        "fcn32s",
        537.8,
        _NO_RESULT,
        "nyud-fcn32s-color",
        classes=NYUD_CLASSES,
        normalization=_NYUD,
        note="colour input only; subtracts the NYUDv2 mean BGR (116.190, 97.203, 92.318)",
    ),
    _caffe(
        "fcn32s-nyud-hha",
        "nyud-fcn32s-hha-heavy.caffemodel",
        "fcn32s",
        537.8,
        _NO_RESULT,
        "nyud-fcn32s-hha",
        classes=NYUD_CLASSES,
        normalization=HHA_NORMALIZATION,
        modality="hha",
        note="HHA input (data/hha/ of the NYUDv2 folder, or computed from depth); subtracts the HHA "
        "mean (132.431, 94.076, 118.477)",
    ),
    _caffe(
        "fcn32s-nyud-color-hha",
        "nyud-fcn32s-color-hha-heavy.caffemodel",
        "fcn32s-fusion",
        1050.6,  # two FCN-32s streams (2 x 537.8) sharing one 40x40x64x64 upscore (25.0)
        _NO_RESULT,
        "nyud-fcn32s-color-hha",
        classes=NYUD_CLASSES,
        normalization=RGB_HHA_NORMALIZATION,
        modality="rgb-hha",
        note="RGB-HHA late fusion: a colour and an HHA FCN-32s, scores summed x0.5 (6-channel input)",
    ),
    _caffe(
        "fcn32s-siftflow",
        "siftflow-fcn32s-heavy.caffemodel",
        "fcn32s",
        529.7,
        _NO_RESULT,
        "siftflow-fcn32s",
        classes=SIFT_FLOW_CLASSES,
        normalization=_SIFT_FLOW,
        geometric_classes=GEOMETRIC.num_classes,
        note="two heads: semantic (33 classes, the predicted mask) and geometric (3: sky, horizontal, "
        "vertical; scored by `fcnseg evaluate --data siftflow:PATH`). Subtracts the SIFT Flow mean BGR "
        "(114.578, 115.294, 108.353)",
    ),
    _caffe(
        "fcn16s-siftflow",
        "siftflow-fcn16s-heavy.caffemodel",
        "fcn16s",
        517.1,
        _NO_RESULT,
        "siftflow-fcn16s",
        classes=SIFT_FLOW_CLASSES,
        normalization=_SIFT_FLOW,
        geometric_classes=GEOMETRIC.num_classes,
        note="two heads: semantic (33 classes, the predicted mask) and geometric (3 classes)",
    ),
    _caffe(
        "fcn8s-siftflow",
        "siftflow-fcn8s-heavy.caffemodel",
        "fcn8s",
        514.0,
        _NO_RESULT,
        "siftflow-fcn8s",
        classes=SIFT_FLOW_CLASSES,
        normalization=_SIFT_FLOW,
        geometric_classes=GEOMETRIC.num_classes,
        note="two heads: semantic (33 classes, the predicted mask) and geometric (3 classes)",
    ),
    _caffe(
        "fcn32s-context",
        "pascalcontext-fcn32s-heavy.caffemodel",
        "fcn32s",
        569.4,
        _NO_RESULT,
        "pascalcontext-fcn32s",
        classes=CONTEXT_CLASSES,
    ),
    _caffe(
        "fcn16s-context",
        "pascalcontext-fcn16s-heavy.caffemodel",
        "fcn16s",
        527.5,
        _NO_RESULT,
        "pascalcontext-fcn16s",
        classes=CONTEXT_CLASSES,
    ),
    _caffe(
        "fcn8s-context",
        "pascalcontext-fcn8s-heavy.caffemodel",
        "fcn8s",
        517.2,
        _NO_RESULT,
        "pascalcontext-fcn8s",
        classes=CONTEXT_CLASSES,
    ),
    # the ids and MD5s pytorch-fcn re-uploaded on 2021-08-23 (its commit cc9c75c), replacing those of 2017
    _pytorch_fcn(
        "fcn32s-voc-torchfcn",
        "fcn32s",
        "11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f",
        "d3eb467a80e7da0468a20dfcbc13e6c8",
        "63.6 mean IU, seg11valid",
        519.4,
    ),
    _pytorch_fcn(
        "fcn16s-voc-torchfcn",
        "fcn16s",
        "1bctu58B6YH9bu6lBBSBB2rUeGlGhYLoP",
        "a2d4035f669f09483b39c9a14a0d6670",
        "65.0 mean IU, seg11valid",
        514.3,
    ),
    _pytorch_fcn(
        "fcn8s-voc-torchfcn",
        "fcn8s",
        "1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI",
        "de93e540ec79512f8770033849c8ae89",
        "65.5 mean IU, seg11valid",
        513.0,
    ),
    _pytorch_fcn(
        "fcn8s-atonce-voc-torchfcn",
        "fcn8s-atonce",
        "0B9P1L--7Wd2vblE1VUIxV1o2d2M",
        "bfed4437e941fef58932891217fe6464",
        "65.4 mean IU, seg11valid",
        513.0,
    ),
]

REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in _ENTRIES}


def list_weights(kind: str | None = None) -> list[WeightsEntry]:
    return [e for e in REGISTRY.values() if kind is None or e.kind == kind]


def get_entry(name: str) -> WeightsEntry:
    """The entry called ``name``; FcnsegError suggesting the closest names if there is none."""
    if name in REGISTRY:
        return REGISTRY[name]
    raise FcnsegError(
        f"{name!r} is not a registered weights name{did_you_mean(name, REGISTRY)}; see `fcnseg weights list`"
    )


def unknown_message(name: str, kind: str | None = None) -> str:
    """For a name that is neither registered nor an existing file; ``kind`` ("backbone", "model")
    narrows the suggestions to the names that would fit where it was given."""
    names = [e.name for e in list_weights(kind)]
    return (
        f"{name!r} is neither a registered {'backbone ' if kind == 'backbone' else ''}weights name "
        f"nor an existing file{did_you_mean(name, names)}; see `fcnseg weights list`, or check the path"
    )
