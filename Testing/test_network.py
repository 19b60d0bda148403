"""Shape and argument tests of Han's 2.5D residual U-Net."""

import pytest
import torch

from LiverSegLib.errors import ModelError
from LiverSegLib.networks import HanResUNet2p5D, build_network


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "features", "hw"),
    [(5, 3, (4, 8, 16), (32, 48)), (5, 2, (4, 8, 16, 32, 64), (64, 32)), (1, 3, (4, 8), (6, 10)),
     (3, 4, (2, 4, 8), (8, 8))],
)
def test_output_shape_matches_input(in_ch, out_ch, features, hw):
    net = HanResUNet2p5D(in_ch, out_ch, features).eval()
    with torch.no_grad():
        y = net(torch.randn(2, in_ch, *hw))
    assert y.shape == (2, out_ch, *hw)


def test_paper_depth_has_32_convolutions_and_residual_skips():
    net = HanResUNet2p5D(5, 3, (32, 64, 128, 256, 512))
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 32
    assert all(m.kernel_size == (3, 3) for m in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 31  # all but the output layer
    assert sum(isinstance(m, torch.nn.PReLU) for m in net.modules()) == 31


def test_fully_convolutional_any_multiple_size():
    net = HanResUNet2p5D(5, 3, (4, 8, 16)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 5, 64, 64)).shape[-2:] == (64, 64)
        assert net(torch.randn(1, 5, 128, 96)).shape[-2:] == (128, 96)


def test_centre_slice_context_is_used():
    """Changing a neighbouring slice changes the output: the network sees the 2.5D stack, not one slice."""
    net = HanResUNet2p5D(5, 3, (4, 8)).eval()
    x = torch.randn(1, 5, 16, 16)
    x2 = x.clone()
    x2[:, 0] += 1.0
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"in_channels": 0}, "in_channels"), ({"out_channels": 1}, "out_channels"), ({"features": (8,)}, "features"),
     ({"dropout": 1.0}, "dropout")],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HanResUNet2p5D(**kwargs)


def test_bad_input_shapes_raise():
    net = HanResUNet2p5D(5, 3, (4, 8, 16))
    with pytest.raises(ValueError, match=r"\(N, 5, H, W\)"):
        net(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 5, 18, 16))


def test_build_network_unknown_name_is_model_error():
    with pytest.raises(ModelError, match="unknown network class 'NoSuchNet'"):
        build_network("NoSuchNet", {})
    with pytest.raises(ModelError, match="refused its arguments"):
        build_network("HanResUNet2p5D", {"no_such_argument": 1})
