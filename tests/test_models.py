"""The paper's networks: torchvision compatibility, layer counts of Table 1, shortcut options, variants, init."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import resnet
from resnet.models import ShortcutA
from resnet.registry import IMAGENET_LAYERS

DEPTHS = (18, 34, 50, 101, 152)


def weighted_layers(model: nn.Module) -> int:
    """Layers as the paper counts them: convs and fc on the main path (projection shortcuts excluded)."""
    count = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and ".downsample." not in name:
            count += 1
    return count


@pytest.mark.parametrize("depth", DEPTHS)
def test_state_dict_keys_and_outputs_equal_torchvision(depth: int) -> None:
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")().eval()
    ours = resnet.create_model(f"resnet{depth}").eval()
    tv_sd, our_sd = tv.state_dict(), ours.state_dict()
    assert list(our_sd) == list(tv_sd)
    assert all(our_sd[k].shape == tv_sd[k].shape for k in tv_sd)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters())
    ours.load_state_dict(tv_sd)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


@pytest.mark.parametrize("name", [f"resnet{d}" for d in DEPTHS] + [f"plain{d}" for d in DEPTHS])
def test_imagenet_nets_have_the_paper_layer_count(name: str) -> None:
    with torch.device("meta"):
        model = resnet.create_model(name)
    assert weighted_layers(model) == int(name.removeprefix("resnet").removeprefix("plain"))


@pytest.mark.parametrize("depth", [8, 20, 32, 44, 56, 110])
def test_cifar_nets_are_6n_plus_2_layers_on_16_32_64_filters(depth: int) -> None:
    model = resnet.create_model(f"cifar_resnet{depth}")
    assert weighted_layers(model) == depth
    widths = sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)})
    assert widths == [16, 32, 64]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_default_is_option_a_parameter_free_so_plain_and_residual_match_in_size() -> None:
    res, plain = resnet.create_model("cifar_resnet20"), resnet.create_model("cifar_plain20")
    assert any(isinstance(m, ShortcutA) for m in res.modules())
    assert sum(p.numel() for p in res.parameters()) == sum(p.numel() for p in plain.parameters())


def test_plain_nets_have_no_shortcuts_and_differ_from_residual_in_output() -> None:
    torch.manual_seed(0)
    plain = resnet.create_model("plain18").eval()
    assert all(getattr(m, "downsample", None) is None for m in plain.modules())
    res = resnet.create_model("resnet18", shortcut="A").eval()
    res.load_state_dict(plain.state_dict())  # option A adds no parameters: same weights fit both
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(res(x), plain(x))


def test_shortcut_options_a_b_c_order_parameter_counts() -> None:
    with torch.device("meta"):
        counts = {s: sum(p.numel() for p in resnet.create_model("resnet34", shortcut=s).parameters()) for s in "ABC"}
    assert counts["A"] < counts["B"] < counts["C"]
    with torch.device("meta"):
        model_c = resnet.create_model("resnet34", shortcut="C")
    blocks = [m for m in model_c.modules() if isinstance(m, resnet.BasicBlock)]
    assert all(isinstance(b.downsample, nn.Sequential) for b in blocks)


def test_option_a_pads_channels_with_zeros_and_subsamples() -> None:
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    y = ShortcutA(2, 5, stride=2)(x)
    assert y.shape == (1, 5, 2, 2)
    assert torch.equal(y[:, :2], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 2:]) == 0


def test_v1_puts_the_stride_in_the_first_1x1_and_v15_in_the_3x3() -> None:
    v1 = resnet.create_model("resnet50", variant="v1")
    v15 = resnet.create_model("resnet50", variant="v1.5")
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    x = torch.randn(1, 3, 64, 64)
    assert v1.eval()(x).shape == v15.eval()(x).shape == (1, 1000)


def test_he_fan_out_init_and_zero_init_residual() -> None:
    torch.manual_seed(0)
    model = resnet.create_model("resnet50", zero_init_residual=True)
    conv = model.layer3[0].conv2
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in model.modules() if isinstance(b, resnet.Bottleneck))
    cifar = resnet.create_model("cifar_resnet20", zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in cifar.modules() if isinstance(b, resnet.BasicBlock))


def test_bn_after_every_conv() -> None:
    model = resnet.create_model("resnet50", shortcut="C")
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert convs == bns


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet19", {}),
        ("cifar_resnet21", {}),
        ("vgg16", {}),
        ("resnet50", {"shortcut": "D"}),
        ("resnet50", {"variant": "v2"}),
    ],
)
def test_bad_model_requests_raise_usage_error(name: str, kwargs: dict) -> None:
    with pytest.raises(resnet.UsageError):
        resnet.create_model(name, **kwargs)


def test_list_models_names_every_family_and_each_builds() -> None:
    names = resnet.list_models()
    for expected in ["resnet18", "resnet152", "plain34", "cifar_resnet20", "cifar_resnet1202", "cifar_plain56"]:
        assert expected in names
    assert len(IMAGENET_LAYERS) == 5
    with torch.device("meta"):
        for name in names:
            resnet.create_model(name)


def test_any_6n_plus_2_depth_and_num_classes() -> None:
    model = resnet.create_model("cifar_resnet26", num_classes=7)
    assert weighted_layers(model) == 26
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
