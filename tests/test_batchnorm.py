"""fcnseg.models.layers.BatchNorm2d: nn.BatchNorm2d's results, a faster path for narrow channels_last
training inputs (tested against nn.BatchNorm2d itself, in float64 so the comparison is tight)."""

import pytest
import torch
from torch import nn

from fcnseg.models.layers import BatchNorm2d


def _pair(channels, **kwargs):
    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(channels, **kwargs).double(), nn.BatchNorm2d(channels, **kwargs).double()
    if ours.affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-0.5, 0.5)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("channels, size", [(8, (12, 10)), (3, (5, 7)), (12, (1, 2))])
@pytest.mark.parametrize("momentum, affine", [(0.1, True), (None, True), (0.3, False)])
def test_training_matches_nn_batchnorm_outputs_gradients_and_running_stats(channels, size, momentum, affine):
    ours, theirs = _pair(channels, momentum=momentum, affine=affine)
    for step in range(3):  # running statistics accumulate over steps (momentum None: a plain average)
        x = (torch.randn(4, channels, *size, dtype=torch.float64) * 3 + step).contiguous(
            memory_format=torch.channels_last
        )
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        outs = [m(xi) for m, xi in zip((ours, theirs), xs)]
        assert outs[0].is_contiguous(memory_format=torch.channels_last) and outs[0].dtype == torch.float64
        torch.testing.assert_close(outs[0], outs[1])
        grad = torch.randn_like(outs[1])
        for out in outs:
            out.backward(grad)
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
        if affine:
            torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
            torch.testing.assert_close(ours.bias.grad, theirs.bias.grad)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name))
    ours.eval(), theirs.eval()
    x = torch.randn(2, channels, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), theirs(x))


def test_bf16_under_autocast_returns_bf16_close_to_nn():
    ours, theirs = _pair(8)
    ours, theirs = ours.float(), theirs.float()
    x = torch.randn(4, 8, 16, 16).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(x), theirs(x)
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), atol=0.05, rtol=0.02)


def test_other_inputs_take_nn_batchnorm_path(monkeypatch):
    """Wide layers, NCHW inputs and eval never reach the narrow path (whose results are the same)."""
    from fcnseg.models import layers

    calls = []
    real = layers._NarrowChannelsLastBatchNorm.apply
    monkeypatch.setattr(layers._NarrowChannelsLastBatchNorm, "apply", lambda *a: calls.append(1) or real(*a))
    cl = torch.channels_last
    BatchNorm2d(16)(torch.randn(2, 16, 4, 4).contiguous(memory_format=cl))
    BatchNorm2d(8)(torch.randn(2, 8, 4, 4))
    BatchNorm2d(8).eval()(torch.randn(2, 8, 4, 4).contiguous(memory_format=cl))
    assert calls == []
    BatchNorm2d(8)(torch.randn(2, 8, 4, 4).contiguous(memory_format=cl))
    assert calls == [1]


def test_the_vgg_bn_trunk_uses_it_and_keeps_torchvision_keys():
    from fcnseg.models.backbones import vgg16_bn

    trunk = vgg16_bn(width=1 / 8, geometry="same")
    norms = [m for m in trunk.features if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m) is BatchNorm2d for m in norms)
    assert "features.1.running_var" in trunk.state_dict()
