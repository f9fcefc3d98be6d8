import pytest
import torch

from napari_unet.model.config import PRESETS, UNetConfig, preset
from napari_unet.model.unet import Geometry, UNet


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_valid_geometry_matches_network(depth):
    model = UNet(UNetConfig(depth=depth, base_channels=2, norm="none", dropout=0.0)).eval()
    g = model.geometry
    for n in (g.min_input_size, g.min_input_size + g.divisor, g.input_size_for_output(37)):
        with torch.no_grad():
            y = model(torch.zeros(1, 1, n, n + g.divisor))
        assert y.shape[-2:] == (g.output_size(n), g.output_size(n + g.divisor))
        assert (n - g.output_size(n)) // 2 == g.margin
    # every size between legal ones is illegal and the error names the neighbours
    with pytest.raises(ValueError, match=str(g.min_input_size)):
        g.output_size(g.min_input_size + 1)


def test_paper_geometry_and_size():
    g = Geometry(4, "valid")
    assert g.output_size(572) == 388  # the paper's Fig. 1
    assert g.margin == 92
    assert UNet(preset("paper")).n_parameters() == pytest.approx(31.0e6, rel=0.01)


def test_input_size_for_output_is_smallest_legal():
    g = Geometry(3, "valid")
    for o in range(1, 80):
        n = g.input_size_for_output(o)
        assert g.is_valid_input_size(n) and g.output_size(n) >= o
        smaller = n - g.divisor
        assert not g.is_valid_input_size(smaller) or g.output_size(smaller) < o


def test_same_padding_keeps_size():
    model = UNet(UNetConfig(depth=3, base_channels=4, padding="same")).eval()
    assert model.margin == 0
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 48, 64)).shape == (2, 2, 48, 64)
    with pytest.raises(ValueError, match="divisible|legal"):
        model.geometry.output_size(50)


@pytest.mark.parametrize("norm", ["none", "batch", "group"])
def test_forward_backward_all_norms(norm):
    cfg = UNetConfig(depth=2, base_channels=8, norm=norm, n_classes=3)
    model = UNet(cfg)
    n = model.geometry.input_size_for_output(12)
    x = torch.randn(2, 1, n, n, requires_grad=True)
    y = model(x)
    assert y.shape[1] == 3
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_validation_and_roundtrip():
    cfg = UNetConfig(depth=3, base_channels=8)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"depth": 0}, {"n_classes": 1}, {"padding": "full"}, {"norm": "layer"}, {"dropout": 1.0}):
        with pytest.raises(ValueError):
            UNetConfig(**bad)
    with pytest.raises(ValueError, match="unknown model config"):
        UNetConfig.from_dict({**cfg.to_dict(), "width": 3})
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    assert set(PRESETS) >= {"tiny", "default", "paper"}


def test_default_model_is_small_but_paper_depth():
    model = UNet()
    assert model.config.depth == 4 and model.config.padding == "valid"
    assert 1e6 < model.n_parameters() < 3e6
