"""Prediction precision: the setting, how "auto" resolves, the CLI flag, and bf16 accuracy on the CPU."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from batch_helpers import save_tiny_model, tiny_model, write_stack

import napari_unet as nu
from napari_unet import cli, devices
from napari_unet.model.config import preset
from napari_unet.model.unet import UNet
from napari_unet.prediction.batch import BatchOptions
from napari_unet.prediction.overlap_tile import TilePredictor
from napari_unet.prediction.settings import PRECISION_CHOICES, PredictionSettings
from napari_unet.prediction.stack import PredictionEngine

needs_cpu_bf16 = pytest.mark.skipif(
    not devices.cpu_native_bf16(), reason="this CPU has no native bf16 (AVX-512-BF16 or AMX)"
)


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has (True) or lacks (False) native bf16."""

    def set_(value: bool) -> None:
        monkeypatch.setattr(devices, "cpu_native_bf16", lambda: value)

    return set_


# ------------------------------------------------------------------ settings
def test_precision_defaults_to_auto_and_is_validated() -> None:
    assert PredictionSettings().precision == "auto"
    assert PRECISION_CHOICES == ("auto", "float32", "bfloat16")
    for choice in PRECISION_CHOICES:
        assert PredictionSettings(precision=choice).precision == choice
    assert PredictionSettings(precision=" BFloat16 ").precision == "bfloat16"
    for bad in ("fp16", "float16", "", None, 16, True):
        with pytest.raises(ValueError, match="precision must be one of"):
            PredictionSettings(precision=bad)
    with pytest.raises(ValueError, match="amp=False"):
        PredictionSettings(precision="bfloat16", amp=False)
    # amp=False alone still works (it means float32), and precision travels everywhere
    assert PredictionSettings(amp=False).precision == "auto"
    assert PredictionSettings.build(precision="float32").to_dict()["precision"] == "float32"
    options = BatchOptions(precision="float32", instances=True)
    assert options.prediction().precision == "float32"
    with pytest.raises(TypeError, match="unknown prediction option"):
        PredictionSettings.build(precison="float32")


# ------------------------------------------------------------- CPU detection
def test_cpuinfo_flags_are_parsed() -> None:
    text = "processor\t: 0\nvendor_id\t: X\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n"
    assert "avx512_bf16" in devices._cpuinfo_flags(text)
    assert devices._cpuinfo_flags("processor : 0\nFeatures : fp asimd bf16\n") == set()
    assert isinstance(devices.cpu_native_bf16(), bool)
    assert devices.cpu_native_bf16() is devices.cpu_native_bf16()  # cached: cheap to ask


def test_auto_resolution_follows_the_cpu(native) -> None:
    cpu = torch.device("cpu")
    native(True)
    assert devices.prediction_dtype(cpu, "auto") == torch.bfloat16
    assert devices.prediction_dtype(cpu, "float32") is None
    native(False)
    assert devices.prediction_dtype(cpu, "auto") is None
    with pytest.warns(RuntimeWarning, match="emulated"):
        assert devices.prediction_dtype(cpu, "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="MPS"):
        devices.prediction_dtype(torch.device("mps"), "bfloat16")
    assert devices.prediction_dtype(torch.device("mps"), "auto") is None
    with pytest.raises(ValueError, match="precision"):
        devices.prediction_dtype(cpu, "half")
    assert [devices.dtype_name(d) for d in (None, torch.bfloat16, torch.float16)] == [
        "float32", "bfloat16", "float16"]


def test_auto_on_cuda_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    for has_bf16, expected in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(devices, "native_bf16", lambda device, v=has_bf16: v)
        assert devices.prediction_dtype(cuda, "auto") == devices.autocast_dtype(cuda) == expected
        assert devices.prediction_dtype(cuda, "float32") is None


def test_predictor_and_engine_resolve_precision(native) -> None:
    net = UNet(preset("tiny"))
    native(True)
    assert TilePredictor(net, device="cpu", precision="auto").precision_used == "bfloat16"
    assert TilePredictor(net, device="cpu", precision="auto", amp=False).precision_used == "float32"
    # no precision: amp alone decides, as before (mixed precision on CUDA only)
    assert TilePredictor(net, device="cpu").precision_used == "float32"
    assert TilePredictor(net, device="cpu").amp is False
    with pytest.raises(ValueError, match="amp=False"):
        TilePredictor(net, device="cpu", precision="bfloat16", amp=False)
    model = tiny_model()
    with PredictionEngine(model, PredictionSettings(device="cpu")) as engine:
        assert engine.predictor.precision_used == "bfloat16"
    with PredictionEngine(model, PredictionSettings(device="cpu", amp=False)) as engine:
        assert engine.predictor.precision_used == "float32"
    native(False)
    with PredictionEngine(model, PredictionSettings(device="cpu")) as engine:
        assert engine.predictor.precision_used == "float32" and engine.predictor.compute_dtype is None
    with pytest.warns(RuntimeWarning, match="emulated"):
        p = TilePredictor(net, device="cpu", precision="bfloat16")
    assert p.precision_used == "bfloat16"


# ----------------------------------------------------------------------- CLI
def test_cli_precision_flag_reaches_the_settings(capsys) -> None:
    parser = cli.build_parser()
    base = ["segment", "a.tif", "-m", "m.pt", "-o", "out"]
    assert cli._options(parser.parse_args(base)).precision == "auto"
    for choice in PRECISION_CHOICES:
        assert cli._options(parser.parse_args([*base, "--precision", choice])).precision == choice
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*base, "--precision", "fp16"])
    assert exc.value.code == 2
    capsys.readouterr()


def test_cli_records_the_precision_used(tmp_path, capsys) -> None:
    write_stack(tmp_path / "a.tif", (1, 40, 48))
    model = save_tiny_model(tmp_path / "m.pt")
    code = cli.main(["segment", "-m", str(model), str(tmp_path / "a.tif"), "-o", str(tmp_path / "out"),
                     "--precision", "float32", "--device", "cpu"])
    _out, err = capsys.readouterr()
    assert code == 0, err
    settings = json.loads((tmp_path / "out" / "a_provenance.json").read_text())["settings"]
    assert settings["precision"] == "float32" and settings["precision_used"] == "float32"


# ------------------------------------------------------------- bf16 accuracy
def _with_batch_stats(config, seed: int) -> UNet:
    """A random net whose batch-norm statistics are not the identity (as in test_predict)."""
    torch.manual_seed(seed)
    model = UNet(config).train()
    size = model.geometry.min_input_size + 4 * model.geometry.divisor
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, size, size) * 2.0 + 0.5)
    return model.eval()


def _whole_pass(model: UNet, image: np.ndarray, dtype: torch.dtype | None) -> np.ndarray:
    """One pass over the whole mirror-padded image (the reference tiling must reproduce)."""
    g, (Y, X) = model.geometry, image.shape
    m = g.margin
    iy, ix = g.input_size_for_output(Y), g.input_size_for_output(X)
    padded = np.pad(image, ((m, iy - Y - m), (m, ix - X - m)), mode="reflect")
    with torch.inference_mode(), devices.autocast_to(torch.device("cpu"), dtype):
        logits = model(torch.from_numpy(np.ascontiguousarray(padded))[None, None])
    return torch.softmax(logits.float(), dim=1)[0, :, :Y, :X].numpy()


#: bf16 tiling vs a bf16 whole-image pass: identical arithmetic per pixel, so equal up to
#: accumulation order (measured: <= 1.2e-7); a rare flipped bf16 rounding may move a
#: probability by ~1e-2, but only at a few pixels, which the mean bound checks.
BF16_TILE_MAX, BF16_TILE_MEAN = 2e-2, 1e-5
#: bf16 vs float32: a bf16 mantissa has 8 bits (relative rounding ~4e-3 per layer).
BF16_VS_F32_MAX, BF16_VS_F32_MEAN = 0.05, 5e-3


@needs_cpu_bf16
@pytest.mark.parametrize(
    ("depth", "shape", "tile", "batch"),
    [(2, (101, 77), 12, 3), (2, (211, 157), 100, 3), (2, (13, 30), 8, 3), (3, (61, 45), 12, 3),
     (3, (70, 9), 20, 1)],
)
def test_bf16_tiling_equals_whole_bf16_pass(depth: int, shape, tile: int, batch: int) -> None:
    model = _with_batch_stats(preset("tiny", depth=depth, base_channels=8 if depth == 2 else 4), depth)
    image = np.random.default_rng(tile).normal(size=shape).astype(np.float32)
    predictor = TilePredictor(model, tile_size=tile, batch_size=batch, device="cpu", precision="bfloat16")
    got = predictor.predict_slice(image)
    assert got.dtype == np.float32 and predictor.precision_used == "bfloat16"
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)  # softmax stays float32
    diff = np.abs(got - _whole_pass(model, image, torch.bfloat16))
    assert diff.max() < BF16_TILE_MAX and diff.mean() < BF16_TILE_MEAN, (diff.max(), diff.mean())
    f32 = np.abs(got - _whole_pass(model, image, None))
    assert f32.max() < BF16_VS_F32_MAX and f32.mean() < BF16_VS_F32_MEAN, (f32.max(), f32.mean())


@needs_cpu_bf16
def test_bf16_prediction_is_close_to_float32() -> None:
    model = tiny_model()
    image = nu.synthetic_em_stack((2, 64, 72), seed=2).image
    results = {p: nu.predict(model, image, tta=True, precision=p) for p in ("float32", "bfloat16")}
    a, b = results["float32"], results["bfloat16"]
    diff = np.abs(a.probabilities - b.probabilities)
    assert diff.max() < BF16_VS_F32_MAX and diff.mean() < BF16_VS_F32_MEAN, (diff.max(), diff.mean())
    assert np.mean(a.semantic == b.semantic) > 0.99
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        auto = nu.predict(model, image, tta=True)
    assert not [w for w in heard if "emulated" in str(w.message)]  # native bf16: no warning
    np.testing.assert_array_equal(auto.probabilities, b.probabilities)  # "auto" chose bf16 here
