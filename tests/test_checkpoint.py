import os
import pickle

import numpy as np
import pytest
import torch

from napari_unet.annotations import AnnotationSettings
from napari_unet.checkpoint import (
    FORMAT,
    TrainedModel,
    load_checkpoint,
    save_checkpoint,
    transfer_weights,
)
from napari_unet.config import UNetConfig, preset
from napari_unet.errors import CheckpointError
from napari_unet.model import UNet
from napari_unet.normalization import Normalization


def _trained(**cfg) -> TrainedModel:
    torch.manual_seed(0)
    return TrainedModel(
        model=UNet(preset("tiny", **cfg)).eval(),
        normalization=Normalization(low=3.0, high=200.0),
        annotation=AnnotationSettings(w0=7.0),
        class_names=["background", "cell"],
        training={"iteration": 12, "settings": {"lr": 1e-3, "sizes": (1, 2)}},
    )


def test_roundtrip_is_exact_and_self_describing(tmp_path):
    tm = _trained()
    path = save_checkpoint(tm, tmp_path / "m.pt")
    back = load_checkpoint(path)
    assert back.config == tm.config
    assert back.normalization == tm.normalization
    assert back.annotation == tm.annotation
    assert back.class_names == ["background", "cell"]
    assert back.training["iteration"] == 12 and back.training["settings"]["sizes"] == [1, 2]
    for k, v in tm.model.state_dict().items():
        assert torch.equal(v, back.model.state_dict()[k])
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == 1 and "package_version" in raw
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary file left


def test_half_precision_checkpoint_is_smaller(tmp_path):
    tm = _trained()
    full = save_checkpoint(tm, tmp_path / "full.pt")
    half = save_checkpoint(tm, tmp_path / "half.pt", half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    back = load_checkpoint(half)
    w = back.model.head.weight
    assert w.dtype == torch.float32
    assert torch.allclose(w, tm.model.head.weight, atol=1e-3)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "format_version": 1, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    # a plain pickle file too
    with open(tmp_path / "evil2.pt", "wb") as fh:
        pickle.dump(_Evil(), fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil2.pt")
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a napari-unet"):
        load_checkpoint(other)
    path = save_checkpoint(_trained(), tmp_path / "m.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)


def test_future_version_and_mismatched_config(tmp_path):
    path = save_checkpoint(_trained(), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")
    raw = torch.load(path, weights_only=True)
    raw["model_config"]["base_channels"] = 16
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "mismatch.pt")
    raw = torch.load(path, weights_only=True)
    raw["model_config"]["colour"] = "red"
    torch.save(raw, tmp_path / "badcfg.pt")
    with pytest.raises(CheckpointError, match="invalid configuration"):
        load_checkpoint(tmp_path / "badcfg.pt")


def test_transfer_weights_keeps_encoder_and_resets_head():
    src = _trained().model
    dst = UNet(src.config.with_classes(4))
    skipped = transfer_weights(src, dst)
    assert skipped == ["head.weight", "head.bias"]
    assert torch.equal(dst.encoder[0][0].weight, src.encoder[0][0].weight)
    with pytest.raises(CheckpointError, match="input channel"):
        transfer_weights(src, UNet(UNetConfig(in_channels=2, depth=2, base_channels=8)))


def test_trained_model_predict_shortcut(tmp_path):
    tm = _trained()
    img = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    pred = tm.predict(img, tile_size=16)
    assert pred.semantic.shape == img.shape
