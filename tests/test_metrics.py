import math

import pytest
import torch

from fcnseg import ConfusionMatrix


def test_hand_computed_case():
    # truth:      0 0 0 1 1 2      prediction: 0 0 1 1 1 0
    truth = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 1, 0])
    cm = ConfusionMatrix(3)
    cm.update(pred, truth)
    assert cm.mat.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    r = cm.compute()
    assert r["pixel_acc"] == pytest.approx(4 / 6)
    assert r["mean_acc"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # IU_0 = 2 / (3 + 3 - 2) = 1/2 ; IU_1 = 2 / (2 + 3 - 2) = 2/3 ; IU_2 = 0 / (1 + 0 - 0) = 0
    assert r["mean_iu"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert r["fw_iu"] == pytest.approx((3 * 1 / 2 + 2 * 2 / 3 + 1 * 0) / 6)
    assert r["per_class_iou"] == pytest.approx([1 / 2, 2 / 3, 0])


def test_ignore_index_and_any_shape():
    truth = torch.tensor([[0, 255], [1, 1]])
    pred = torch.tensor([[0, 1], [1, 0]])
    cm = ConfusionMatrix(2)
    cm.update(pred, truth)
    assert cm.mat.sum() == 3
    assert cm.compute()["pixel_acc"] == pytest.approx(2 / 3)


def test_absent_classes_are_excluded_from_means():
    # Class 2 is in neither truth nor prediction: excluded. Class 3 is only predicted: IU 0, counted
    # in mean IU, but has no accuracy (t_3 = 0) so it is not in mean accuracy.
    truth = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 3])
    cm = ConfusionMatrix(4)
    cm.update(pred, truth)
    r = cm.compute()
    assert math.isnan(r["per_class_iou"][2]) and math.isnan(r["per_class_acc"][2])
    assert r["per_class_iou"][3] == 0.0 and math.isnan(r["per_class_acc"][3])
    assert r["mean_iu"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert r["mean_acc"] == pytest.approx((1 + 1 / 2) / 2)


def test_merge_equals_single_accumulation():
    g = torch.Generator().manual_seed(1)
    truth = torch.randint(0, 5, (4, 7, 9), generator=g)
    pred = torch.randint(0, 5, (4, 7, 9), generator=g)
    whole = ConfusionMatrix(5)
    whole.update(pred, truth)
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(pred[:2], truth[:2])
    b.update(pred[2:], truth[2:])
    assert torch.equal(a.merge(b).mat, whole.mat)
    assert a.all_reduce() is a  # no process group: a no-op


def test_bad_labels_are_rejected():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target labels"):
        cm.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="predicted labels"):
        cm.update(torch.tensor([5]), torch.tensor([0]))
