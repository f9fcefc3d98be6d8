"""What napari itself costs on the main thread on this machine, without napari-unet.

The GUI-latency benchmark finds gaps that no napari-unet handler causes: the
viewer repainting its canvas, and napari building a new layer. This measures
them alone in a fresh viewer (one 16 x 256 x 256 image), so the report can
say which long gaps a plugin can avoid and which come with napari on a
machine without a GPU driver (software OpenGL).

    xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/bench_napari_costs.py
"""

from __future__ import annotations

import statistics
import time


def main() -> dict[str, float]:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (16, 256, 256), dtype=np.uint8))
    app = QApplication.instance()

    def settle() -> float:
        started = time.perf_counter()
        for _ in range(10):
            app.processEvents()
        return (time.perf_counter() - started) * 1e3

    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    canvas = viewer.window._qt_viewer.canvas._scene_canvas.native
    repaint = []
    for _ in range(5):
        started = time.perf_counter()
        canvas.repaint()
        app.processEvents()
        repaint.append((time.perf_counter() - started) * 1e3)
    rng = np.random.default_rng(1)
    costs: dict[str, list[float]] = {"add_labels": [], "add_image": [], "labels.data=": []}
    for _ in range(3):
        data = rng.integers(0, 3, (1, 256, 256), dtype=np.uint8)
        for kind in ("add_labels", "add_image"):
            started = time.perf_counter()
            layer = getattr(viewer, kind)(data, opacity=0.5)
            costs[kind].append((time.perf_counter() - started) * 1e3 + settle())
        started = time.perf_counter()
        layer_labels = [lay for lay in viewer.layers if lay._type_string == "labels"][-1]
        layer_labels.data = rng.integers(0, 3, (1, 256, 256), dtype=np.uint8)
        costs["labels.data="].append((time.perf_counter() - started) * 1e3 + settle())
        del layer
    report = {"canvas_repaint_ms": statistics.median(repaint)}
    for kind, values in costs.items():
        report[f"{kind}_ms"] = statistics.median(values)
        report[f"{kind}_first_ms"] = values[0]
    try:
        from OpenGL import GL

        renderer = GL.glGetString(GL.GL_RENDERER).decode()
    except Exception:  # no current context on some platforms: the name is only a hint
        renderer = "unknown"
    print(f"OpenGL renderer: {renderer}")
    for key, value in report.items():
        print(f"{key}={value:.1f}")
    viewer.close()
    return report


if __name__ == "__main__":
    main()
