"""``napari-unet demo``: the whole method on a synthetic stack, with progress bars and an accuracy report.

The work itself is :func:`napari_unet.demo.run_demo`; this module only
shows its progress, lets a first Ctrl-C cut the training short, and prints
what came out and where the files are.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from ._exit import EXIT_OK
from ._output import _err, _fmt_seconds, progress_bar
from ._signals import _ctrl_c


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    outdir = Path(args.outdir)
    print(f"napari-unet demo{' (quick)' if args.quick else ''}: writing to {outdir}/")
    train_bar = None
    seg_bar = None

    def on_train(event: Any) -> None:
        nonlocal train_bar
        if train_bar is None:
            train_bar = progress_bar(total=event.total, unit="it", desc="train")
        if not event.done:
            train_bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
            train_bar.update(event.iteration - train_bar.n)
        else:
            train_bar.close()

    def on_segment(event: Any) -> None:
        nonlocal seg_bar
        if seg_bar is None:
            seg_bar = progress_bar(total=event.slices_total, unit="slice", desc="segment")
        seg_bar.update(event.slices_done - seg_bar.n)
        if event.result is not None:
            seg_bar.close()

    stop = threading.Event()

    def on_first() -> None:
        stop.set()
        _err("\nStopping training early; the demo goes on with the model so far "
             "(Ctrl-C again to abort).")

    with _ctrl_c(on_first):
        result = run_demo(outdir, quick=args.quick, device=args.device, on_train=on_train,
                          on_segment=on_segment, should_stop=stop.is_set)
    r = result.recipe
    print(
        f"Stack {r.shape[0]}x{r.shape[1]}x{r.shape[2]} (synthetic EM), slices {list(r.annotated)} "
        f"painted; model {result.started_from} on {result.device}."
    )
    print(
        f"Accuracy on the {r.shape[0] - len(r.annotated)} unpainted slices: foreground IoU "
        f"{result.foreground_iou:.3f}, adapted Rand error {result.adapted_rand_error:.3f} "
        "(per slice; 0 is perfect)."
    )
    parts = ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in result.seconds.items())
    print(f"Time: {_fmt_seconds(result.total_seconds)} ({parts}).")
    for key in ("labels", "instances", "figure", "model"):
        if key in result.files:
            print(f"  {key:10} {result.files[key]}")
    print(f"Open it in napari:  napari {result.files['image']} {result.files.get('labels', '')}")
    return EXIT_OK
