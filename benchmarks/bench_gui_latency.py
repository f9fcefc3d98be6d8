"""How responsive napari stays while the napari-unet panels run jobs.

Opens a real napari viewer, loads the plugin's sample data (File > Open Sample
> napari-unet > Synthetic EM stack), opens the Train, Segment and Batch panels
through the plugin manifest and drives them with their own Start buttons, as
a user would. A 10 ms Qt timer records the gaps between its ticks: a gap of
200 ms is 200 ms during which napari could not repaint or react to the mouse.

Phases: idle (nothing running), Train a tiny model from scratch, Train
fine-tuning the built-in default model, Segment the whole stack, Batch on two
small TIFF files plus one corrupt file. For each phase it prints the number of
gaps, their median, p99 and maximum and how many exceeded 100 ms; for both
Train runs, the time from pressing Start to the first live preview (the
'<image> preview' layer appearing or being updated); and the main window's
height with all three panels open.

A background thread samples where the main thread is (``sys._current_frames``)
whenever the timer has not ticked for 50 ms; the stacks seen during gaps over
100 ms are summed up per phase (``--stacks N`` shows the N heaviest).

Run under a display (Qt's xcb platform), e.g.::

    xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/bench_gui_latency.py

The last line is
``max_gap_ms=<float> p99_ms=<float> first_preview_s=<float> window_height_px=<int>``,
the worst value over the job phases (idle excluded) and over both Train runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

PLUGIN = "napari-unet"
TICK_MS = 10
SLOW_MS = 100.0  # a gap a user notices
SAMPLE_AFTER_MS = 50.0  # start sampling the main thread's stack after this long without a tick
SAMPLE_EVERY_S = 0.005


# -- measuring -----------------------------------------------------------------------------
class GapRecorder:
    """A 10 ms Qt timer on the main thread: every gap between two ticks, by phase."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.phase = "startup"
        self.gaps: dict[str, list[float]] = defaultdict(list)  # seconds
        self.slow: list[tuple[str, float, float]] = []  # (phase, start, end) of gaps > SLOW_MS
        self.last_tick: float | None = None
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        self.last_tick = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        last = self.last_tick
        self.last_tick = now
        if last is None:
            return
        gap = now - last
        self.gaps[self.phase].append(gap)
        if gap * 1000.0 > SLOW_MS:
            self.slow.append((self.phase, last, now))


class StackSampler(threading.Thread):
    """Record the main thread's Python stack while the timer is late (a gap in progress).

    Each sample is (tick the gap started from, time, stack). A sample can only be
    taken when this thread gets the GIL and a core: on a busy machine a 300 ms gap
    may yield one sample or none, so sample counts compare stacks, they do not
    measure time. A gap whose samples show no Python frame below the event loop
    is Qt's own C++ work, or a main thread that was not scheduled at all.
    """

    def __init__(self, recorder: GapRecorder, main_ident: int) -> None:
        super().__init__(name="gap-stack-sampler", daemon=True)
        self.recorder = recorder
        self.main_ident = main_ident
        self.samples: list[tuple[float, float, tuple[tuple[str, str, int], ...]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_EVERY_S):
            last = self.recorder.last_tick
            now = time.perf_counter()
            if last is None or (now - last) * 1000.0 < SAMPLE_AFTER_MS:
                continue
            frame = sys._current_frames().get(self.main_ident)
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append((code.co_filename, code.co_name, frame.f_lineno))
                frame = frame.f_back
            self.samples.append((last, now, tuple(reversed(stack))))  # outermost first

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)


def short_path(filename: str) -> str:
    """A file name without the machine's directories: 'napari/_qt/foo.py'."""
    f = filename.replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/", "/src/", "/benchmarks/"):
        if marker in f:
            return f.rsplit(marker, 1)[1]
    return f.rsplit("/", 1)[-1]


_BORING = ("threading.py", "bench_gui_latency.py")


def condense(stack: tuple[tuple[str, str, int], ...], depth: int) -> str:
    """The innermost ``depth`` frames below this script's waiting loop, innermost last."""
    frames = [(short_path(f), name, line) for f, name, line in stack]
    # drop the benchmark's own frames (the nested event loop it waits in)
    while frames and frames[0][0].endswith(_BORING):
        frames.pop(0)
    if not frames:
        return "(Qt event loop, no Python frame: C++ work such as painting or layout)"
    text = [f"{p}:{name}:{line}" for p, name, line in frames]
    if len(text) <= depth + 1:
        return " > ".join(text)
    # the handler Qt called, then the innermost frames: where the time goes
    return " > ".join([text[0], "...", *text[-depth:]])


def culprit(stack: tuple[tuple[str, str, int], ...]) -> str:
    """The outermost frame below the event loop: the handler Qt called."""
    for f, name, _line in stack:
        p = short_path(f)
        if not p.endswith(_BORING):
            return f"{p}:{name}"
    return "(no Python frame: Qt C++)"


def gap_stacks(
    recorder: GapRecorder, sampler: StackSampler, depth: int, top: int
) -> dict[str, list[dict[str, Any]]]:
    """Per phase: the heaviest main-thread stacks seen during gaps > SLOW_MS."""
    by_start: dict[float, list[tuple[float, tuple]]] = defaultdict(list)
    for start, t, stack in sampler.samples:
        by_start[start].append((t, stack))
    out: dict[str, list[dict[str, Any]]] = {}
    per_phase: dict[str, Counter] = defaultdict(Counter)
    handlers: dict[str, Counter] = defaultdict(Counter)
    gaps_with: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for phase, start, _end in recorder.slow:
        for _t, stack in by_start.get(start, []):
            key = condense(stack, depth)
            per_phase[phase][key] += 1
            handlers[phase][culprit(stack)] += 1
            gaps_with[phase][key].add(start)
    # the largest gaps one by one: where the main thread was for most of each
    largest = []
    for phase, start, end in sorted(recorder.slow, key=lambda g: g[1] - g[2])[:top]:
        where = Counter(culprit(stack) for _t, stack in by_start.get(start, []))
        deep = Counter(condense(stack, 2) for _t, stack in by_start.get(start, []))
        largest.append({
            "phase": phase,
            "gap_ms": round((end - start) * 1000.0, 1),
            "samples": sum(where.values()),
            "handler": where.most_common(1)[0][0] if where else "(not sampled)",
            "stack": deep.most_common(1)[0][0] if deep else "(not sampled)",
        })
    out["largest gaps"] = largest
    for phase, counts in per_phase.items():
        total = max(1, sum(counts.values()))
        out[phase] = [
            {
                "samples": n,
                "share": round(n / total, 3),
                "gaps": len(gaps_with[phase][key]),
                "stack": key,
            }
            for key, n in counts.most_common(top)
        ]
        out[phase + " (handlers)"] = [
            {"samples": n, "share": round(n / total, 3), "handler": h}
            for h, n in handlers[phase].most_common(top)
        ]
    return out


def summarize(gaps: list[float]) -> dict[str, float | int]:
    ms = sorted(g * 1000.0 for g in gaps)
    if not ms:
        return {"n": 0, "median_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "over_100ms": 0}
    p99 = ms[min(len(ms) - 1, max(0, int(round(0.99 * len(ms))) - 1))]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(ms[-1], 2),
        "over_100ms": sum(1 for m in ms if m > SLOW_MS),
    }


# -- driving the GUI without blocking it ---------------------------------------------------
def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Run a nested Qt event loop until ``condition()`` (never sleeps on the main thread)."""
    from qtpy.QtCore import QEventLoop, QTimer

    deadline = time.perf_counter() + timeout_s
    if condition():
        return
    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(20)
    poll.timeout.connect(lambda: loop.quit() if condition() or time.perf_counter() > deadline else None)
    poll.start()
    loop.exec()
    poll.stop()
    if not condition():
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_for(seconds: float) -> None:
    end = time.perf_counter() + seconds
    wait_until(lambda: time.perf_counter() >= end, seconds + 5, "an idle period")


def click(widget: Any) -> None:
    """Press a panel's Start button for real (refused while it is disabled)."""
    problem = widget.revalidate()
    if problem is not None:
        raise RuntimeError(f"{type(widget).__name__} cannot start: {problem}")
    widget.start.native.click()
    if not widget.running:
        raise RuntimeError(f"{type(widget).__name__} did not start: {widget.status.value}")


def run_job(recorder: GapRecorder, phase: str, widget: Any, timeout_s: float) -> float:
    # setting the inputs ran handlers (e.g. a checkpoint loaded to validate it): their gap
    # ends at the next tick, which must fall before the job's phase starts
    wait_for(0.3)
    recorder.phase = phase
    t0 = time.perf_counter()
    click(widget)
    wait_until(lambda: not widget.running, timeout_s, f"the {phase} job")
    elapsed = time.perf_counter() - t0
    wait_for(0.3)  # the last handlers (layers added, status) run inside the phase
    recorder.phase = "between"
    return elapsed


class PreviewWatch:
    """Times at which a '<image> preview' layer appears or gets new data."""

    def __init__(self, viewer: Any, name: str) -> None:
        self.name = name
        self.times: list[float] = []
        self._watched: set[int] = set()
        viewer.layers.events.inserted.connect(self._on_inserted)
        for layer in viewer.layers:
            self._watch(layer)

    def _watch(self, layer: Any) -> None:
        if layer.name.startswith(self.name) and id(layer) not in self._watched:
            self._watched.add(id(layer))
            layer.events.data.connect(lambda *_: self.times.append(time.perf_counter()))

    def _on_inserted(self, event: Any) -> None:
        layer = event.value
        if layer.name.startswith(self.name):
            self.times.append(time.perf_counter())
            self._watch(layer)

    def first_after(self, t0: float) -> float | None:
        later = [t for t in self.times if t >= t0]
        return min(later) - t0 if later else None


# -- the benchmark -------------------------------------------------------------------------
def write_batch_inputs(folder: Path) -> None:
    from napari_unet.io.tiff import write_tiff
    from napari_unet.synthetic import synthetic_em_stack

    folder.mkdir(parents=True, exist_ok=True)
    for i, shape in enumerate(((4, 96, 96), (3, 128, 112))):
        image = synthetic_em_stack(shape, seed=20 + i).image
        write_tiff(folder / f"stack_{i}.tif", image, spacing=(40.0, 4.0, 4.0), unit="nm")
    (folder / "corrupt.tif").write_bytes(b"II*\x00 this is not really a TIFF file " * 4)


def train_settings(widget: Any, start_from: str, iterations: int, preview_every: int,
                   device: str, quick: bool) -> None:
    widget.start_from.value = start_from
    if start_from == "scratch":
        widget.model_size.value = "tiny"
    widget.iterations.value = iterations
    widget.preview_every.value = preview_every
    widget.device.value = device
    if quick:  # small patches: the smoke test stays well under a minute on two cores
        widget.show_advanced.value = True
        widget.patch_size.value = 64
        widget.batch_size.value = 2
        widget.show_advanced.value = False


def grab_panels(viewer: Any, docks: dict[str, Any], folder: Path) -> list[str]:
    """The whole window as a user sees it after the jobs, once with each panel's tab up."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, dock in docks.items():
        dock.raise_()
        wait_for(0.5)
        path = folder / f"window_{name.lower()}.png"
        viewer.window._qt_window.grab().save(str(path))
        paths.append(str(path))
    return paths


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    recorder = GapRecorder()
    sampler = StackSampler(recorder, threading.main_thread().ident)
    recorder.start()
    sampler.start()
    report: dict[str, Any] = {
        "quick": bool(args.quick),
        "qt_platform": app.platformName(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "device": args.device,
    }
    try:
        wait_for(0.5)
        viewer.open_sample(PLUGIN, "synthetic_em")
        image = viewer.layers["synthetic EM"]
        preview = PreviewWatch(viewer, f"{image.name} preview")

        docks = {}
        widgets = {}
        for name in ("Train", "Segment", "Batch"):
            docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        wait_for(0.5)  # the panels join as tabs on a zero-delay timer
        qt_window = viewer.window._qt_window
        report["window_height_px"] = int(qt_window.height())
        report["window_min_height_px"] = int(qt_window.minimumSizeHint().height())
        report["screen_height_px"] = int(qt_window.screen().availableGeometry().height())
        train, segment, batch = widgets["Train"], widgets["Segment"], widgets["Batch"]
        docks["Train"].raise_()  # the tab a user trains in

        recorder.phase = "idle"
        wait_for(args.idle_s)
        recorder.phase = "between"

        elapsed: dict[str, float] = {}
        first_preview: dict[str, float | None] = {}
        it_tiny, every_tiny = (10, 5) if args.quick else (args.tiny_iterations, 25)
        it_ft, every_ft = (4, 2) if args.quick else (args.finetune_iterations, 25)

        # the status line says "Training on <device>: ..." once the trainer is built (a
        # Label emits no signal when set: polled every 10 ms, on the main thread)
        started_at: list[float] = []
        status_poll = QTimer()
        status_poll.setInterval(TICK_MS)
        status_poll.timeout.connect(
            lambda: started_at.append(time.perf_counter())
            if str(train.status.value).startswith("Training on") else None
        )
        status_poll.start()
        trainer_ready: dict[str, float | None] = {}

        def ready_after(t0: float) -> float | None:
            later = [t for t in started_at if t >= t0]
            return round(min(later) - t0, 3) if later else None

        train_settings(train, "scratch", it_tiny, every_tiny, args.device, args.quick)
        t0 = time.perf_counter()
        elapsed["train_tiny"] = run_job(recorder, "train_tiny", train, args.timeout_s)
        first_preview["train_tiny"] = preview.first_after(t0)
        trainer_ready["train_tiny"] = ready_after(t0)

        train_settings(train, "builtin", it_ft, every_ft, args.device, args.quick)
        t0 = time.perf_counter()
        elapsed["train_finetune"] = run_job(recorder, "train_finetune", train, args.timeout_s)
        first_preview["train_finetune"] = preview.first_after(t0)
        trainer_ready["train_finetune"] = ready_after(t0)
        status_poll.stop()
        report["trainer_ready_s"] = trainer_ready
        report["iterations"] = {"train_tiny": it_tiny, "train_finetune": it_ft}
        report["preview_every"] = {"train_tiny": every_tiny, "train_finetune": every_ft}

        docks["Segment"].raise_()
        segment.image.value = image
        segment.model.value = "builtin"
        segment.scope.value = "stack"
        segment.device.value = args.device
        elapsed["segment_stack"] = run_job(recorder, "segment_stack", segment, args.timeout_s)

        docks["Batch"].raise_()
        with tempfile.TemporaryDirectory(prefix="napari-unet-gui-") as tmp:
            src, out = Path(tmp) / "in", Path(tmp) / "out"
            write_batch_inputs(src)
            batch.source.value = "folder"
            batch.input_folder.value = src
            batch.output_folder.value = out
            batch.model.value = "builtin"
            batch.device.value = args.device
            elapsed["batch"] = run_job(recorder, "batch", batch, args.timeout_s)
            report["batch_rows"] = [batch.row_status(r) for r in range(batch.table.rowCount())]
        if args.screenshot is not None:
            report["screenshots"] = grab_panels(viewer, docks, args.screenshot)
    finally:
        recorder.stop()
        sampler.stop()
        report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    phases = ["idle", "train_tiny", "train_finetune", "segment_stack", "batch"]
    report["phases"] = {p: {**summarize(recorder.gaps[p]), "job_s": round(elapsed.get(p, 0.0), 2)}
                        for p in phases}
    report["first_preview_s"] = {k: (None if v is None else round(v, 3)) for k, v in first_preview.items()}
    report["slow_gap_stacks"] = gap_stacks(recorder, sampler, args.stack_depth, args.stacks)
    jobs = [report["phases"][p] for p in phases[1:]]
    previews = [v for v in first_preview.values() if v is not None]
    report["worst"] = {
        "max_gap_ms": max(j["max_ms"] for j in jobs),
        "p99_ms": max(j["p99_ms"] for j in jobs),
        "first_preview_s": round(max(previews), 3) if len(previews) == len(first_preview) else float("nan"),
        "window_height_px": report["window_height_px"],
    }
    viewer.close()
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"Qt platform {report['qt_platform']}, torch threads {report['torch_threads']}, "
          f"{report['cpu_count']} CPUs, load average {report['load_avg_at_start']} -> "
          f"{report['load_avg_at_end']}{' (--quick)' if report['quick'] else ''}")
    print()
    print("| phase | job s | n | median ms | p99 ms | max ms | gaps > 100 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in report["phases"].items():
        job = f"{r['job_s']:.1f}" if name != "idle" else "-"
        print(f"| {name} | {job} | {r['n']} | {r['median_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['max_ms']:.1f} | {r['over_100ms']} |")
    print()
    for k, v in report["first_preview_s"].items():
        ready = report.get("trainer_ready_s", {}).get(k)
        print(f"first preview after Start, {k}: " + ("none" if v is None else f"{v:.2f} s")
              + f" (preview every {report['preview_every'][k]} of {report['iterations'][k]} iterations;"
              + " trainer ready after " + ("?" if ready is None else f"{ready:.2f} s") + ")")
    print(f"main window height with the three panels open: {report['window_height_px']} px "
          f"(minimum {report['window_min_height_px']} px, screen {report['screen_height_px']} px)")
    if report.get("batch_rows"):
        print(f"batch rows: {report['batch_rows']}")
    for phase, rows in report["slow_gap_stacks"].items():
        if not rows:
            continue
        print()
        print(f"main thread during gaps > 100 ms, {phase}:" if phase != "largest gaps"
              else "largest gaps, and where the main thread was for most of each:")
        for row in rows:
            if "gap_ms" in row:
                print(f"  {row['gap_ms']:.0f} ms gap in {row['phase']} ({row['samples']} samples): "
                      f"{row['handler']} | {row['stack']}")
                continue
            what = row.get("stack") or row.get("handler")
            gaps = f", {row['gaps']} gaps" if "gaps" in row else ""
            print(f"  {100 * row['share']:.0f} % ({row['samples']} samples{gaps}): {what}")
    w = report["worst"]
    print()
    print(f"max_gap_ms={w['max_gap_ms']:.1f} p99_ms={w['p99_ms']:.1f} "
          f"first_preview_s={w['first_preview_s']:.2f} window_height_px={int(w['window_height_px'])}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations, small patches (< 60 s)")
    parser.add_argument("--out", type=Path, help="write the report as JSON")
    parser.add_argument("--idle-s", type=float, default=3.0)
    parser.add_argument("--tiny-iterations", type=int, default=60)
    parser.add_argument("--finetune-iterations", type=int, default=30)
    parser.add_argument("--device", default="auto", help="the panels' device choice")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default, what a user gets)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per job")
    parser.add_argument("--screenshot", type=Path, metavar="DIR",
                        help="save the window with each panel's tab up (PNG) after the jobs")
    parser.add_argument("--stacks", type=int, default=5, help="heaviest stacks shown per phase")
    parser.add_argument("--stack-depth", type=int, default=4, help="innermost frames per stack")
    args = parser.parse_args(argv)
    if args.quick:
        args.idle_s = min(args.idle_s, 1.0)
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get(
        "WAYLAND_DISPLAY"
    ):
        parser.exit(2, "no display: run under xvfb-run -a -s '-screen 0 1920x1080x24'\n")
    if sys.platform.startswith("linux"):
        os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    report = measure(args)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))
    print_report(report)
    return report


if __name__ == "__main__":
    main()
