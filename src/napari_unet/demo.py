"""The one-command demo: synthetic stack -> two painted slices -> model -> whole stack segmented.

It is the README's main job with no data of the user's: it generates the
synthetic EM stack, "paints" two slices from its ground truth, fine-tunes the
shipped default model (or trains a small one from scratch when none ships),
segments the whole stack through the same batch engine as
``napari-unet segment``, writes the labels TIFF and a PNG figure, and
measures the accuracy against the ground truth on the slices nobody painted.

The recipe depends on the device: on a CPU the network is small and the run
short (a few minutes on 2 cores); a GPU affords a bigger network and more
iterations in less time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .model.config import FINETUNE_LEARNING_RATE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoRecipe:
    """How big the demo is; chosen so that it finishes in minutes on a 2-core CPU."""

    shape: tuple[int, int, int] = (24, 256, 256)
    annotated: tuple[int, ...] = (7, 16)
    preset: str = "tiny"  # architecture when training from scratch
    iterations: int = 400
    # the synthetic cells are not ssTEM: the shipped membrane model needs more than a
    # demo's minute of fine-tuning to beat a tiny network trained on them from scratch
    # (measured on a 2-core CPU: IoU 0.71 after 60 fine-tuning iterations vs 0.95), so
    # the demo shows the loop from scratch unless asked otherwise
    from_pretrained: bool = False
    finetune_iterations: int = 60  # when starting from the shipped default model
    patch_size: int = 96
    batch_size: int = 4
    learning_rate: float = 3e-3
    finetune_learning_rate: float = FINETUNE_LEARNING_RATE
    figure_slices: int = 3
    seed: int = 0


#: Default recipe on a CPU (measured: see README).
CPU_RECIPE = DemoRecipe()
#: On a GPU: the default architecture and more iterations, still well under a minute.
GPU_RECIPE = DemoRecipe(preset="default", iterations=400, finetune_iterations=200, patch_size=128,
                        learning_rate=1e-3)
#: ``--quick``: seconds, for tests; the accuracy is not meaningful.
QUICK_RECIPE = DemoRecipe(shape=(4, 64, 64), annotated=(1, 2), iterations=8, finetune_iterations=4,
                          patch_size=24, batch_size=2, figure_slices=2)


@dataclass
class DemoResult:
    """Files written, accuracy reached and time taken."""

    outdir: Path
    files: dict[str, Path]
    foreground_iou: float  # on the slices that were not painted
    adapted_rand_error: float  # mean over unpainted slices, per-slice instances vs ground truth
    started_from: str  # how the model was made, for the report
    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    recipe: DemoRecipe = CPU_RECIPE

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


def pick_recipe(device: str, quick: bool) -> DemoRecipe:
    """The recipe for a device name ("cpu", "cuda", ...)."""
    if quick:
        return QUICK_RECIPE
    return GPU_RECIPE if device.startswith("cuda") else CPU_RECIPE


def _colour_labels(labels: np.ndarray) -> np.ndarray:
    """Random-looking but fixed colours per id (0 stays black), for the figure."""
    labels = np.asarray(labels).astype(np.uint64)
    palette = np.random.default_rng(7).integers(60, 256, size=(251, 3), dtype=np.uint8)
    out = palette[(labels * np.uint64(2654435761)) % np.uint64(251)]
    out[labels == 0] = 0
    return out


def write_figure(
    path: Path,
    image: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray,
    slices: list[int],
    annotated: tuple[int, ...],
) -> Path:
    """A PNG grid: one row per slice, columns image / prediction / ground truth.

    Made with Pillow (a dependency of scikit-image), so the demo needs no
    plotting library.
    """
    from PIL import Image, ImageDraw

    h, w = image.shape[1:]
    scale = max(1, 256 // max(h, w))
    gap, head, side = 6, 22, 130
    cols = ["image", "prediction (instances)", "ground truth"]
    width = side + len(cols) * (w * scale + gap)
    height = head + len(slices) * (h * scale + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(cols):
        draw.text((side + c * (w * scale + gap) + 4, 4), title, fill=(0, 0, 0))
    for r, z in enumerate(slices):
        top = head + r * (h * scale + gap)
        note = "painted" if z in annotated else "not painted"
        draw.text((6, top + 4), f"slice {z}\n({note})", fill=(0, 0, 0))
        grey = np.repeat(image[z][..., None], 3, axis=2)
        panels = [grey, _colour_labels(prediction[z]), _colour_labels(truth[z])]
        for c, panel in enumerate(panels):
            tile = Image.fromarray(np.ascontiguousarray(panel.astype(np.uint8)))
            if scale > 1:
                tile = tile.resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (side + c * (w * scale + gap), top))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def evaluate(
    truth: np.ndarray, semantic: np.ndarray, instances: np.ndarray, slices: list[int]
) -> tuple[float, float]:
    """Foreground IoU and mean per-slice adapted Rand error over ``slices``.

    Instances are labelled per slice, so the Rand error is computed slice by
    slice (a 3D comparison would count every z-step as a split).
    """
    from skimage.metrics import adapted_rand_error

    fg_true = truth[slices] > 0
    fg_pred = semantic[slices] > 0
    union = np.logical_or(fg_true, fg_pred).sum()
    iou = float(np.logical_and(fg_true, fg_pred).sum() / union) if union else 1.0
    errors = [float(adapted_rand_error(truth[z], instances[z])[0]) for z in slices]
    return iou, float(np.mean(errors))


def run_demo(
    outdir: str | Path = "napari-unet-demo",
    *,
    quick: bool = False,
    device: str = "auto",
    recipe: DemoRecipe | None = None,
    on_train: Callable[[Any], None] | None = None,
    on_segment: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DemoResult:
    """Run the whole demo into ``outdir`` (overwriting its previous demo files).

    ``should_stop`` ends training early, keeping the model so far; the
    stack is still segmented and evaluated with it.
    """
    from .devices import resolve_device
    from .io.tiff import read_tiff, write_tiff
    from .model.checkpoint import load_checkpoint
    from .model.config import preset
    from .model.pretrained import default_checkpoint
    from .prediction.batch import BatchOptions, batch_segment
    from .synthetic import partial_annotation, synthetic_em_stack
    from .training.trainer import Trainer, TrainingConfig

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    recipe = recipe or pick_recipe(dev.type, quick)
    seconds: dict[str, float] = {}
    files = {
        "image": outdir / "demo_image.tif",
        "annotations": outdir / "demo_annotations.tif",
        "ground_truth": outdir / "demo_ground_truth.tif",
        "model": outdir / "demo_model.pt",
        "figure": outdir / "demo_figure.png",
    }

    t = time.perf_counter()
    data = synthetic_em_stack(recipe.shape, seed=recipe.seed)
    annotations = partial_annotation(data.instances, list(recipe.annotated))
    spacing, unit = (30.0, 5.0, 5.0), "nm"  # typical serial-section EM voxel
    write_tiff(files["image"], data.image, spacing=spacing, unit=unit, overwrite=True)
    write_tiff(files["annotations"], annotations.astype(np.uint16), spacing=spacing, unit=unit,
               overwrite=True)
    write_tiff(files["ground_truth"], data.instances.astype(np.uint16), spacing=spacing, unit=unit,
               overwrite=True)
    seconds["data"] = time.perf_counter() - t

    t = time.perf_counter()
    base = default_checkpoint() if recipe.from_pretrained else None
    if base is not None:
        started = "fine-tuned from the built-in default model"
        config = TrainingConfig(iterations=recipe.finetune_iterations, patch_size=recipe.patch_size,
                                batch_size=recipe.batch_size, learning_rate=recipe.finetune_learning_rate,
                                seed=recipe.seed, device=dev.type)
        trainer = Trainer(data.image, annotations, config, init=load_checkpoint(base))
    else:
        started = f"trained from scratch ({recipe.preset} network)"
        config = TrainingConfig(iterations=recipe.iterations, patch_size=recipe.patch_size,
                                batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                                seed=recipe.seed, device=dev.type)
        trainer = Trainer(data.image, annotations, config, model=preset(recipe.preset))
    for event in trainer:
        if on_train is not None:
            on_train(event)
        if should_stop is not None and should_stop():
            trainer.cancel()
    assert trainer.result is not None
    trainer.result.save(files["model"])
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    options = BatchOptions(instances=True, device=dev.type, overwrite=True)
    # should_stop ends training early (like Ctrl-C in `train`); the demo still segments
    results = batch_segment(files["model"], [files["image"]], outdir, options, callback=on_segment)
    if results[0].status != "done":
        raise RuntimeError(f"segmenting the demo stack failed: {results[0].reason}")
    for out in results[0].outputs:
        key = out.name.removeprefix("demo_image_").rsplit(".", 1)[0]
        files[key] = out
    seconds["segment"] = time.perf_counter() - t

    t = time.perf_counter()
    semantic = np.asarray(read_tiff(files["labels"], lazy=False).data)
    instances = np.asarray(read_tiff(files["instances"], lazy=False).data)
    unpainted = [z for z in range(recipe.shape[0]) if z not in recipe.annotated]
    iou, are = evaluate(data.instances, semantic, instances, unpainted)
    # a painted slice, then the unpainted ones farthest from any painted slice (the hardest)
    far = sorted(unpainted, key=lambda z: (-min(abs(z - a) for a in recipe.annotated), z))
    rows = [recipe.annotated[0]] + far[: recipe.figure_slices - 1]
    write_figure(files["figure"], data.image, instances, data.instances, sorted(set(rows)),
                 recipe.annotated)
    seconds["evaluate"] = time.perf_counter() - t
    return DemoResult(outdir, files, iou, are, started, str(dev), seconds, replace(recipe))
