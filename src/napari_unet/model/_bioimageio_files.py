"""The contents of an exported bioimage.io package other than its description.

Which model to export, the test tile and its expected output (computed with
the spec's own preprocessing semantics, so that ``bioimageio.core`` checks this
network against an independent implementation), the cover image, the
documentation and the napari-unet metadata stored in the rdf's ``config``.
Nothing here imports bioimageio.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    TrainedModel,
    _package_version,
    _plain,
    load_checkpoint,
)

if TYPE_CHECKING:
    from .bioimageio_arch import UNetProbabilities

#: Where the napari-unet metadata lives in the rdf: ``config: {napari_unet: {...}}``.
CONFIG_KEY = "napari_unet"
#: Output pixels per side of the test tile beyond the network's context.
_TEST_OUTPUT = 64
_EPS = 1e-6  # scale_range's epsilon, as in bioimageio.SCALE_RANGE_EPS


def resolve_model(model: TrainedModel | str | os.PathLike) -> tuple[TrainedModel, str | None, str | None, bool]:
    """``(trained, name, model card text or None, shipped)`` for a model, a path or ``"default"``.

    A checkpoint's model card is the Markdown file of the same name beside it
    (``model.pt`` -> ``model.md``), as for the shipped model.
    """
    if isinstance(model, TrainedModel):
        return model, None, None, False
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a TrainedModel, a checkpoint path or 'default', not {type(model).__name__}")
    shipped = os.fspath(model) == "default" and not Path("default").exists()
    if shipped:
        from .pretrained import default_checkpoint

        path = default_checkpoint()
        if path is None:
            raise ValueError("no pretrained default model ships with this napari-unet version")
    else:
        path = Path(model).expanduser()
    trained = load_checkpoint(path)
    card_path = path.with_suffix(".md")
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    return trained, path.stem, card, shipped


def napari_unet_config(trained: TrainedModel) -> dict[str, Any]:
    """What a checkpoint stores besides weights and optimizer, as plain YAML values."""
    return _yaml_plain({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "model_config": trained.config.to_dict(),
        "normalization": trained.normalization.to_dict(),
        "annotation": dict(trained.annotation.__dict__),
        "class_names": list(trained.class_names),
        "training": trained.training,
        "weights": "pytorch_state_dict",
    })


def _yaml_plain(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, dict):
        return {k: _yaml_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # YAML/JSON consumers disagree on NaN and infinities
    return value


def preprocess(tile: np.ndarray, trained: TrainedModel) -> np.ndarray:
    """The spec preprocessing the package declares, in numpy (float32), on a (1, C, Y, X) tile."""
    norm = trained.normalization
    x = tile.astype(np.float32)
    if norm.method == "fixed":
        gain = 1.0 / (float(norm.high) - float(norm.low))  # type: ignore[arg-type]
        return x * np.float32(gain) + np.float32(-float(norm.low) * gain)  # type: ignore[arg-type]
    if norm.method == "percentile":
        low, high = np.percentile(x, [norm.p_low, norm.p_high])
        return (x - np.float32(low)) / np.float32(high - low + _EPS)
    return x


def make_test_tensors(
    trained: TrainedModel, module: UNetProbabilities, sample: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(input, expected output)``: a legal-size (1, C, S, S) float32 tile and the probabilities."""
    geometry = trained.model.geometry
    size = geometry.legal_input_size(max(geometry.min_input_size, 2 * geometry.margin + _TEST_OUTPUT), "up")
    if sample is None:
        from ..synthetic import synthetic_em_stack

        image = synthetic_em_stack((int(size), int(size)), seed=0).image
    else:
        image = np.asarray(sample)
        if image.ndim != 2:
            raise ValueError(f"the sample image must be 2D (Y, X), got shape {image.shape}")
        fits = geometry.legal_input_size(min(image.shape), "down")
        if fits is None:
            raise ValueError(
                f"the sample image {image.shape} is smaller than the network's smallest input "
                f"({geometry.min_input_size} px)"
            )
        size = min(int(size), fits)
    y0, x0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    crop = np.asarray(image[y0:y0 + size, x0:x0 + size], dtype=np.float32)
    tile = np.repeat(crop[None, None], trained.config.in_channels, axis=1)
    with torch.no_grad():
        out = module(torch.from_numpy(preprocess(tile, trained))).numpy()
    return np.ascontiguousarray(tile), np.ascontiguousarray(out, dtype=np.float32)


def cover_png(tile: np.ndarray, probs: np.ndarray) -> bytes:
    """PNG bytes: the tile's predicted region | its foreground probability, side by side (2:1)."""
    from PIL import Image

    h, w = probs.shape[-2:]
    dy, dx = (tile.shape[-2] - h) // 2, (tile.shape[-1] - w) // 2
    image = tile[0, 0, dy:dy + h, dx:dx + w]
    low, high = np.percentile(image, [1, 99.8])
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    foreground = 1.0 - probs[0, 0]
    both = (np.concatenate([grey, foreground], axis=1) * 255).round().astype(np.uint8)
    zoom = max(1, math.ceil(256 / h))
    both = np.repeat(np.repeat(both, zoom, axis=0), zoom, axis=1)
    buf = io.BytesIO()
    Image.fromarray(both).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _augmentation(recorded: Any) -> str:
    """The augmentation a run used, in words (the checkpoint's ``training["augment"]``)."""
    if not isinstance(recorded, dict):
        return ""
    try:
        from ..training.augment import AugmentConfig

        a = AugmentConfig.from_dict(recorded)
    except (TypeError, ValueError):
        return ""
    parts = [f"elastic ({a.elastic_grid}x{a.elastic_grid} grid, {a.elastic_sigma:g} px)"] if a.elastic else []
    parts += ["flips"] * a.flips + ["90-degree turns"] * a.rot90
    if a.affine_probability > 0:
        parts.append(f"rotation up to {a.rotation:g} degrees and zoom {a.scale[0]:g}-{a.scale[1]:g} "
                     f"({a.affine_probability:.0%} of patches)")
    if a.intensity and a.p_intensity > 0:
        parts.append(f"intensity jitter ({a.p_intensity:.0%} of patches)")
    return ", ".join(parts) or "none"


def _training_section(trained: TrainedModel) -> str:
    t = trained.training if isinstance(trained.training, dict) else {}
    if not t:
        return "## Training data\n\nNot recorded in the checkpoint.\n"
    lines = ["## Training data", ""]
    slices = t.get("annotated_slices")
    if isinstance(slices, list) and slices:
        shown = ", ".join(str(s) for s in slices[:40]) + (" ..." if len(slices) > 40 else "")
        lines.append(f"- painted slices of the training stack: {len(slices)} ({shown})")
    lines.append(f"- annotation: {trained.annotation.mode} painting, classes {', '.join(trained.class_names)}")
    settings = t.get("settings") if isinstance(t.get("settings"), dict) else {}
    if settings:
        keys = ("iterations", "batch_size", "patch_size", "learning_rate", "loss")
        # the loss the run used ("auto" resolved), where the checkpoint records it
        recipe = settings | ({"loss": t["loss"]} if isinstance(t.get("loss"), str) else {})
        lines.append("- recipe: " + ", ".join(f"{k} {recipe[k]}" for k in keys if k in recipe))
    augment = "none" if "augment" in t and t["augment"] is None else _augmentation(t.get("augment"))
    if augment:
        lines.append(f"- augmentation: {augment}")
    for key, label in (("iterations_run", "iterations run"), ("best_val_dice", "best validation Dice"),
                       ("validation", "validation"), ("selection", "weights kept")):
        if t.get(key) is not None:
            lines.append(f"- {label}: {t[key]}")
    norm = trained.normalization
    if norm.low is not None and norm.high is not None:
        lines.append(f"- training stack intensities: {norm.method} normalisation, low {norm.low:g}, "
                     f"high {norm.high:g}")
    return "\n".join(lines) + "\n"


def _generated_card(trained: TrainedModel, name: str) -> str:
    cfg = trained.config
    classes = "\n".join(f"- {i}: {c}" for i, c in enumerate(trained.class_names))
    return f"""# {name}

A 2D U-Net (Ronneberger et al., 2015) trained with napari-unet on painted
slices of an electron-microscopy stack.

## What it does

Per-pixel probabilities of {cfg.n_classes} classes:

{classes}

## Network

Depth {cfg.depth}, {cfg.base_channels} base channels, {cfg.padding} convolutions,
{cfg.norm} normalisation, dropout {cfg.dropout}; {trained.model.n_parameters():,} parameters.

{_training_section(trained)}
## Validation

Check the model on painted slices it was not trained on before relying on it
(napari-unet's Train panel holds out slices for validation; `best validation
Dice` above is its score there, when recorded). The package's test tensors
only check that a tool reproduces this network's output.
"""


def documentation(trained: TrainedModel, name: str, card: str | None, tile: np.ndarray,
                  expected: np.ndarray) -> str:
    """The model card (or a generated one) plus what is specific to the package."""
    geometry = trained.model.geometry
    norm = trained.normalization
    if norm.method == "percentile":
        how = (f"`scale_range`: the {norm.p_low:g} and {norm.p_high:g} percentiles of each input "
               "(all channels and pixels of a sample) become 0 and 1 (eps 1e-6). napari-unet "
               "measures them on the whole stack; bioimage.io tools on each image or tile they feed, "
               "so results can differ slightly on tiles of unusual contrast.")
    elif norm.method == "fixed":
        how = (f"`scale_linear`: intensities {norm.low:g} and {norm.high:g} (the training stack's) "
               "become 0 and 1, as in napari-unet.")
    else:
        how = "none: the network takes the values as they are."
    margin = (f"The network uses valid convolutions: its output is {2 * geometry.margin} px smaller "
              f"than its input in y and x ({geometry.margin} px of context per side). napari-unet "
              "mirrors the stack's border to predict every pixel; in other tools pad the image by "
              f"{geometry.margin} px or accept a border without prediction.") if geometry.margin else \
        "The network uses same padding: output and input have the same size."
    section = f"""
## bioimage.io package

Exported by napari-unet {_package_version()}.

- Input `raw`: (batch, channel, y, x) float32, y and x of {geometry.min_input_size} + n * {geometry.divisor} px.
- Output `probabilities`: (batch, class, y, x) float32 class probabilities (the softmax is part of the network).
- Preprocessing: {how}
- {margin}
- Weights: TorchScript (what deepImageJ runs) and a PyTorch state dict for napari-unet's
  `UNetProbabilities` (`pip install napari-unet`).
- Back in napari-unet: `napari-unet segment -m this_package.zip ...` or open it as the
  Segment panel's checkpoint file; it predicts exactly as the original checkpoint.

### Validation of the package

`test_input.npy` ({tuple(tile.shape)}) is an EM-like tile; `test_output.npy`
({tuple(expected.shape)}) is this network's output for it after the preprocessing above.
"""
    return (card.rstrip() + "\n" if card else _generated_card(trained, name)) + section
