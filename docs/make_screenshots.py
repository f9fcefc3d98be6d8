"""Take the README screenshots from a real napari window.

Runs the whole loop on the sample data the way a user would: open the sample,
open the Train widget, train a small model with the live plot and preview,
open the Segment widget, segment the stack, and save what the window shows.

Needs a display with OpenGL. Headless, run it under Xvfb with Qt's xcb
platform (the "offscreen" platform renders a black canvas):

    xvfb-run -a -s "-screen 0 1920x1080x24" env QT_QPA_PLATFORM=xcb \
        python docs/make_screenshots.py

Writes docs/images/train_widget.png and docs/images/segment_result.png
(quantised to a palette so each stays well under 300 KB).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("make_screenshots")
HERE = Path(__file__).resolve().parent


def _wait(app, condition, timeout_s: float) -> None:
    """Process Qt events until ``condition()`` holds (the GUI stays live meanwhile)."""
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("timed out waiting for the job to finish")
        app.processEvents()
        time.sleep(0.02)


def _save(viewer, path: Path, width: int) -> None:
    """Screenshot of the whole window, scaled to ``width`` and stored as a palette PNG."""
    from PIL import Image

    rgba = viewer.screenshot(canvas_only=False, flash=False)
    img = Image.fromarray(np.asarray(rgba)).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    logger.info("wrote %s (%d KB, %dx%d)", path, path.stat().st_size // 1024, img.width, img.height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--model", default="small")
    parser.add_argument("--width", type=int, default=1280, help="width of the saved PNGs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-unet")
    app = QApplication.instance()
    viewer.window.resize(1800, 1040)  # a fixed size, so the docs images look alike
    viewer.open_sample("napari-unet", "synthetic_em")
    viewer.layers["synthetic EM annotation"].opacity = 0.45

    _dock, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    train.start_from.value = "scratch"
    train.model_size.value = args.model
    train.iterations.value = args.iterations
    train.preview_every.value = 20
    viewer.dims.current_step = (8, 0, 0)  # an unpainted slice: the preview shows what it learnt
    train.start.native.click()
    _wait(app, lambda: not train.running, timeout_s=1800)
    logger.info("training: %s", train.status.value)
    viewer.layers.selection.active = viewer.layers["synthetic EM preview"]
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    _save(viewer, args.out / "train_widget.png", args.width)

    _dock, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment", tabify=True)
    segment.image.value = viewer.layers["synthetic EM"]
    segment.output.value = "instances"
    segment.min_size.value = 30
    segment.start.native.click()
    _wait(app, lambda: not segment.running, timeout_s=1800)
    logger.info("segmentation: %s", segment.status.value)
    viewer.layers["synthetic EM preview"].visible = False
    viewer.layers["synthetic EM instances"].opacity = 0.5
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    _save(viewer, args.out / "segment_result.png", args.width)
    viewer.close()


if __name__ == "__main__":
    main()
