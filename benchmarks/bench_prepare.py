"""Benchmark: what ``Trainer(...)`` spends before the first training step, phase by phase.

A user pressing Start waits for this ("Preparing the annotated slices...").
``Trainer.__init__`` validates the arrays, picks the device, turns every
painted slice into a target and a U-Net weight map (``prepare_slices``),
builds the network (or copies a checkpoint's weights into it), fits the
normalisation statistics and splits off the validation pixels. Each phase is
timed here by calling the same functions the constructor calls, and the whole
constructor is timed as well (from scratch and fine-tuning the shipped model),
so the phases can be checked against the total; the fine-tuning constructor is
timed once more in a worker thread, as the Train panel runs it (torch's OpenMP
threads cost about 1 ms per operation on the main thread of a busy machine,
which the checkpoint phases show, and far less in a fresh thread).

Cases (dense mode unless named otherwise):

* the plugin's sample (``synthetic_em_stack`` + ``partial_annotation``, 256 x 256
  slices) with 1 and 2 painted slices, and scribbles drawn from its ground truth;
* ISBI 2012 at 1024 x 1024: a 2 x 2 mosaic of four ground-truth slices (the
  slices are 512 x 512; slices 8-11 for the painted one), painted as
  ``eval_fewslice.py`` paints them (255 = cell, each connected cell one
  object), one painted slice among five; the same slice as scribbles;
* Lucchi (768 x 1024 mitochondria, few objects), one painted slice;
* parallel fibres: a synthetic worst case for per-object crops, 6-px-wide
  diagonal objects 2 px apart that each span the slice (longitudinally cut
  neurites look like this).

The last line is ``prepare_s_per_mpx=<float>``: the worst ``prepare_slices``
time per painted megapixel over the cases. Example::

    python benchmarks/bench_prepare.py                 # real data from ../shared/data
    python benchmarks/bench_prepare.py --profile isbi-1024   # cProfile of one case
    python benchmarks/bench_prepare.py --quick         # synthetic only, seconds
    xvfb-run -a python benchmarks/bench_prepare.py --cases sample-1 --panel  # + the real panel
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHASES = (
    "validate", "device", "find_slices", "targets", "weight_maps", "prepare_slices",
    "model_build", "ckpt_load", "ckpt_transfer", "normalisation", "split",
)


def scribbles_from(instances: np.ndarray, spacing: int = 24, width: int = 3) -> np.ndarray:
    """Strokes a user might draw: a grid of lines every ``spacing`` px, ``width`` px wide,
    labelled 1 on background and 2 on objects (ilastik's convention)."""
    on = np.zeros(instances.shape, bool)
    for start in range(spacing // 2, instances.shape[0], spacing):
        on[start : start + width] = True
    for start in range(spacing // 2, instances.shape[1], spacing):
        on[:, start : start + width] = True
    return np.where(on, np.where(instances > 0, 2, 1), 0).astype(np.uint8)


def fibres(size: int, width: int = 6, gap: int = 2) -> np.ndarray:
    """Parallel diagonal objects ``width`` px wide, ``gap`` px apart, each spanning the slice."""
    yy, xx = np.mgrid[:size, :size]
    period = width + gap
    diag = xx + yy
    return np.where(diag % period < width, diag // period + 1, 0).astype(np.int32)


def _stack_with(painted: np.ndarray, nz: int, at: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (nz, Y, X) uint8 image of noise with ``painted`` as the labels of slice ``at``."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(nz, *painted.shape), dtype=np.uint8)
    labels = np.zeros((nz, *painted.shape), dtype=painted.dtype)
    labels[at] = painted
    return image, labels


def make_cases(data: Path | None, quick: bool) -> list[dict[str, Any]]:
    """The benchmark cases: name, image, labels, annotation mode."""
    from napari_unet._sample_data import SAMPLE_ANNOTATED, SAMPLE_SHAPE
    from napari_unet.synthetic import partial_annotation, synthetic_em_stack

    stack = synthetic_em_stack(SAMPLE_SHAPE, seed=7)
    z0 = SAMPLE_ANNOTATED[0]
    scrib = np.zeros(stack.instances.shape, np.uint8)
    scrib[z0] = scribbles_from(stack.instances[z0])
    cases = [
        dict(name="sample-1", image=stack.image, labels=partial_annotation(stack.instances, [z0]),
             mode="dense"),
        dict(name="sample-2", image=stack.image,
             labels=partial_annotation(stack.instances, list(SAMPLE_ANNOTATED)), mode="dense"),
        dict(name="sample-scribbles", image=stack.image, labels=scrib, mode="scribbles"),
    ]
    size = 256 if quick else 1024
    image, labels = _stack_with(fibres(size), 3, 1)
    cases.append(dict(name=f"fibres-{size}", image=image, labels=labels, mode="dense"))
    if quick or data is None:
        return cases

    import tifffile

    isbi = data / "isbi2012"
    if (isbi / "labels.tif").is_file():
        img = tifffile.imread(isbi / "image.tif")
        fg = tifffile.imread(isbi / "labels.tif") > 127

        def mosaic(a: np.ndarray, k: int) -> np.ndarray:
            return np.block([[a[4 * k], a[4 * k + 1]], [a[4 * k + 2], a[4 * k + 3]]])

        image = np.stack([mosaic(img, k) for k in range(5)])
        painted = np.where(mosaic(fg, 2), 255, 0).astype(np.uint8)  # slices 8-11
        labels = np.zeros(image.shape, np.uint8)
        labels[2] = painted
        cases.append(dict(name="isbi-1024", image=image, labels=labels, mode="dense"))
        scrib = np.zeros(image.shape, np.uint8)
        scrib[2] = scribbles_from(painted)
        cases.append(dict(name="isbi-1024-scribbles", image=image, labels=scrib, mode="scribbles"))
    else:
        print(f"(no ISBI data under {isbi}: real-data cases skipped)")
    lucchi = data / "lucchi_epfl_mito"
    if (lucchi / "labels.tif").is_file():
        img = tifffile.imread(lucchi / "image.tif")[:5]
        lab = tifffile.imread(lucchi / "labels.tif")[:5]
        labels = np.zeros(lab.shape, np.uint8)
        labels[2] = lab[2]
        cases.append(dict(name="lucchi-768x1024", image=img, labels=labels, mode="dense"))
    return cases


def _median(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread, as the napari Train panel runs the trainer."""
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.setdefault("value", fn()))
    worker.start()
    worker.join()
    return result["value"]


def time_phases(case: dict[str, Any], repeats: int, base: Any) -> dict[str, float]:
    """Median seconds of each phase of ``Trainer.__init__``, and of the whole constructor."""
    from napari_unet import devices
    from napari_unet._validation import as_stack, check_labels
    from napari_unet.model.checkpoint import load_checkpoint, transfer_weights
    from napari_unet.model.pretrained import default_checkpoint
    from napari_unet.model.unet import UNet
    from napari_unet.training.annotations import (
        AnnotationSettings,
        annotated_slices,
        dense_slice_target,
        n_classes_for,
        prepare_slices,
    )
    from napari_unet.training.trainer import Trainer, TrainingConfig, _split
    from napari_unet.training.weightmap import boundary_weight_map

    settings = AnnotationSettings(mode=case["mode"])
    cfg = TrainingConfig(annotation=settings, device="cpu")
    out: dict[str, float] = {}
    out["validate"], (stack, labels) = _median(
        lambda: (as_stack(case["image"]), check_labels(case["labels"], case["image"].shape)), repeats
    )
    out["device"], _ = _median(lambda: devices.resolve_device("auto"), repeats)
    out["find_slices"], zs = _median(lambda: annotated_slices(labels), repeats)

    def targets() -> list[tuple[np.ndarray, np.ndarray]]:
        if settings.mode == "scribbles":
            return [(labels[z].astype(np.int64) - 1, np.zeros(labels[z].shape, np.int32)) for z in zs]
        return [dense_slice_target(labels[z], settings)[:2] for z in zs]

    out["targets"], tg = _median(targets, repeats)
    w0 = settings.w0 if settings.mode == "dense" else 0.0
    out["weight_maps"], _ = _median(
        lambda: [boundary_weight_map(i, w0=w0, sigma=settings.sigma, target=t,
                                     balance=settings.balances) for t, i in tg],
        repeats,
    )
    out["prepare_slices"], slices = _median(lambda: prepare_slices(labels, settings), repeats)
    n_classes = n_classes_for(labels, settings)
    out["model_build"], model = _median(lambda: UNet(base.config.with_classes(n_classes)), repeats)
    out["ckpt_load"], _ = _median(lambda: load_checkpoint(default_checkpoint()), repeats)
    out["ckpt_transfer"], _ = _median(lambda: transfer_weights(base.model, model), repeats)
    out["normalisation"], _ = _median(lambda: cfg.normalization.fit(stack), repeats)
    out["split"], _ = _median(lambda: _split(slices, cfg.val_fraction), repeats)
    out["trainer_scratch"], _ = _median(
        lambda: Trainer(case["image"], case["labels"], cfg, model=base.config), repeats
    )
    out["trainer_finetune"], _ = _median(
        lambda: Trainer(case["image"], case["labels"], cfg, init=base), repeats
    )
    out["trainer_finetune_thread"], _ = _median(
        lambda: _in_thread(lambda: Trainer(case["image"], case["labels"], cfg, init=base)), repeats
    )
    out["painted_mpx"] = len(zs) * labels.shape[1] * labels.shape[2] / 1e6
    out["n_objects"] = float(sum(s.n_objects for s in slices))
    return out


def profile(case: dict[str, Any], base: Any, top: int = 25) -> None:
    """cProfile of one fine-tuning ``Trainer(...)`` construction, by own time."""
    from napari_unet.training.annotations import AnnotationSettings
    from napari_unet.training.trainer import Trainer, TrainingConfig

    cfg = TrainingConfig(annotation=AnnotationSettings(mode=case["mode"]), device="cpu")
    Trainer(case["image"], case["labels"], cfg, init=base)  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    Trainer(case["image"], case["labels"], cfg, init=base)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def time_panel(repeats: int, painted: tuple[int, ...]) -> list[float]:
    """Seconds from clicking Start in the Train panel (default settings, the sample with
    ``painted`` slices) until the status leaves "Preparing the annotated slices...".

    Needs napari and a display (``xvfb-run -a`` on a headless machine). Each run is
    cancelled as soon as training has started.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet._sample_data import SAMPLE_ANNOTATED

    viewer = napari.Viewer(show=False)
    viewer.open_sample("napari-unet", "synthetic_em")
    annotation = viewer.layers["synthetic EM annotation"]
    data = annotation.data.copy()
    for z in set(SAMPLE_ANNOTATED) - set(painted):
        data[z] = 0
    annotation.data = data
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    app = QApplication.instance()

    def pump(until: Callable[[], bool], limit: float = 120.0) -> None:
        end = time.perf_counter() + limit
        while not until() and time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.002)

    pump(lambda: False, 0.5)  # let the panel validate its inputs
    times = []
    for _ in range(repeats):
        assert widget.revalidate() is None, widget.status.value
        widget.start.native.click()
        t0 = time.perf_counter()
        pump(lambda: not widget.status.value.startswith("Preparing"))
        times.append(time.perf_counter() - t0)
        widget.start.native.click()  # cancel
        pump(lambda: not widget.running)
    viewer.close()
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of isbi2012/, lucchi_epfl_mito/")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per phase (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cases", nargs="+", default=None, help="only these case names")
    parser.add_argument("--profile", metavar="CASE", default=None, help="cProfile one case and stop")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    parser.add_argument("--quick", action="store_true", help="synthetic cases only, 1 repeat")
    parser.add_argument("--panel", action="store_true",
                        help="also time Start -> training in the napari Train panel (needs a display)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1

    import torch

    from napari_unet.model.checkpoint import load_checkpoint
    from napari_unet.model.pretrained import default_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    path = default_checkpoint()
    if path is None:
        raise SystemExit("the shipped checkpoint is missing; this benchmark times fine-tuning from it")
    base = load_checkpoint(path)
    cases = make_cases(args.data if args.data.is_dir() else None, args.quick)
    if args.cases:
        cases = [c for c in cases if c["name"] in args.cases]
    if args.profile:
        profile(next(c for c in cases if c["name"] == args.profile), base)
        return {}

    print(f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}; times in ms")
    cols = (*PHASES, "trainer_scratch", "trainer_finetune", "trainer_finetune_thread")
    short = {"prepare_slices": "prepare", "trainer_scratch": "T(scratch)",
             "trainer_finetune": "T(finetune)", "trainer_finetune_thread": "T(ft,thread)",
             "normalisation": "normalise",
             "ckpt_transfer": "transfer", "find_slices": "find", "weight_maps": "weights"}
    print(f"{'case':<22}{'obj':>5}" + "".join(f"{short.get(c, c):>12}" for c in cols))
    rows = []
    for case in cases:
        r = time_phases(case, args.repeats, base)
        rows.append({"case": case["name"], **r})
        print(f"{case['name']:<22}{int(r['n_objects']):>5}"
              + "".join(f"{r[c] * 1e3:>12.1f}" for c in cols), flush=True)
    worst = max(r["prepare_slices"] / r["painted_mpx"] for r in rows)
    report = {"repeats": args.repeats, "threads": torch.get_num_threads(), "rows": rows,
              "prepare_s_per_mpx": worst}
    if args.panel:
        for painted in ((4,), (4, 11)):
            times = time_panel(args.repeats, painted)
            report[f"panel_{len(painted)}"] = times
            print(f"Train panel, sample with {len(painted)} painted slice(s): Start -> training "
                  f"{statistics.median(times) * 1e3:.0f} ms (median of {len(times)})", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(f"prepare_s_per_mpx={worst:.4f}")
    return report


if __name__ == "__main__":
    main()
