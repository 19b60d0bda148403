"""Tests of mixed pooling and the Mixed U-Net."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from LiverSegLib.networks import NETWORKS, MixedPool2d, MixedUNet, build_network

torch.set_num_threads(1)


def _max_avg(x):
    return F.max_pool2d(x, 2), F.avg_pool2d(x, 2)


@pytest.mark.parametrize(("p_max", "which"), [(1.0, 0), (0.0, 1)])
def test_extreme_probabilities_are_plain_pooling(p_max, which):
    x = torch.randn(2, 3, 8, 6)
    pool = MixedPool2d(2, p_max).train()
    assert torch.equal(pool(x), _max_avg(x)[which])
    assert torch.equal(pool.eval()(x), _max_avg(x)[which])


def test_training_mode_picks_max_or_average_per_region():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    mx, av = _max_avg(x)
    assert not torch.any(mx == av)  # random data: every region distinguishes the two
    pool = MixedPool2d(2, 0.5).train()
    y = pool(x)
    is_max, is_avg = y == mx, y == av
    assert torch.all(is_max | is_avg)
    assert is_max.any() and is_avg.any()
    assert 0.3 < is_max.float().mean().item() < 0.7
    assert not torch.equal(pool(x), y)  # a new draw each call


def test_probability_sets_the_share_of_max_regions():
    torch.manual_seed(1)
    x = torch.randn(4, 8, 16, 16)
    mx, _ = _max_avg(x)
    share = (MixedPool2d(2, 0.8).train()(x) == mx).float().mean().item()
    assert 0.7 < share < 0.9


def test_eval_mode_is_the_deterministic_expectation():
    x = torch.randn(2, 3, 8, 8)
    mx, av = _max_avg(x)
    pool = MixedPool2d(2, 0.5).eval()
    y = pool(x)
    assert torch.equal(y, 0.5 * (mx + av))
    assert torch.equal(pool(x), y)
    assert torch.allclose(MixedPool2d(2, 0.25).eval()(x), 0.25 * mx + 0.75 * av)


def test_mixed_pool_bad_arguments():
    for kwargs in ({"kernel_size": 0}, {"p_max": -0.1}, {"p_max": 1.5}):
        with pytest.raises(ValueError):
            MixedPool2d(**kwargs)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        MixedPool2d()(torch.randn(3, 8, 8))


@pytest.mark.parametrize(
    ("kwargs", "shape", "out_ch"),
    [
        ({"features": (4, 8, 16)}, (2, 1, 16, 24), 3),
        ({"features": (2, 4, 4, 8, 8), "out_channels": 2}, (1, 1, 32, 16), 2),
        ({"in_channels": 2, "features": (4, 8), "norm": "batch"}, (2, 2, 6, 10), 3),
    ],
)
def test_output_shape_in_both_modes(kwargs, shape, out_ch):
    net = MixedUNet(**kwargs)
    for mode in (True, False):
        net.train(mode)
        with torch.no_grad():
            y = net(torch.randn(*shape))
        assert isinstance(y, torch.Tensor) and y.shape == (shape[0], out_ch, *shape[2:])


def test_paper_structure_nine_blocks_four_mixed_pools():
    net = MixedUNet(1, 3, (4, 8, 16, 32, 64))
    assert sum(isinstance(m, MixedPool2d) for m in net.modules()) == 4
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 9 * 2 + 1
    assert all(m.kernel_size == (3, 3) for m in convs[:-1]) and convs[-1].kernel_size == (1, 1)
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 18
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the paper has no batch norm
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.5
    assert net.size_multiple == 16 and net.spatial_dims == 2 and net.out_channels == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in MixedUNet(features=(4, 8), norm="BATCH").modules()) == 6


def test_train_and_eval_differ_by_mixed_pooling():
    torch.manual_seed(0)
    net = MixedUNet(1, 2, (4, 8, 16), dropout=0.0)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        net.eval()
        e1, e2 = net(x), net(x)
        net.train()
        t1, t2 = net(x), net(x)
    assert torch.equal(e1, e2)
    assert not torch.allclose(e1, t1)
    assert not torch.allclose(t1, t2)


def test_mixed_unet_p_max_reaches_the_pools():
    net = MixedUNet(features=(4, 8, 16), p_max=0.3)
    assert {m.p_max for m in net.modules() if isinstance(m, MixedPool2d)} == {0.3}


def test_mixed_unet_bad_input_shapes():
    net = MixedUNet(1, 3, (4, 8, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.randn(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 1, 16, 14))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": 1}, "out_channels"),
        ({"features": (8,)}, "features"),
        ({"dropout": 1.0}, "dropout"),
        ({"p_max": 2.0}, "p_max"),
        ({"norm": "layer"}, "norm"),
    ],
)
def test_mixed_unet_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixedUNet(**kwargs)


def test_registered_and_built_by_name():
    assert NETWORKS["MixedUNet"] is MixedUNet
    net = build_network("MixedUNet", {"features": [4, 8], "out_channels": 2})
    assert isinstance(net, MixedUNet) and net.out_channels == 2
