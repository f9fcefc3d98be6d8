"""The ``napari-unet`` command line: train, segment, demo, info.

Exit codes: 0 all good (a training stopped early with Ctrl-C also counts: the
model so far is saved), 1 an error or at least one input failed, 2 a usage
error, 130 aborted (a second Ctrl-C, or a segmentation cancelled with
Ctrl-C). Errors are printed in one line; ``--verbose`` adds the traceback.
Heavy imports (torch) happen inside the commands so that ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import Cancelled

PROG = "napari-unet"
# --class-balance words -> AnnotationSettings.balance
BALANCE_OPTIONS: dict[str, Any] = {"auto": "auto", "on": True, "off": False}
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 130

logger = logging.getLogger(__name__)


class CLIError(Exception):
    """A problem the user can fix; printed in one line."""


# ---------------------------------------------------------------------------
# small helpers


def _fmt_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _bar(**kwargs: Any) -> Any:
    """A tqdm bar on stderr, hidden when stderr is not a terminal (log files stay readable)."""
    from tqdm.auto import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, disable=None, **kwargs)


@contextlib.contextmanager
def _ctrl_c(on_first: Callable[[], None]) -> Iterator[dict[str, int]]:
    """First Ctrl-C calls ``on_first`` (a cooperative stop); the second aborts.

    The abort is a ``KeyboardInterrupt`` raised wherever the main thread is,
    except inside :func:`_shielded` cleanup (there it is raised when the
    cleanup ends): raised inside a finaliser, e.g. a generator's ``finally``
    run by the garbage collector, Python would print it and drop it. Signal
    handlers can only be installed from the main thread; elsewhere (e.g. when
    ``main`` runs in a worker thread) Ctrl-C keeps its default.
    """
    state = {"count": 0, "shield": 0, "raised": 0}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.getsignal(signal.SIGINT)
    wakeup = _PressCounter()

    def handler(signum: int, frame: Any) -> None:
        first = state["count"] == 0
        state["count"] += max(1, wakeup.presses())
        if first:
            on_first()
        if state["count"] >= 2 and not state["shield"]:
            _abort(state)

    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        state["shield"] += 1  # first: a press now must not cut the restoring short
        signal.signal(signal.SIGINT, previous)
        wakeup.close()
        if state["count"] >= 2 and not state["raised"]:  # pressed while shielded
            _abort(state)


class _PressCounter:
    """Counts SIGINTs as delivered, through :func:`signal.set_wakeup_fd`.

    Python runs a handler once for all the signals that arrived while the
    main thread was inside one C call (a torch forward pass can take
    seconds), so two quick Ctrl-Cs would look like one; the C-level handler
    writes a byte per signal to the wakeup fd, which this reads. Inactive
    (``presses()`` is 0) when the fd is taken, e.g. by an event loop.
    """

    def __init__(self) -> None:
        import socket

        self._sockets: tuple[Any, Any] | None = None
        try:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
        except OSError:
            return
        try:
            old = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError):
            old = None
        if old != -1:  # not ours to take (or failed): put it back
            if old is not None:
                signal.set_wakeup_fd(old)
            reader.close()
            writer.close()
            return
        self._sockets = reader, writer

    def presses(self) -> int:
        """SIGINTs delivered since the last call."""
        if self._sockets is None:
            return 0
        n = 0
        with contextlib.suppress(OSError):  # BlockingIOError: nothing more to read
            while True:
                data = self._sockets[0].recv(512)
                if not data:
                    break
                n += data.count(bytes([signal.SIGINT]))
        return n

    def close(self) -> None:
        if self._sockets is not None:
            signal.set_wakeup_fd(-1)
            for sock in self._sockets:
                sock.close()
            self._sockets = None


def _abort(state: dict[str, int]) -> None:
    state["raised"] = 1
    raise KeyboardInterrupt


@contextlib.contextmanager
def _shielded(state: dict[str, int]) -> Iterator[None]:
    """Cleanup that a second Ctrl-C must not interrupt half-way; the abort follows it."""
    state["shield"] += 1
    try:
        yield
    finally:
        state["shield"] -= 1
    if state["count"] >= 2 and not state["raised"] and not state["shield"]:
        _abort(state)


# ---------------------------------------------------------------------------
# train


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from ._saving import (
        DestinationError,
        DestinationExists,
        ModelNotSaved,
        check_destination,
        checkpoint_bytes,
        save_with_fallback,
    )
    from .annotations import AnnotationSettings
    from .batch import resolve_model_path
    from .checkpoint import load_checkpoint
    from .config import preset
    from .pretrained import default_checkpoint
    from .tiff_io import TiffSlices, read_tiff
    from .training import Trainer, TrainingConfig

    out = Path(args.output)
    try:  # now, not after minutes of training
        check_destination(out, overwrite=args.overwrite)
    except DestinationExists:
        raise CLIError(f"{out} exists; pass --overwrite to replace it") from None
    except DestinationError as exc:
        raise CLIError(str(exc)) from None
    if args.preset and args.from_:
        raise CLIError("--preset picks an architecture to train from scratch; it cannot be combined with --from")
    if args.resume and not args.from_:
        raise CLIError("--resume needs --from CHECKPOINT (the run to continue)")

    init = None
    model_cfg = None
    if args.from_:
        init = load_checkpoint(resolve_model_path(args.from_))
        source = f"fine-tuning {args.from_}" if not args.resume else f"resuming {args.from_}"
    elif args.preset:
        model_cfg = preset(args.preset)
        source = f"from scratch ({args.preset} network)"
    elif default_checkpoint() is not None:
        init = load_checkpoint(default_checkpoint())
        source = "fine-tuning the built-in default model"
    else:
        model_cfg = preset("default")
        source = "from scratch (default network; no pretrained model ships yet)"

    base: dict[str, Any] = {}
    if args.resume and init is not None:
        # continue the run with its whole recipe (augmentation and normalisation included)
        # unless told otherwise; the annotation flags and --device below always apply
        from .training import HARDWARE_FIELDS

        recipe = init.training_config()
        if recipe is not None:
            skip = {"annotation", *HARDWARE_FIELDS}
            base = {f.name: getattr(recipe, f.name) for f in fields(TrainingConfig) if f.name not in skip}
    chosen = {
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "learning_rate": args.lr,
        "seed": args.seed,
    }
    base.update({k: v for k, v in chosen.items() if v is not None})
    if "learning_rate" not in base and init is not None:
        from .config import FINETUNE_LEARNING_RATE

        base["learning_rate"] = FINETUNE_LEARNING_RATE  # fine-tuning: keep what the model knows
    annotation = AnnotationSettings(
        mode=args.mode, ignore_id=args.ignore_id, boundary_class=args.boundary_class,
        balance=BALANCE_OPTIONS[args.class_balance],
    )
    config = TrainingConfig(annotation=annotation, device=args.device, **base)

    reader = TiffSlices(args.image)
    try:
        try:
            labels = read_tiff(args.labels, lazy=False).data
        except (ValueError, OSError) as exc:
            raise CLIError(f"cannot read the labels {args.labels}: {exc}") from None
        trainer = Trainer(reader, labels, config, model=model_cfg, init=init, resume=args.resume)
        info = trainer.summary()
        try:  # the model's size is known now: is there room for it?
            check_destination(out, overwrite=True, need_bytes=checkpoint_bytes(info["parameters"]))
        except DestinationError as exc:
            raise CLIError(str(exc)) from None
        print(
            f"Training {source}: {info['parameters']:,} parameters on {info['device']}, "
            f"annotated slices {info['annotated_slices']}, validation on {info['validation']}, "
            f"{config.iterations} iterations."
        )
        result = _run_training(trainer)
    finally:
        reader.close()
    trained, final = result
    try:  # a failing write puts the model elsewhere rather than losing it
        saved = save_with_fallback(trained, out)
    except ModelNotSaved as exc:
        raise CLIError(str(exc)) from None
    best = trained.training.get("best_val_dice")
    best_text = "n/a" if best is None else f"{best:.3f}"
    if final.cancelled:
        print(
            f"Stopped at iteration {final.iteration} of {final.total} (Ctrl-C); saved the model "
            f"so far (iteration {trained.training.get('iteration')}, validation Dice {best_text}) "
            f"to {saved.path}."
        )
    else:
        print(
            f"Trained {final.iteration} iterations in {_fmt_seconds(final.elapsed_s)}; best validation "
            f"Dice {best_text} at iteration {trained.training.get('iteration')}; saved {saved.path}."
        )
    if saved.rescued:
        _err(
            f"{PROG}: error: could not save the model to {out}: {saved.reason}. The trained model "
            f"was saved to {saved.path} instead; move it where you want it."
        )
        return EXIT_FAILED
    return EXIT_OK


def _run_training(trainer: Any) -> tuple[Any, Any]:
    """Drain the trainer with a progress bar; first Ctrl-C stops it and keeps the model as validated then."""
    total = trainer.config.iterations
    bar = _bar(total=total, initial=trainer.start_iteration, unit="it", desc="train")
    plain = bool(bar.disable)
    every = max(1, total // 10)
    last_val: float | None = None

    def stop() -> None:
        trainer.cancel()
        _err("\nStopping after this iteration and keeping the model (Ctrl-C again to abort).")

    final = None
    with _ctrl_c(stop) as presses, bar:
        events = iter(trainer)
        try:
            for event in events:
                if event.done:
                    final = event
                    break
                if event.val_metric is not None:
                    last_val = event.val_metric
                post = {"loss": f"{event.loss:.4f}"}
                if last_val is not None:
                    post["val_dice"] = f"{last_val:.3f}"
                if event.best_metric is not None:
                    post["best"] = f"{event.best_metric:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(event.iteration - bar.n)
                if plain and (event.iteration % every == 0 or event.iteration == total):
                    _err(
                        f"iteration {event.iteration}/{total}  loss {event.loss:.4f}  "
                        + (f"val Dice {last_val:.3f}  " if last_val is not None else "")
                        + f"ETA {_fmt_seconds(event.eta_s)}"
                    )
        finally:
            # close the trainer here, not whenever the garbage collector gets to it: its
            # cleanup stops the batch thread, and a second Ctrl-C during it must abort
            with _shielded(presses):
                events.close()
    assert trainer.result is not None and final is not None
    return trainer.result, final


# ---------------------------------------------------------------------------
# segment


def _options(args: argparse.Namespace) -> Any:
    from .batch import BatchOptions

    return BatchOptions(
        instances=args.instances,
        probabilities=args.probabilities,
        probability_dtype=args.probability_dtype,
        tile_size=args.tile,
        batch_size=args.batch_size,
        tta=args.tta,
        device=args.device,
        overwrite=args.overwrite,
        min_size=args.min_size,
        instance_method=args.instance_method,
        precision=args.precision,
    )


def print_summary(results: Sequence[Any], outdir: Path, n_total: int | None = None) -> None:
    """The table at the end of a batch: what was done, skipped and why files failed."""
    from .batch import summarize_results

    counts = summarize_results(results)
    print()
    header = ", ".join(f"{counts[k]} {k}" for k in ("done", "skipped", "failed"))
    if n_total is not None and n_total > len(results):
        header += f", {n_total - len(results)} not started"
    print(f"Summary: {header}  (outputs in {outdir})")
    if not results:
        return
    width = min(40, max(len(r.input.name) for r in results))
    print(f"  {'status':8} {'file':{width}} {'time':>10}  details")
    for r in results:
        name = r.input.name if len(r.input.name) <= width else "..." + r.input.name[-(width - 3):]
        seconds = _fmt_seconds(r.seconds) if r.status == "done" else "-"
        if r.status == "done":
            details = ", ".join(p.name for p in r.outputs if p.suffix != ".json")
        else:
            details = r.reason
        print(f"  {r.status:8} {name:{width}} {seconds:>10}  {details}")


def cmd_segment(args: argparse.Namespace) -> int:
    from .batch import batch_segment_steps, expand_inputs, resolve_model_path
    from .errors import Cancelled

    options = _options(args)
    paths = expand_inputs(args.inputs)
    resolve_model_path(args.model)  # a missing model is reported before anything starts
    outdir = Path(args.output)
    stop = threading.Event()

    def on_first() -> None:
        stop.set()
        _err("\nCancelling: the current file's partial outputs are removed (Ctrl-C again to abort).")

    files_bar = _bar(total=len(paths), unit="file", desc="files", position=0)
    slice_bar = _bar(total=0, unit="slice", desc="", position=1, leave=False)
    results: list[Any] = []

    def finished(result: Any) -> None:
        results.append(result)
        files_bar.update(1)
        line = f"{result.status:8} {result.input.name}"
        if result.status == "done":
            line += f"  ({_fmt_seconds(result.seconds)})"
        elif result.reason:
            line += f"  ({result.reason})"
        files_bar.write(line, file=sys.stderr)

    try:
        with _ctrl_c(on_first), files_bar, slice_bar:
            if args.scheduler:
                from .cluster import batch_segment_distributed

                print(f"Segmenting {len(paths)} file(s) on the dask cluster at {args.scheduler}.")
                batch_segment_distributed(
                    args.model, paths, outdir, options, client=args.scheduler,
                    should_stop=stop.is_set, callback=lambda e: finished(e.result),
                )
            else:
                print(f"Segmenting {len(paths)} file(s) into {outdir}.")
                current = None
                steps = batch_segment_steps(args.model, paths, outdir, options, should_stop=stop.is_set)
                # closing: an abort between two events still deletes the temporary files
                with contextlib.closing(steps):
                    for event in steps:
                        if event.result is not None:
                            finished(event.result)
                            continue
                        if event.path != current:
                            current = event.path
                            slice_bar.reset(total=event.slices_total)
                            slice_bar.set_description(event.path.name[-30:], refresh=False)
                        slice_bar.update(event.slices_done - slice_bar.n)
    except Cancelled as exc:
        done = list(getattr(exc, "results", results))
        print_summary(done, outdir, len(paths))
        print("Cancelled; no partial outputs were left. Run the same command again to resume.")
        return EXIT_ABORTED
    print_summary(results, outdir)
    return EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


# ---------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    outdir = Path(args.outdir)
    print(f"napari-unet demo{' (quick)' if args.quick else ''}: writing to {outdir}/")
    train_bar = None
    seg_bar = None

    def on_train(event: Any) -> None:
        nonlocal train_bar
        if train_bar is None:
            train_bar = _bar(total=event.total, unit="it", desc="train")
        if not event.done:
            train_bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
            train_bar.update(event.iteration - train_bar.n)
        else:
            train_bar.close()

    def on_segment(event: Any) -> None:
        nonlocal seg_bar
        if seg_bar is None:
            seg_bar = _bar(total=event.slices_total, unit="slice", desc="segment")
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


# ---------------------------------------------------------------------------
# info


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from . import __version__
    from .devices import available_devices, cpu_only_torch_warning, nvidia_gpu_present
    from .pretrained import default_checkpoint

    print(f"napari-unet {__version__}")
    print(f"Python {platform.python_version()} on {platform.platform(terse=True)} ({platform.machine()})")
    cuda = torch.version.cuda or "none (CPU-only build)"
    print(f"torch {torch.__version__}: CUDA build {cuda}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        print(f"  cuDNN {torch.backends.cudnn.version()}")
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i} {props.name}, {props.total_memory / 2**30:.0f} GiB")
    for dist in ("numpy", "scipy", "scikit-image", "tifffile", "zarr", "dask", "distributed", "napari"):
        v = _version(dist)
        print(f"{dist:13} {v if v else 'not installed'}")
    devices = available_devices()
    print(f"Devices: {', '.join(devices)} (auto picks {devices[0]})")
    print(f"NVIDIA GPU present: {'yes' if nvidia_gpu_present() else 'no'}")
    ckpt = default_checkpoint()
    print(f"Pretrained default model: {ckpt if ckpt else 'none ships with this version'}")
    warning = cpu_only_torch_warning()
    if warning:
        print(f"WARNING: {warning}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# the parser

_MAIN_EPILOG = """\
examples:
  napari-unet demo                                  # the whole method on synthetic data, in minutes
  napari-unet train stack.tif painted.tif -o model.pt --iterations 500
  napari-unet segment -m model.pt data/ -o results/ --instances
  napari-unet segment -m model.pt 'runs/*/stack*.tif' -o results/ --scheduler tcp://head:8786
  napari-unet info

Run 'napari-unet COMMAND --help' for the options of a command.
"""

_TRAIN_EPILOG = """\
Labels: slices with no painted pixel are ignored. --mode dense (default,
napari's label painting): in a painted slice 0 is background and every
other id is one object. --mode scribbles (ilastik's convention): 0 =
unlabelled, 1 = background, 2.. = classes; sparse strokes are enough.

Ctrl-C stops training cleanly: the model so far is saved to -o and the
exit code is 0. A second Ctrl-C aborts without saving (exit code 130).
-o is checked before training starts; if saving still fails at the end
(disk full, permissions changed), the model is saved to
napari-unet-rescued-<date>-<time>.pt in the current folder (else the temp
folder), the message says where, and the exit code is 1.

examples:
  napari-unet train stack.tif painted.tif -o model.pt
  napari-unet train stack.tif painted.tif -o model.pt --from lab_model.pt --iterations 200
  napari-unet train stack.tif painted.tif -o model.pt --preset small --device cuda
  napari-unet train stack.tif painted.tif -o model2.pt --from model.pt --resume --iterations 1000
"""

_SEGMENT_EPILOG = """\
Outputs per input <stem>.tif in OUTDIR (same Z/Y/X shape, compressed,
resolution copied): <stem>_labels.tif (uint8 class ids), with --instances
<stem>_instances.tif (uint16, or uint32 when the ids need it; objects are
labelled per z-slice with ids unique across the stack), with --probabilities
<stem>_probabilities.tif, and <stem>_provenance.json (model checksum,
settings, versions, timings). Files are written to hidden temporary files and
renamed when complete; existing outputs are skipped unless --overwrite, so
re-running an interrupted command resumes it. Exit code 0 when every input
was done or skipped, 1 when any failed (see the summary table).

examples:
  napari-unet segment -m model.pt stack.tif -o results/
  napari-unet segment -m model.pt data/ more/*.tiff -o results/ --instances --probabilities
  napari-unet segment -m model.pt data/ -o results/ --scheduler tcp://10.0.0.1:8786
"""

_DEMO_EPILOG = """\
Writes demo_image.tif, demo_annotations.tif, demo_ground_truth.tif,
demo_model.pt, demo_image_labels.tif, demo_image_instances.tif and
demo_figure.png (image / prediction / ground truth) into --outdir, and prints
the accuracy on the slices that were not painted.
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show debug messages and full tracebacks")
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment electron-microscopy stacks with a U-Net trained on a few painted slices.",
        epilog=_MAIN_EPILOG,
        formatter_class=fmt,
        parents=[common],
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    devices = ("auto", "cuda", "cpu", "mps")

    p = sub.add_parser(
        "train", parents=[common], formatter_class=fmt, epilog=_TRAIN_EPILOG,
        help="train or fine-tune a model on painted slices",
        description="Train a U-Net on the painted slices of a stack. Without --from or --preset it\n"
        "fine-tunes the built-in default model when one ships, else trains from scratch.",
    )
    p.add_argument("image", metavar="IMAGE", help="the stack (2D or 3D TIFF)")
    p.add_argument("labels", metavar="LABELS", help="painted labels, same shape as IMAGE (0 = unpainted)")
    p.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="where to save the trained model (e.g. model.pt)")
    p.add_argument("--from", dest="from_", metavar="CHECKPOINT",
                   help="fine-tune this checkpoint ('default' = the built-in model)")
    from .config import PRESETS

    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="network size for training from scratch (default: 'default')")
    p.add_argument("--iterations", type=int, metavar="N", help="training iterations (default 500)")
    p.add_argument("--lr", type=float, metavar="RATE",
                   help="learning rate (default 1e-3 from scratch, 3e-4 when fine-tuning)")
    p.add_argument("--batch-size", type=int, metavar="N", help="patches per iteration (default 4)")
    p.add_argument("--patch-size", type=int, metavar="PX", help="output patch edge in pixels (default 128)")
    p.add_argument("--mode", choices=("dense", "scribbles"), default="dense",
                   help="how the labels were painted (default: dense)")
    p.add_argument("--ignore-id", type=int, metavar="ID", help="a label id meaning 'do not learn here'")
    p.add_argument("--boundary-class", action="store_true",
                   help="learn membranes between touching objects as a class of their own")
    p.add_argument("--class-balance", choices=tuple(BALANCE_OPTIONS), default="auto",
                   help="weight classes by inverse frequency (the paper's w_c); auto: for "
                   "scribbles only, since painted slices already show the true proportions")
    p.add_argument("--device", choices=devices, default="auto", help="where to train (default: auto)")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --from (optimizer state, iteration count)")
    p.add_argument("--overwrite", action="store_true", help="replace MODEL if it exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "segment", parents=[common], formatter_class=fmt, epilog=_SEGMENT_EPILOG,
        help="segment TIFF stacks with a trained model",
        description="Segment files, folders (their .tif/.tiff) or globs of 2D/3D TIFF stacks.\n"
        "Stacks are read and written slice by slice: stacks larger than memory are fine.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="TIFF files, folders or globs")
    p.add_argument("-m", "--model", required=True, metavar="MODEL",
                   help="checkpoint file ('default' = the built-in model)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--instances", action="store_true", help="also write object (instance) labels")
    from .prediction_settings import INSTANCE_METHODS, PRECISION_CHOICES

    p.add_argument("--instance-method", choices=INSTANCE_METHODS, default="components",
                   help="how objects are separated (default: components); 'fill' grows them over the "
                        "boundaries until they touch, for membrane-stained cells that tile the image")
    p.add_argument("--min-size", type=int, default=0, metavar="PX",
                   help="drop objects smaller than this many pixels (per slice)")
    p.add_argument("--probabilities", action="store_true", help="also write the foreground probability")
    p.add_argument("--probability-dtype", choices=("uint8", "float16"), default="uint8",
                   help="uint8 (0..255, default) or float16")
    p.add_argument("--tile", type=int, metavar="PX",
                   help="tile edge for prediction (default 512 on GPU, 256 on CPU)")
    p.add_argument("--batch-size", type=int, default=4, metavar="N", help="tiles per forward pass")
    p.add_argument("--tta", action="store_true", help="average over 8 flips/rotations (8x slower)")
    p.add_argument("--overwrite", action="store_true", help="redo files whose outputs exist")
    p.add_argument("--device", choices=devices, default="auto", help="where to predict (default: auto)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="arithmetic (default: auto = mixed precision on GPUs, bf16 on CPUs "
                        "that compute it natively, else float32)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run one dask.distributed task per stack on this scheduler "
                   "(tcp://host:8786 or a scheduler JSON file)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "demo", parents=[common], formatter_class=fmt, epilog=_DEMO_EPILOG,
        help="train and segment a synthetic stack end to end, and report the accuracy",
        description="Generate a synthetic EM stack, paint two slices from its ground truth, train,\n"
        "segment the whole stack, write a figure and print the accuracy.\n"
        "A few minutes on a 2-core CPU, faster on a GPU.",
    )
    p.add_argument("--outdir", default="napari-unet-demo", metavar="DIR",
                   help="where to write the demo files (default: ./napari-unet-demo)")
    p.add_argument("--quick", action="store_true", help="a tiny version that runs in seconds (for tests)")
    p.add_argument("--device", choices=devices, default="auto", help="where to run (default: auto)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", parents=[common], help="versions, devices and GPU warnings",
                       description="Print versions and the devices torch can use; warn when an\n"
                       "NVIDIA GPU is present but torch cannot use it.")
    p.set_defaults(func=cmd_info)
    return parser


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("napari_unet").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-unet`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "command", None) is None:
        parser.print_help()
        return EXIT_USAGE
    verbose = bool(getattr(args, "verbose", False))
    _setup_logging(verbose)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that the exit-time flush stays quiet
        return EXIT_OK
    except KeyboardInterrupt:
        _err(f"{PROG}: aborted")
        return EXIT_ABORTED
    except Cancelled as exc:
        _err(f"{PROG}: {exc}")
        return EXIT_ABORTED
    except Exception as exc:  # the CLI's job: one line for the user, traceback on request
        if verbose:
            traceback.print_exc()
        expected = isinstance(exc, (CLIError, ValueError, OSError))
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if not expected:
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        hint = "" if verbose or expected else " (run with --verbose for details)"
        _err(f"{PROG}: error: {text}{hint}")
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
