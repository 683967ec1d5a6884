"""Normalisation modes: "imagenet", "caffe" and "caffe:B,G,R" (a Caffe model's own mean)."""

import pytest
import torch

from fcnseg.data.normalize import CAFFE_MEAN_BGR, check_mode, mean_pixel, normalize, parse_mode
from fcnseg.errors import FcnsegError


def test_caffe_with_a_mean_is_caffe_bgr_minus_that_mean():
    rgb = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)
    assert normalize(rgb, "caffe:1,2,3").flatten().tolist() == [29, 18, 7]
    torch.testing.assert_close(normalize(rgb, "caffe"), normalize(rgb, "caffe:" + ",".join(map(str, CAFFE_MEAN_BGR))))
    assert mean_pixel("caffe") == (123, 117, 104) and mean_pixel("caffe:1,2,3.6") == (4, 2, 1)


@pytest.mark.parametrize("mode", ["caffe:1,2", "caffe:a,b,c", "caffe:1,2,300", "caffe:", "bgr", "Caffe"])
def test_bad_modes_are_one_line_errors(mode):
    with pytest.raises(FcnsegError, match="caffe:B,G,R"):
        check_mode(mode)
    assert parse_mode("imagenet")[0] == "imagenet"
