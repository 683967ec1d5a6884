"""SIFT Flow end to end on a tiny fake dataset in the real layout: the format (labels shifted as the
reference's data layer shifts them, the geometric labels as an extra target), the two-headed FCN
trained on both losses, both heads evaluated (CLI and Python API), and the authors' two-headed
caffemodels converted with both heads, checked against an independent forward."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import subprocess
import zipfile

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import fcnseg
from _faults import TORCHRUN_FCNSEG
from fcnseg.cli import main
from fcnseg.data import load_dataset
from fcnseg.data.base import WithTargets
from fcnseg.data.download import download_dataset, safe_extract
from fcnseg.data.siftflow import SUBFOLDER, split_ids
from fcnseg.data.transforms import PadCollate, TrainTransform
from fcnseg.engine import evaluate
from fcnseg.engine.checkpoint import load_checkpoint
from fcnseg.engine.metrics import ConfusionMatrix
from fcnseg.errors import FcnsegError
from fcnseg.models import build_model
from fcnseg.weights import load
from test_weights_convert import caffemodel_bytes, image, random_reference, reference_forward

TRAIN = ["coast_a1", "forest_b2", "street_c3"]
TEST = ["highway_d4", "mountain_e5"]


def semantic_labels(h, w, k):
    """Raw SIFT Flow semantic labels: 0 (unlabelled) in the first row, then class 28 (sky) on top,
    class 1 + k below."""
    s = np.full((h, w), 28, np.int16)
    s[h // 2 :] = 1 + k
    s[0] = 0
    return s


def geometric_labels(h, w):
    """Raw geometric labels: -1 (unlabelled) in the first row, 1 (sky) on top, 2 (horizontal) below,
    3 (vertical) in the right quarter."""
    g = np.full((h, w), 1, np.int16)
    g[h // 2 :] = 2
    g[:, 3 * w // 4 :] = 3
    g[0] = -1
    return g


def make_siftflow(root, h=32, w=40):
    """SiftFlowDataset/ with Images, SemanticLabels and GeoLabels, and the split lists beside them."""
    data = root / "SiftFlowDataset"
    rng = np.random.default_rng(0)
    for k, i in enumerate(TRAIN + TEST):
        for folder in ("Images", "SemanticLabels", "GeoLabels"):
            (data / folder / SUBFOLDER).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2] = (120, 170, 230)  # a sky-blue top half: something to learn
        Image.fromarray(pixels).save(data / "Images" / SUBFOLDER / f"{i}.jpg", quality=95)
        scipy.io.savemat(data / "SemanticLabels" / SUBFOLDER / f"{i}.mat", {"S": semantic_labels(h, w, k)})
        scipy.io.savemat(data / "GeoLabels" / SUBFOLDER / f"{i}.mat", {"S": geometric_labels(h, w)})
    (data / "trainval.txt").write_text("\n".join(TRAIN) + "\n")
    (data / "test.txt").write_text("\n".join(TEST))
    return data


@pytest.fixture
def siftflow(tmp_path):
    make_siftflow(tmp_path / "data")
    return f"siftflow:{tmp_path / 'data'}"


# ----------------------------------------------------------------- the format


def test_layout_splits_and_labels_shifted_as_the_reference_does(siftflow, tmp_path):
    for spec in (siftflow, f"{siftflow}/SiftFlowDataset"):
        ds = load_dataset(spec, "trainval")
        assert len(ds) == 3 and ds.num_classes == 33 and ds.class_names[27] == "sky"
    assert [ds.sample_name(i).rsplit("/", 1)[1] for i in range(3)] == [f"{i}.jpg" for i in TRAIN]
    assert len(load_dataset(siftflow, "train")) == 3 and len(load_dataset(siftflow, "val")) == 2  # the aliases
    assert len(load_dataset(siftflow, "test")) == 2
    img, mask = ds[1]
    assert img.shape == (3, 32, 40) and mask.shape == (32, 40)
    assert (mask[0] == 255).all() and mask[5, 0] == 27 and mask[20, 0] == 1  # 0 -> void, 28 -> 27, 2 -> 1
    geo = ds.load_extra(1, "geometric")
    assert geo[0, 0] == 255 and geo[5, 0] == 0 and geo[20, 0] == 1 and geo[20, 39] == 2
    assert [t.name for t in ds.extra_targets] == ["geometric"] and ds.extra_targets[0].num_classes == 3
    with pytest.raises(FcnsegError, match="no split 'valid'"):
        load_dataset(siftflow, "valid")
    with pytest.raises(FcnsegError, match="no Images/spatial_envelope"):
        load_dataset(f"siftflow:{tmp_path}", "test")


def test_shipped_split_lists_are_the_references():
    trainval, test = (
        split_ids(__import__("pathlib").Path("/nonexistent"), "trainval"),
        split_ids(__import__("pathlib").Path("/nonexistent"), "test"),
    )
    assert len(trainval) == 2486 and len(test) == 200 and not set(trainval) & set(test)
    assert "coast_natu975" in test and not {"highway_bost181", "street_urb506"} & set(trainval + test)


def test_geometric_labels_travel_stacked_through_transforms_and_collation(siftflow):
    ds = WithTargets(load_dataset(siftflow, "trainval"), ["geometric"])
    image0, masks = ds[0]
    assert masks.shape == (2, 32, 40) and masks.dtype == torch.int64
    assert masks[1, 20, 39] == 2 and masks[0, 20, 0] == 0
    torch.manual_seed(3)
    t_image, t_masks = TrainTransform(crop_size=48, scale_range=(0.5, 1.5), hflip=True)(image0, masks)
    assert t_image.shape[-2:] == t_masks.shape[-2:] == (48, 48) and t_masks.shape[0] == 2
    # the two labellings stay aligned: where the geometric label is void, so is the semantic one (row 0)
    assert ((t_masks[1] == 255) <= (t_masks[0] == 255)).all()
    images, batch = PadCollate()([(image0, masks), (t_image, t_masks)])
    assert images.shape == (2, 3, 48, 48) and batch.shape == (2, 2, 48, 48) and (batch[0, :, 32:] == 255).all()


def test_bad_and_missing_geometric_files_are_named(siftflow, tmp_path):
    geo = tmp_path / "data" / "SiftFlowDataset" / "GeoLabels" / SUBFOLDER
    scipy.io.savemat(geo / "forest_b2.mat", {"S": np.full((32, 40), 7, np.int16)})
    ds = WithTargets(load_dataset(siftflow, "trainval"), ["geometric"])
    with pytest.raises(FcnsegError, match="forest_b2.mat: geometric labels 6 are not classes"):
        ds[1]
    scipy.io.savemat(geo / "forest_b2.mat", {"other": np.zeros(3)})
    with pytest.raises(
        FcnsegError, match="forest_b2.mat: not a SIFT Flow geometric label file \\(no S\\); use the files in GeoLabels/"
    ):
        ds[1]
    (geo / "coast_a1.mat").unlink()
    with pytest.raises(FcnsegError, match="coast_a1.mat does not exist"):
        load_dataset(siftflow, "trainval")


def test_data_check_reads_the_geometric_labels_too(siftflow, tmp_path, capsys):
    geo = tmp_path / "data" / "SiftFlowDataset" / "GeoLabels" / SUBFOLDER
    scipy.io.savemat(geo / "mountain_e5.mat", {"S": np.full((16, 40), 2, np.int16)})
    assert main(["data", "check", siftflow]) != 0
    out = capsys.readouterr().out
    assert "mountain_e5.mat" in out and "geometric labels are 40x16 but the image is 40x32" in out
    assert "train: 3 samples, 0 problems" in out


# ----------------------------------------------------------------- two heads: training and evaluation


def test_train_with_both_losses_then_evaluate_both_heads(siftflow, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", siftflow, "--model", "fcn16s", "--width", "0.0625", "--geometry", "same"]
    args += ["--iterations", "2", "--batch-size", "2", "--optimizer", "adamw", "--lr", "1e-2"]
    args += ["--num-samples", "0", "--no-progress", "--out", str(run)]
    assert main(args) == 0
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["meta"]["model_kwargs"]["geometric_classes"] == 3
    geo_scorer = ckpt["model"]["score_fr_geo.weight"]
    assert geo_scorer.abs().sum() > 0  # zero-initialised: only the geometric loss can have moved it
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["final"]["heads"]["geometric"]["pixel_acc"] <= 1

    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--weights", str(run / "last.pt"), "--data", siftflow, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "geometric head: pixel acc" in printed and "horizontal" in printed
    metrics = json.loads(out.read_text())
    geometric = metrics["heads"]["geometric"]
    assert geometric["class_names"] == ["sky", "horizontal", "vertical"] and len(geometric["confusion"]) == 3
    assert metrics["images"] == 2 and np.array(geometric["confusion"]).sum() == 2 * 31 * 40  # row 0 void


def test_one_headed_model_trains_semantic_only_when_asked(siftflow, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", siftflow, "--model", "fcn32s", "--width", "0.0625", "--geometry", "same"]
    args += ["--iterations", "1", "--num-samples", "0", "--no-progress", "--out", str(run)]
    assert main([*args, "--model-options", "{geometric_classes: 0}"]) == 0
    assert not any("geo" in k for k in load_checkpoint(run / "last.pt")["model"])


def test_geometric_pixel_accuracy_is_counted_from_the_geometric_labels(siftflow):
    """A two-headed model whose geometric head always says 'vertical': its geometric pixel accuracy
    is the share of labelled pixels that are vertical, whatever the semantic head does."""
    model = build_model("fcn32s", 33, width=1 / 16, geometry="same", geometric_classes=3).eval()
    with torch.no_grad():
        model.score_fr_geo.weight.zero_()
        model.score_fr_geo.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
        model.score_fr.bias[27] = 5.0  # the semantic head says "sky" everywhere
    ds = load_dataset(siftflow, "test")
    result = evaluate(model, ds, meta={"model_kwargs": {"num_classes": 33}, "normalization": "caffe"})
    g = geometric_labels(32, 40)
    assert result["heads"]["geometric"]["pixel_acc"] == pytest.approx((g == 3).sum() / (g != -1).sum())
    assert result["heads"]["geometric"]["per_class_iou"][:2] == [0.0, 0.0]
    # semantic: test images hold sky and classes 3 and 4 (see make_siftflow); mean IU over those three
    s = semantic_labels(32, 40, 3)
    sky_iou = (s == 28).sum() / (s != 0).sum()
    assert result["mean_iu"] == pytest.approx(sky_iou / 3) and result["pixel_acc"] == pytest.approx(sky_iou)
    assert "heads" not in evaluate(
        build_model("fcn32s", 33, width=1 / 16), ds, meta={"model_kwargs": {"num_classes": 33}}
    )


def test_mean_iu_over_present_classes_leaves_out_predicted_but_absent_ones():
    """The paper's SIFT Flow rule: a class absent from the truth does not count, even if predicted."""
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1]))  # class 2 predicted once, never true
    assert cm.compute()["mean_iu"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert cm.compute(present_only=True)["mean_iu"] == pytest.approx((0.5 + 1) / 2)
    assert ConfusionMatrix(3).compute(present_only=True)["pixels"] == 0


# ----------------------------------------------------------------- the authors' two-headed caffemodels


HEADS = {
    "fcn32s": ("score_fr", "upscore"),
    "fcn16s": ("score_fr", "upscore2", "score_pool4", "upscore16"),
    "fcn8s": ("score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"),
}


def two_headed(arch):
    """A SIFT Flow net's layers: trunk, *_sem head (33 classes), *_geo head (3), as siftflow-fcn*/net.py names them."""
    sem, geo = random_reference(arch, num_classes=33), random_reference(arch, num_classes=3, seed=5)
    layers = {k: v for k, v in sem.items() if k not in HEADS[arch]}
    layers.update({k + "_sem": sem[k] for k in HEADS[arch]})
    layers.update({k + "_geo": geo[k] for k in HEADS[arch]})
    return layers, sem, {**{k: v for k, v in sem.items() if k not in HEADS[arch]}, **{k: geo[k] for k in HEADS[arch]}}


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_two_headed_caffemodel_keeps_both_heads(tmp_path, arch):
    layers, semantic, geometric = two_headed(arch)
    path = tmp_path / f"siftflow-{arch}-heavy.caffemodel"
    path.write_bytes(caffemodel_bytes(layers))
    model, meta = load(path)
    assert meta["model_name"] == arch and meta["model_kwargs"]["geometric_classes"] == 3
    assert meta["class_names"][27] == "sky"  # the published file name brings the registry's classes
    x = image()
    with torch.no_grad():
        heads = model(x, all_heads=True)
        torch.testing.assert_close(heads["semantic"], reference_forward(semantic, x, arch), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(heads["geometric"], reference_forward(geometric, x, arch), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x), heads["semantic"])  # the mask predict and serve use
    for fast in (False, True):  # the Segmenter predicts the semantic head, on either path
        mask = fcnseg.Segmenter.from_pretrained(str(path), fast=fast).predict(np.zeros((20, 30, 3), np.uint8))
        assert mask.shape == (20, 30) and mask.max() < 33


def test_converted_two_headed_file_evaluates_both_heads(tmp_path, siftflow, capsys):
    layers, _, _ = two_headed("fcn8s")
    src = tmp_path / "siftflow-fcn8s-heavy.caffemodel"
    src.write_bytes(caffemodel_bytes(layers))
    assert main(["weights", "convert", str(src), "--out", str(tmp_path / "siftflow.pt")]) == 0
    for weights in (src, tmp_path / "siftflow.pt"):
        out = tmp_path / "m.json"
        assert (
            main(["evaluate", "--weights", str(weights), "--data", siftflow, "--split", "test", "--json", str(out)])
            == 0
        )
        assert set(json.loads(out.read_text())["heads"]) == {"geometric"}
    assert "geometric head" in capsys.readouterr().out


# ----------------------------------------------------------------- fcnseg data download siftflow (a zip)


def zip_folder(folder, archive):
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


def test_download_extracts_the_zip_and_verifies_its_structure(tmp_path, capsys):
    """The zip holds Images/, SemanticLabels/ and GeoLabels/ at its top level (no folder of its own)."""
    archive = zip_folder(make_siftflow(tmp_path / "src"), tmp_path / "SiftFlowDataset.zip")
    root = tmp_path / "root"
    assert main(["data", "download", "siftflow", "--root", str(root), "--url", archive.as_uri(), "--no-progress"]) == 0
    assert f"use it as siftflow:{root}" in capsys.readouterr().out
    assert len(load_dataset(f"siftflow:{root}", "trainval")) == 3 and archive.exists()  # file://: left in place
    wrong = zip_folder(tmp_path / "src" / "SiftFlowDataset" / "GeoLabels", tmp_path / "wrong.zip")
    with pytest.raises(FcnsegError, match="does not contain Images/spatial_envelope"):
        download_dataset("siftflow", tmp_path / "other", url=wrong.as_uri(), md5=None, progress=False)


@pytest.mark.parametrize("name", ["/tmp/evil.txt", "fine/../../evil.txt", "link"])
def test_zip_members_escaping_the_target_are_refused_before_anything_is_written(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine/file.txt", "hi")
        info = zipfile.ZipInfo(name)
        if name == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../outside" if name == "link" else "evil")
    target = tmp_path / "a" / "b"
    with pytest.raises(FcnsegError, match="refusing to extract"):
        safe_extract(archive, target)
    assert not (target / "fine").exists() and not (tmp_path / "evil.txt").exists()


def test_evaluate_fcn8s_siftflow_by_name_scores_both_heads(tmp_path, siftflow, monkeypatch, capsys):
    """`fcnseg evaluate --weights fcn8s-siftflow --data siftflow:PATH --split test`: the registered
    entry (its file replaced by a tiny two-headed caffemodel of the same layout, as the real one
    cannot be fetched here) through the download cache and the converter; the Python API agrees."""
    from fcnseg.weights import open_model, registry
    from test_weights_convert import WIDTH

    monkeypatch.setenv("FCNSEG_HOME", str(tmp_path / "home"))
    data = caffemodel_bytes(two_headed("fcn8s")[0])
    src = tmp_path / "siftflow-fcn8s-heavy.caffemodel"
    src.write_bytes(data)
    real = registry.get_entry("fcn8s-siftflow")
    assert real.model_kwargs["geometric_classes"] == 3
    tiny = dataclasses.replace(
        real,
        urls=(src.as_uri(),),
        checksum="md5:" + hashlib.md5(data).hexdigest(),
        model_kwargs={**real.model_kwargs, "width": WIDTH},
    )
    monkeypatch.setitem(registry.REGISTRY, "fcn8s-siftflow", tiny)
    out = tmp_path / "m.json"
    args = ["evaluate", "--weights", "fcn8s-siftflow", "--data", siftflow, "--split", "test", "--json", str(out)]
    assert main([*args, "--no-progress", "--device", "cpu"]) == 0
    assert "geometric head: pixel acc" in capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert np.array(metrics["heads"]["geometric"]["confusion"]).sum() == 2 * 31 * 40
    opened = open_model("fcn8s-siftflow")
    api = evaluate(opened.module, load_dataset(siftflow, "test"), meta=opened.meta, device="cpu")
    assert api["heads"]["geometric"]["confusion"] == metrics["heads"]["geometric"]["confusion"]
    assert api["confusion"] == metrics["confusion"] and api["mean_iu"] == metrics["mean_iu"]


@pytest.mark.slow
def test_torchrun_trains_both_heads(siftflow, tmp_path):
    """Under DDP the two-headed forward goes through the wrapper (every parameter gets a gradient)."""
    run = tmp_path / "ddp"
    cmd = list(TORCHRUN_FCNSEG)
    cmd += ["train", "--data", siftflow, "--model", "fcn16s", "--width", "0.0625", "--geometry", "same"]
    cmd += ["--iterations", "2", "--optimizer", "adamw", "--lr", "1e-2", "--num-samples", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "--out", str(run)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_checkpoint(run / "last.pt")["model"]["score_fr_geo.weight"].abs().sum() > 0
    assert "geometric" in json.loads((run / "summary.json").read_text())["final"]["heads"]
