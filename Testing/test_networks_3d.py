"""Shape, structure and argument tests of the 3D DI2IN generator and its discriminator."""

import pytest
import torch
from torch import nn

from LiverSegLib.errors import ModelError
from LiverSegLib.networks import DI2IN, NETWORKS, Discriminator, build_network

torch.set_num_threads(1)

SMALL = {"in_channels": 1, "out_channels": 2, "features": (4, 8, 16), "branch_levels": (2, 1, 0)}


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        (SMALL, (2, 1, 16, 16, 16)),
        ({**SMALL, "out_channels": 3, "branch_levels": (2, 0)}, (1, 1, 32, 16, 8)),
        ({"features": (2, 2, 2, 4, 4)}, (2, 1, 16, 16, 16)),
    ],
)
def test_training_mode_returns_final_and_branches(kwargs, shape):
    net = DI2IN(**kwargs).train()
    out = net(torch.randn(*shape))
    levels = kwargs.get("branch_levels", (4, 2, 0))
    assert isinstance(out, tuple) and len(out) == 1 + len(levels)
    expected = (shape[0], kwargs.get("out_channels", 2), *shape[2:])
    assert all(isinstance(t, torch.Tensor) and t.shape == expected for t in out)


def test_eval_mode_returns_one_tensor():
    net = DI2IN(**SMALL).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 16, 8, 16))
    assert isinstance(out, torch.Tensor) and not isinstance(out, tuple)
    assert out.shape == (1, 2, 16, 8, 16)


def test_eval_output_is_the_final_output_of_training_mode():
    net = DI2IN(**SMALL)
    x = torch.randn(2, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        final_eval = net(x)
        net.train()
        for m in net.modules():  # BN in eval statistics, the rest in training mode
            if isinstance(m, nn.BatchNorm3d):
                m.eval()
        final_train = net(x)[0]
    assert torch.allclose(final_eval, final_train)


def test_structure_convolutions_only_encoder_with_stride_two():
    net = DI2IN(**SMALL)
    assert not any(isinstance(m, (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d)) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    ones = [m for m in convs if m.kernel_size == (1, 1, 1)]
    assert len(ones) == len(SMALL["branch_levels"]) + 1  # branch heads + final 1x1
    assert all(m.kernel_size == (3, 3, 3) for m in convs if m.kernel_size != (1, 1, 1))
    encoder_convs = [m for m in net.encoders.modules() if isinstance(m, nn.Conv3d)]
    assert sum(m.stride == (2, 2, 2) for m in encoder_convs) == len(SMALL["features"]) - 1
    assert sum(m.stride == (2, 2, 2) for m in convs) == len(SMALL["features"]) - 1
    assert any(isinstance(m, nn.LeakyReLU) for m in net.modules())
    bns = sum(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    assert bns == len(convs) - len(ones) - 1  # every 3x3x3 conv but the fusion conv
    assert sum(isinstance(m, nn.LeakyReLU) for m in net.modules()) == bns + 1
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert ups and all(m.mode == "trilinear" for m in ups)
    assert net.size_multiple == 4 and net.spatial_dims == 3


def test_leaky_relu_slope_is_used():
    net = DI2IN(**SMALL, negative_slope=0.1)
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.1}


def test_gradient_reaches_first_encoder_layer_from_every_branch():
    net = DI2IN(**SMALL).train()
    x = torch.randn(2, 1, 16, 16, 16)
    first = next(m for m in net.encoders[0].modules() if isinstance(m, nn.Conv3d)).weight
    for index in range(1, 1 + len(SMALL["branch_levels"])):
        net.zero_grad()
        out = net(x)
        out[index].square().mean().backward()
        assert first.grad is not None and first.grad.abs().sum() > 0
        assert net.fuse[0].conv.weight.grad is None or net.fuse[0].conv.weight.grad.abs().sum() == 0


def test_input_shape_errors():
    net = DI2IN(**SMALL)
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        net(torch.randn(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        net(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 1, 16, 18, 16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": 1}, "out_channels"),
        ({"features": (8,)}, "features"),
        ({"features": (4, 8, 16)}, "branch_levels"),
        ({**SMALL, "branch_levels": (2, 2)}, "unique"),
        ({**SMALL, "branch_levels": (-1,)}, "branch_levels"),
        ({**SMALL, "branch_levels": ()}, "branch_levels"),
        ({**SMALL, "negative_slope": -0.1}, "negative_slope"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DI2IN(**kwargs)


def test_registered_and_built_by_name():
    assert NETWORKS["DI2IN"] is DI2IN and NETWORKS["Discriminator"] is Discriminator
    net = build_network("DI2IN", {"features": [4, 8], "branch_levels": [1, 0]})
    assert isinstance(net, DI2IN) and net.branch_levels == (1, 0)
    with pytest.raises(ModelError, match="refused its arguments"):
        build_network("DI2IN", {"features": [4, 8]})  # default branch level 4 is out of range
    assert isinstance(build_network("Discriminator", {"features": [4, 8]}), Discriminator)


@pytest.mark.parametrize("size", [(16, 16, 16), (32, 16, 24)])
def test_discriminator_gives_one_logit_per_sample(size):
    d = Discriminator(1, (4, 8, 8)).train()
    y = d(torch.rand(3, 1, *size))
    assert y.shape == (3,)
    y.sum().backward()
    assert d.classifier.weight.grad is not None


def test_discriminator_structure():
    d = Discriminator(2, (4, 8, 16))
    convs = [m for m in d.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 3 and all(m.stride == (2, 2, 2) and m.kernel_size == (3, 3, 3) for m in convs)
    assert convs[0].in_channels == 2
    assert sum(isinstance(m, nn.BatchNorm3d) for m in d.modules()) == 2  # none after the first conv
    assert sum(isinstance(m, nn.LeakyReLU) for m in d.modules()) == 3


def test_conditional_discriminator_needs_the_image():
    plain = Discriminator(1, (4, 8))
    cond = Discriminator(1, (4, 8), conditional=True)
    first = [next(m for m in d.modules() if isinstance(m, nn.Conv3d)) for d in (plain, cond)]
    assert first[0].in_channels == 1 and first[1].in_channels == 2
    label, image = torch.rand(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16)
    assert cond(label, image).shape == (2,)
    with pytest.raises(ValueError, match="conditional"):
        cond(label)
    with pytest.raises(ValueError, match="not conditional"):
        plain(label, image)
    with pytest.raises(ValueError, match="image of shape"):
        cond(label, image[:, :, :8])
    assert Discriminator(2, (4,), conditional=True, image_channels=1).convs[0].conv.in_channels == 3


def test_conditional_discriminator_looks_at_the_image():
    torch.manual_seed(0)
    cond = Discriminator(1, (4, 8), conditional=True).eval()
    label = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(cond(label, torch.zeros_like(label)), cond(label, torch.randn_like(label)))


def test_discriminator_bad_input_and_arguments():
    d = Discriminator(1, (4, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        d(torch.rand(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        d(torch.rand(1, 16, 16, 16))
    for kwargs, message in [
        ({"in_channels": 0}, "in_channels"),
        ({"features": ()}, "features"),
        ({"negative_slope": -1.0}, "negative_slope"),
        ({"conditional": True, "image_channels": 0}, "image_channels"),
    ]:
        with pytest.raises(ValueError, match=message):
            Discriminator(**kwargs)
