"""PASCAL-Context (pascal-context:PATH): the 459 -> 59 + background mapping from .mat LabelMaps, the
layout, its download (file:// and a local HTTP server) and `fcnseg evaluate --weights fcn8s-context`."""

import dataclasses
import hashlib
import http.server
import json
import threading
from typing import ClassVar

import numpy as np
import pytest
import scipy.io

from fcnseg.cli import main
from fcnseg.data import load_dataset
from fcnseg.data.context import CLASS_NAMES
from fcnseg.data.download import RESOURCES, download_dataset
from fcnseg.errors import FcnsegError
from fcnseg.weights import registry
from test_data_check_download import tar_of
from test_data_formats import write_jpg

# labels.txt as the dataset spells it: ids in its own (alphabetical) order, names with spaces, and
# three of the 59 classes under other names (table, bedclothes, cloth); the rest are not in the task
_OTHERS = ("accordion", "air conditioner", "antenna", "artillery", "ashtray", "atrium", "baby carriage")
_SPELLED = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}
LABELS = sorted([_SPELLED.get(n, n) for n in CLASS_NAMES[1:]] + list(_OTHERS))
LABEL_ID = {name: i for i, name in enumerate(LABELS, 1)}
SPLITS = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007", "2010_000001", "2010_000002"]}


def label_map(k):
    """A 12x16 LabelMap whose rows hold: 0 (unlabelled), aeroplane, table, bedclothes, cloth, wood,
    a label outside the task (accordion, air conditioner) and, per image k, one more class."""
    names = (None, "aeroplane", "table", "bedclothes", "cloth", "wood", "accordion", "air conditioner")
    lm = np.zeros((12, 16), np.uint16)
    for row, name in enumerate(names):
        lm[row] = LABEL_ID[name] if name else 0
    lm[8:] = LABEL_ID[CLASS_NAMES[21 + k]]
    return lm


def expected_mask(k):
    mask = np.zeros((12, 16), np.int64)
    for row, cls in enumerate((0, 1, 11, 52, 28, 59, 0, 0)):
        mask[row] = cls
    mask[8:] = 21 + k
    return mask


def make_context(root, splits=SPLITS, with_trainval_list=False):
    """The download's layout: VOCdevkit/VOC2010 (JPEGImages, ImageSets/Main) and pascal-context/
    (labels.txt, trainval/<id>.mat)."""
    voc = root / "VOCdevkit" / "VOC2010"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    context = root / "pascal-context"
    (context / "trainval").mkdir(parents=True)
    (context / "labels.txt").write_text("".join(f"{i}: {name}\n" for name, i in LABEL_ID.items()))
    k = 0
    for split, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            write_jpg(voc / "JPEGImages" / f"{i}.jpg", value=40 + 20 * k)
            scipy.io.savemat(context / "trainval" / f"{i}.mat", {"LabelMap": label_map(k)})
            k += 1
    if with_trainval_list:
        (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(sum(splits.values(), [])) + "\n")
    return voc, context


def test_labelmaps_become_the_60_classes(tmp_path):
    make_context(tmp_path)
    ds = load_dataset(f"pascal-context:{tmp_path}", "val")
    assert len(ds) == 3 and ds.num_classes == 60 and ds.ignore_index == 255
    assert ds.class_names[0] == "background" and ds.class_names[59] == "wood"
    for n, k in enumerate(range(2, 5)):  # the val images are the 3rd..5th written
        image, mask = ds[n]
        assert image.shape == (3, 12, 16)
        assert np.array_equal(mask.numpy(), expected_mask(k))
    assert len(load_dataset(f"pascal-context:{tmp_path}", "train")) == 2
    assert len(load_dataset(f"pascal-context:{tmp_path}", "trainval")) == 5  # train + val without a list
    # the two folders named separately, and the annotations extracted into a folder named trainval
    (tmp_path / "pascal-context").rename(tmp_path / "trainval")
    spec = f"pascal-context:{tmp_path / 'VOCdevkit' / 'VOC2010'},{tmp_path}"
    assert np.array_equal(load_dataset(spec, "val")[0][1].numpy(), expected_mask(2))


def test_one_class_list_for_data_and_models():
    """The dataset's classes are the ones the authors' PASCAL-Context models are registered with."""
    for name in ("fcn32s-context", "fcn16s-context", "fcn8s-context"):
        assert registry.get_entry(name).class_names == CLASS_NAMES
    assert len(CLASS_NAMES) == 60 and len(set(CLASS_NAMES)) == 60


def test_problems_are_one_line_naming_the_file(tmp_path):
    voc, context = make_context(tmp_path)
    with pytest.raises(FcnsegError, match="no split 'test'"):
        load_dataset(f"pascal-context:{tmp_path}", "test")
    scipy.io.savemat(context / "trainval" / "2008_000002.mat", {"Other": np.zeros((12, 16))})
    lm = label_map(0)
    lm[0, 0] = 500
    scipy.io.savemat(context / "trainval" / "2008_000003.mat", {"LabelMap": lm})
    ds = load_dataset(f"pascal-context:{tmp_path}", "train")
    with pytest.raises(FcnsegError, match="2008_000002.mat: not a PASCAL-Context annotation"):
        ds[0]
    with pytest.raises(FcnsegError, match="2008_000003.mat: label 500 is not in labels.txt"):
        ds[1]
    (context / "labels.txt").write_text("1: aeroplane\n2: wood\n")
    with pytest.raises(FcnsegError, match="labels.txt: no label bicycle, bird"):
        load_dataset(f"pascal-context:{tmp_path}", "train")
    (context / "labels.txt").unlink()
    with pytest.raises(FcnsegError, match="no labels.txt found.*fcnseg data download pascal-context"):
        load_dataset(f"pascal-context:{tmp_path}", "train")


def test_data_check_reads_every_sample(tmp_path, capsys):
    make_context(tmp_path)
    assert main(["data", "check", f"pascal-context:{tmp_path}", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(s["split"], s["samples"]) for s in report["splits"]] == [("train", 2), ("val", 3)]
    assert report["splits"][1]["class_pixels"]["bedcloth"] == 3 * 16


# ---------------------------------------------------------------- downloads


def archives(tmp_path):
    """VOC2010's tar (VOCdevkit/VOC2010 inside) and trainval.tar.gz (labels.txt and trainval/ at top)."""
    stage = tmp_path / "stage"
    voc, context = make_context(stage)
    (tmp_path / "voc_stage").mkdir()
    (stage / "VOCdevkit").rename(tmp_path / "voc_stage" / "VOCdevkit")  # members VOCdevkit/VOC2010/...
    voc_tar = tar_of(tmp_path / "voc_stage", tmp_path / "VOCtrainval_03-May-2010.tar")
    context_tar = tar_of(context, tmp_path / "trainval.tar.gz")
    return voc_tar, context_tar


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_from_file_urls(tmp_path, capsys):
    voc_tar, context_tar = archives(tmp_path)
    root = tmp_path / "data"
    download_dataset("voc2010", root, url=voc_tar.as_uri(), md5=md5(voc_tar), progress=False)
    args = ["data", "download", "pascal-context", "--root", str(root), "--url", context_tar.as_uri(), "--no-progress"]
    assert main(args) == 0  # no published checksum: none is asked for; voc2010 is already there
    assert f"use it as pascal-context:{root}" in capsys.readouterr().out
    assert (root / "pascal-context" / "labels.txt").is_file() and voc_tar.is_file() and context_tar.is_file()
    assert np.array_equal(load_dataset(f"pascal-context:{root}", "val")[0][1].numpy(), expected_mask(2))
    # an archive without labels.txt and trainval/ is not PASCAL-Context's; the earlier folder stays
    wrong = tar_of(tmp_path / "voc_stage", tmp_path / "wrong.tar.gz")
    (root / ".fcnseg-pascal-context.done").unlink()
    with pytest.raises(FcnsegError, match="does not contain labels.txt, trainval; is it the right archive.*untouched"):
        download_dataset("pascal-context", root, url=wrong.as_uri(), md5=None, progress=False)
    assert len(load_dataset(f"pascal-context:{root}", "train")) == 2


class Server(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict] = {}
    served: ClassVar[list] = []

    def do_GET(self):
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.served.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_download_fetches_both_archives_over_http(tmp_path, monkeypatch, capsys):
    voc_tar, context_tar = archives(tmp_path)
    Server.files = {"/voc.tar": voc_tar.read_bytes(), "/trainval.tar.gz": context_tar.read_bytes()}
    Server.served = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        voc = dataclasses.replace(RESOURCES["voc2010"], url=f"{base}/voc.tar", md5=md5(voc_tar))
        monkeypatch.setitem(RESOURCES, "voc2010", voc)
        monkeypatch.setitem(
            RESOURCES, "pascal-context", dataclasses.replace(RESOURCES["pascal-context"], url=f"{base}/trainval.tar.gz")
        )
        root = tmp_path / "data"
        assert main(["data", "download", "pascal-context", "--root", str(root), "--no-progress"]) == 0
        assert Server.served == ["/voc.tar", "/trainval.tar.gz"]
        assert not list(root.glob("*.tar*"))  # downloaded archives are removed once extracted
        assert len(load_dataset(f"pascal-context:{root}", "train")) == 2
        assert main(["data", "download", "pascal-context", "--root", str(root), "--no-progress"]) == 0
        assert len(Server.served) == 2  # done: nothing fetched again
        # VOC2010's published sum is checked even when it is fetched as a part of pascal-context
        monkeypatch.setitem(RESOURCES, "voc2010", dataclasses.replace(voc, md5="0" * 32))
        assert main(["data", "download", "pascal-context", "--root", str(tmp_path / "d2"), "--no-progress"]) == 2
        assert "MD5" in capsys.readouterr().err
    finally:
        server.shutdown()


def test_dataset_without_public_archive_says_where_and_exits_3(tmp_path, capsys):
    assert main(["data", "download", "cityscapes", "--root", str(tmp_path / "d")]) == 3
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "https://www.cityscapes-dataset.com/downloads/" in out[0] and "cityscapes:DIR" in out[0]
    assert not (tmp_path / "d").exists()  # nothing downloaded, nothing created
    with pytest.raises(FcnsegError, match="cityscapes-dataset.com"):
        download_dataset("cityscapes", tmp_path / "d")


# ---------------------------------------------------------------- evaluate by name


def test_evaluate_fcn8s_context_by_name(tmp_path, monkeypatch, capsys):
    """`fcnseg evaluate --weights fcn8s-context --data pascal-context:PATH`: the registered entry (its
    file replaced by a tiny-width caffemodel of the same layout, as the real one cannot be fetched
    here) through the download cache, the Caffe converter and the 60-class dataset."""
    from test_weights_convert import WIDTH, caffemodel_bytes, random_reference

    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    data = caffemodel_bytes(random_reference("fcn8s", num_classes=60))
    src = tmp_path / "pascalcontext-fcn8s-heavy.caffemodel"
    src.write_bytes(data)
    real = registry.get_entry("fcn8s-context")
    tiny = dataclasses.replace(
        real,
        urls=(src.as_uri(),),
        checksum="md5:" + hashlib.md5(data).hexdigest(),
        model_kwargs={**real.model_kwargs, "width": WIDTH},
    )
    monkeypatch.setitem(registry.REGISTRY, "fcn8s-context", tiny)
    make_context(tmp_path / "pc")
    args = ["evaluate", "--weights", "fcn8s-context", "--data", f"pascal-context:{tmp_path / 'pc'}"]
    assert main([*args, "--json", str(tmp_path / "m.json"), "--no-progress", "--device", "cpu"]) == 0
    assert f"fcn8s-context on pascal-context:{tmp_path / 'pc'} (val, 3 images)" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["images"] == 3 and len(metrics["per_class_iou"]) == 60
    confusion = np.array(metrics["confusion"])
    truth = sum(np.bincount(expected_mask(k).ravel(), minlength=60) for k in range(2, 5))
    assert np.array_equal(confusion.sum(axis=1), truth)  # every pixel counted, under its mapped class
    # the Python API gives the same numbers from the same name
    import fcnseg
    from fcnseg.weights import open_model

    opened = open_model("fcn8s-context")
    dataset = fcnseg.load_dataset(f"pascal-context:{tmp_path / 'pc'}", "val")
    api = fcnseg.evaluate(opened.module, dataset, meta=opened.meta, device="cpu")
    assert api["confusion"] == metrics["confusion"] and api["class_names"] == list(CLASS_NAMES)
