import os
import pickle
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.errors import CheckpointError
from napari_unet.model.checkpoint import (
    FORMAT,
    TrainedModel,
    load_checkpoint,
    save_checkpoint,
    transfer_weights,
)
from napari_unet.model.config import PRESETS, UNetConfig, preset
from napari_unet.model.normalization import Normalization
from napari_unet.model.unet import UNet
from napari_unet.training.annotations import AnnotationSettings
from napari_unet.training.augment import AugmentConfig
from napari_unet.training.trainer import TrainingConfig


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


# --- malformed files: one CheckpointError, one line naming the file, before any network ----


def _raw(tmp_path) -> dict:
    """The payload of a valid tiny checkpoint, to be damaged by a test."""
    tm = _trained()
    tm.optimizer_state = torch.optim.AdamW(tm.model.parameters()).state_dict()
    path = save_checkpoint(tm, tmp_path / "valid.pt")
    return torch.load(path, weights_only=True)


def _set(raw: dict, dotted: str, value) -> None:
    *parents, last = dotted.split("/")
    for key in parents:
        raw = raw[key]
    if value is _DELETE:
        del raw[last]
    else:
        raw[last] = value


_DELETE = object()
_HEAD = "state_dict/head.weight"
_BROKEN = {
    "no_state_dict": ("state_dict", _DELETE, "state_dict"),
    "state_dict_list": ("state_dict", [1, 2], "not a dict"),
    "training_list": ("training", [1, 2], "training record"),
    "no_model_config": ("model_config", _DELETE, "invalid configuration"),
    "model_config_list": ("model_config", [16], "invalid configuration"),
    "depth_text": ("model_config/depth", "4", "invalid configuration"),
    "depth_float": ("model_config/depth", 2.0, "invalid configuration"),
    "in_channels_bool": ("model_config/in_channels", True, "invalid configuration"),
    "weight_is_a_list": (_HEAD, [[0.0]], "not a tensor"),
    "int_weight": (_HEAD, torch.zeros(2, 8, 1, 1, dtype=torch.int32), "not floating point"),
    "bool_weight": (_HEAD, torch.zeros(2, 8, 1, 1, dtype=torch.bool), "not floating point"),
    "complex_weight": (_HEAD, torch.zeros(2, 8, 1, 1, dtype=torch.complex64), "not floating point"),
    "nan_weight": (_HEAD, torch.full((2, 8, 1, 1), float("nan")), "NaN or infinite"),
    "inf_weight": (_HEAD, torch.full((2, 8, 1, 1), float("inf")), "NaN or infinite"),
    "wrong_shape": (_HEAD, torch.zeros(2, 8, 3, 3), "do not fit"),
    "missing_weight": (_HEAD, _DELETE, "do not fit"),
    "extra_weight": ("state_dict/extra.weight", torch.zeros(1), "do not fit"),
    "float_counter": ("state_dict/encoder.0.1.num_batches_tracked", torch.tensor(1.5), "integer count"),
    "negative_variance": ("state_dict/encoder.0.1.running_var", -torch.ones(8), "negative variances"),
    "sparse_weight": ("state_dict/head.bias", torch.zeros(2).to_sparse(), "plain dense tensor"),
    "normalization_list": ("normalization", [1.0], "normalization"),
    "normalization_unknown_key": ("normalization/colour", "red", "unknown keys"),
    "normalization_nan": ("normalization/low", float("nan"), "finite number"),
    "normalization_reversed": ("normalization/high", 1.0, "high > low"),
    "normalization_bad_method": ("normalization/method", "magic", "normalisation method"),
    "annotation_list": ("annotation", ["dense"], "annotation"),
    "annotation_unknown_key": ("annotation/brush", 3, "unknown keys"),
    "annotation_w0_text": ("annotation/w0", "10", "finite number"),
    "annotation_bad_mode": ("annotation/mode", "painted", "annotation mode"),
    "class_names_text": ("class_names", "background,cell", "list of text"),
    "class_names_ints": ("class_names", [0, 1], "list of text"),
    "class_names_too_many": ("class_names", ["a", "b", "c"], "names 3 classes"),
    "iteration_text": ("training/iteration", "12", "integer >= 0"),
    "settings_list": ("training/settings", [1], "training settings"),
    "optimizer_list": ("optimizer", [1], "optimizer"),
    "optimizer_short": ("optimizer/param_groups", [{"params": [0, 1]}], "optimizer"),
    "format_version_bool": ("format_version", True, "format version"),
}


@pytest.mark.parametrize("case", sorted(_BROKEN))
def test_malformed_payloads_are_one_checkpoint_error(tmp_path, case, monkeypatch):
    raw = _raw(tmp_path)
    where, value, message = _BROKEN[case]
    _set(raw, where, value)
    path = tmp_path / f"{case}.pt"
    torch.save(raw, path)

    def no_network(*args, **kwargs):
        raise AssertionError("a network was built for a file that fails validation")

    monkeypatch.setattr("napari_unet.model.checkpoint.UNet", no_network)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert path.name in text and "\n" not in text


def test_optimizer_state_must_fit_the_network(tmp_path):
    raw = _raw(tmp_path)
    raw["optimizer"]["state"] = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3)}}
    torch.save(raw, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        load_checkpoint(tmp_path / "opt.pt")


def test_weights_of_any_float_precision_load_as_float32(tmp_path):
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        raw = _raw(tmp_path)
        raw["state_dict"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in raw["state_dict"].items()}
        raw["state_dict"]["encoder.0.1.num_batches_tracked"] = torch.tensor(3, dtype=torch.int32)
        torch.save(raw, tmp_path / "p.pt")
        back = load_checkpoint(tmp_path / "p.pt")
        assert all(v.dtype in (torch.float32, torch.int64) for v in back.model.state_dict().values())
        assert back.model.encoder[0][1].num_batches_tracked.dtype == torch.int64


@pytest.mark.parametrize(
    "overrides",
    [{"depth": 4, "base_channels": 256}, {"depth": 6, "base_channels": 4096}, {"in_channels": 10**7},
     {"n_classes": 10**9}],
)
def test_absurd_networks_are_refused_by_arithmetic(tmp_path, monkeypatch, overrides):
    raw = _raw(tmp_path)
    raw["model_config"].update(overrides)
    torch.save(raw, tmp_path / "huge.pt")

    def no_network(*args, **kwargs):
        raise AssertionError("built a network for an absurd config")

    monkeypatch.setattr("napari_unet.model.checkpoint.UNet", no_network)
    monkeypatch.setattr("napari_unet.model.checkpoint._ShapeOnlyUNet", no_network)
    with pytest.raises(CheckpointError, match="parameters"):
        load_checkpoint(tmp_path / "huge.pt")


def test_a_large_but_legal_config_is_compared_without_allocating(tmp_path, monkeypatch):
    raw = _raw(tmp_path)
    raw["model_config"]["base_channels"] = 128  # 124 M parameters: under the cap, not in the file
    torch.save(raw, tmp_path / "big.pt")

    def no_network(*args, **kwargs):
        raise AssertionError("allocated the real network")

    monkeypatch.setattr("napari_unet.model.checkpoint.UNet", no_network)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "big.pt")


def test_parameter_count_is_exact():
    from napari_unet.model.checkpoint import parameter_count

    configs = [*PRESETS.values(), UNetConfig(in_channels=3, n_classes=5, depth=1, base_channels=5, norm="none"),
               UNetConfig(depth=5, base_channels=8, norm="group", groups=4, padding="same")]
    for cfg in configs:
        assert parameter_count(cfg) == UNet(cfg).n_parameters()


class _Stop(Exception):
    pass


def test_files_that_are_not_checkpoints_never_reach_torch_load(tmp_path, monkeypatch):
    valid = save_checkpoint(_trained(), tmp_path / "valid.pt").read_bytes()
    zipped = tmp_path / "other.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("notes.txt", "hello")
    files = {
        "text.pt": b"some text\nanother line\n",  # was IndexError: pop from empty list
        "hello.pt": b"hello",  # was KeyError: 101
        "empty.pt": b"",
        "pickle.pt": pickle.dumps({"format": FORMAT}, protocol=2),
        "other_zip.pt": zipped.read_bytes(),
        "truncated.pt": valid[: len(valid) // 2],
    }
    # a flipped byte inside a weight: the archive's checksums catch it
    flipped = bytearray(valid)
    flipped[len(valid) // 2] ^= 0xFF
    files["flipped.pt"] = bytes(flipped)
    legacy = tmp_path / "legacy.pt"
    torch.save({"format": FORMAT}, legacy, _use_new_zipfile_serialization=False)
    files["legacy.pt"] = legacy.read_bytes()

    def refuse(*args, **kwargs):
        raise _Stop("torch.load was reached")

    monkeypatch.setattr(torch, "load", refuse)
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        text = str(info.value)
        assert name in text and "\n" not in text, text
        assert "torch.load was reached" not in text


def test_unexpected_exceptions_from_torch_load_become_checkpoint_errors(tmp_path, monkeypatch):
    path = save_checkpoint(_trained(), tmp_path / "m.pt")
    for exc in (KeyError(101), IndexError("pop from empty list"), TypeError(), MemoryError(), _Stop("odd")):
        def fail(*args, _exc=exc, **kwargs):
            raise _exc

        monkeypatch.setattr(torch, "load", fail)
        with pytest.raises(CheckpointError, match="m.pt is not a readable checkpoint") as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)


def test_widget_cache_shows_every_load_failure(tmp_path, monkeypatch):
    pytest.importorskip("magicgui")
    from napari_unet._widgets._common import CheckpointCache

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"hello")
    message = CheckpointCache("segments").load(bad)
    assert isinstance(message, str) and "bad.pt is not a readable checkpoint" in message

    def fail(path):
        raise MemoryError()  # an exception without a message

    monkeypatch.setattr("napari_unet.model.checkpoint.load_checkpoint", fail)
    good = save_checkpoint(_trained(), tmp_path / "good.pt")
    assert CheckpointCache("segments").load(good) == "Cannot use this checkpoint: MemoryError"


# --- the training recipe, typed ----------------------------------------------------------------


def _recipe() -> TrainingConfig:
    return TrainingConfig(
        iterations=40, batch_size=3, patch_size=32, learning_rate=5e-4, warmup=3, schedule="constant",
        loss="dice_ce", annotation=AnnotationSettings(mode="scribbles", w0=4.0, balance=False),
        augment=AugmentConfig(elastic=False, gamma=(0.9, 1.1), noise_std=(0.0, 0.01), p_intensity=0.5),
        normalization=Normalization(method="fixed", low=1.0, high=9.0), val_every=7, keep="best", seed=11,
    )


def test_training_config_roundtrips_through_a_checkpoint(tmp_path):
    cfg = _recipe()
    assert TrainingConfig.from_dict(cfg.to_dict()) == cfg
    tm = _trained()
    tm.training = {"iteration": 3, "settings": replace(cfg, device="cpu", amp=False).to_dict(recipe=True)}
    back = load_checkpoint(save_checkpoint(tm, tmp_path / "m.pt"))
    assert back.training_config() == cfg  # hardware settings are not part of the recipe
    tm.training = {"settings": replace(cfg, augment=None).to_dict(recipe=True)}
    assert load_checkpoint(save_checkpoint(tm, tmp_path / "m.pt")).training_config().augment is None
    tm.training = {}
    assert load_checkpoint(save_checkpoint(tm, tmp_path / "m.pt")).training_config() is None


def test_training_config_from_an_older_checkpoint(tmp_path):
    # older versions stored the recipe without annotation/normalization, with hardware fields
    old = _recipe().to_dict()
    del old["annotation"], old["normalization"]
    old["device"] = "cuda"
    tm = _trained()
    tm.training = {"settings": old}
    cfg = load_checkpoint(save_checkpoint(tm, tmp_path / "m.pt")).training_config()
    assert cfg.annotation == tm.annotation and cfg.device == "auto"
    assert cfg.normalization == Normalization(low=None, high=None)  # percentiles are re-measured
    assert cfg.augment == _recipe().augment and cfg.iterations == 40
    # unknown keys: ignored with a warning; invalid values: a CheckpointError
    with pytest.warns(UserWarning, match="sizes"):
        assert load_checkpoint(save_checkpoint(_trained(), tmp_path / "m.pt")).training_config() is not None
    tm.training = {"settings": {**old, "iterations": "many"}}
    with pytest.raises(CheckpointError, match="iterations"):
        load_checkpoint(save_checkpoint(tm, tmp_path / "m.pt")).training_config()
    tm.training = {"settings": {**old, "augment": {"elastic": "yes"}}}
    with pytest.raises(CheckpointError, match="augment"):
        load_checkpoint(save_checkpoint(tm, tmp_path / "m.pt")).training_config()


def test_shipped_model_still_loads_with_its_recipe():
    from napari_unet.model.pretrained import default_checkpoint

    path = default_checkpoint()
    if path is None:
        pytest.skip("no built-in model in this install")
    model = load_checkpoint(path)
    cfg = model.training_config()
    assert cfg is not None and cfg.iterations == model.training["settings"]["iterations"]
    # it was trained before the free rotation and zoom, and its recipe says so
    assert cfg.augment == AugmentConfig(p_affine=0.0) and cfg.annotation == model.annotation


def test_optimizer_state_is_restored_for_resuming(tmp_path):
    tm = _trained()
    opt = torch.optim.AdamW(tm.model.parameters())
    tm.model(torch.zeros(1, 1, 44, 44)).sum().backward()
    opt.step()
    tm.optimizer_state = opt.state_dict()
    back = load_checkpoint(save_checkpoint(tm, tmp_path / "m.pt"))
    fresh = torch.optim.AdamW(back.model.parameters())
    fresh.load_state_dict(back.optimizer_state)
    # every parameter gets its Adam moments back (text keys would be silently dropped)
    assert set(fresh.state) == set(back.model.parameters())
    head = back.model.head.weight
    assert torch.equal(fresh.state[head]["exp_avg"], opt.state[tm.model.head.weight]["exp_avg"])
