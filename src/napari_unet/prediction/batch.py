"""Batch segmentation of TIFF stacks, including stacks far larger than memory.

The same trained model is applied to many files, unattended. Every input is
read lazily (:class:`~napari_unet.io.tiff_slices.TiffSlices`), predicted slice by
slice and written page by page to hidden temporary files that are renamed
into place only when the whole file is done; so peak memory is a few slices
whatever the depth, and an interrupted batch resumes where it stopped
(finished outputs are skipped, no half-written file carries a final name).

Outputs for ``<stem>.tif``, all with the input's Z/Y/X shape (no extra axis),
zlib-compressed, with its pixel size, z spacing and unit:

- ``<stem>_labels.tif``: semantic class ids as uint8 (0 = background).
- ``<stem>_instances.tif`` (``instances=True``): object ids, labelled per
  z-slice in 2D (EM sections are anisotropic, and per-slice labelling keeps
  memory flat), with ids unique across the whole stack (slice ``z``'s ids
  follow slice ``z - 1``'s). uint16 when the last id fits, else uint32:
  the ids are written as uint32 first, then re-encoded page by page.
- ``<stem>_probabilities.tif`` (``probabilities=True``): foreground
  probability ``1 - p(background)``, uint8 scaled to 0..255 or float16.
- ``<stem>_uncertainty.tif`` (``uncertainty=True``): per-pixel uncertainty in
  [0, 1] (``uncertainty_method``), in the probabilities' dtype and scaling.
- ``<stem>_provenance.json``: model path and sha256, settings, package and
  torch versions, timings, input shape. Written last: it marks a finished file.

A damaged or unsuitable input (corrupt, truncated, 4D, RGB, too small) gives
a ``"failed"`` :class:`FileResult` with the reason and the batch goes on.
``should_stop`` cancels cooperatively: :class:`~napari_unet.errors.Cancelled`
is raised (with the finished files' results as its ``results`` attribute)
after the current file's temporary outputs are deleted.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import glob
import hashlib
import json
import logging
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np

from .. import __version__
from .._validation import as_stack
from ..errors import Cancelled
from ..io._atomic import remove_stale_temps, temp_beside
from ..io.tiff import TIFF_SUFFIXES, TiffPageWriter, write_tiff_pages
from ..io.tiff_slices import TiffSlices
from .settings import INSTANCE_METHODS, PredictionSettings

logger = logging.getLogger(__name__)

StopCallback = Callable[[], bool]

#: Output kinds, in the order they are renamed into place (provenance last).
LABELS, INSTANCES, PROBABILITIES, PROVENANCE = "labels", "instances", "probabilities", "provenance"
UNCERTAINTY = "uncertainty"
_SUFFIX = {
    LABELS: "_labels.tif",
    INSTANCES: "_instances.tif",
    PROBABILITIES: "_probabilities.tif",
    UNCERTAINTY: "_uncertainty.tif",
    PROVENANCE: "_provenance.json",
}
PROBABILITY_DTYPES = ("uint8", "float16")
__all__ = ["INSTANCE_METHODS", "BatchOptions", "FileResult", "BatchProgress", "batch_segment"]
_UINT16_MAX = int(np.iinfo(np.uint16).max)


@dataclass(frozen=True)
class BatchOptions(PredictionSettings):
    """How to predict (every :class:`PredictionSettings` field) and what to write.

    The prediction fields mean what they mean everywhere; here
    ``probabilities`` (default False) asks for a ``_probabilities.tif`` and
    ``instances`` for an ``_instances.tif``, ``uncertainty`` for an
    ``_uncertainty.tif``. Batch-only: ``probability_dtype`` (also the
    uncertainty map's) and ``overwrite``.
    """

    probabilities: bool = False
    probability_dtype: str = "uint8"  # or "float16"
    overwrite: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.probability_dtype not in PROBABILITY_DTYPES:
            raise ValueError(
                f"probability_dtype must be one of {PROBABILITY_DTYPES}, got {self.probability_dtype!r}"
            )
        if not isinstance(self.overwrite, (bool, np.bool_)):
            raise ValueError(f"overwrite must be True or False, got {self.overwrite!r}")
        object.__setattr__(self, "overwrite", bool(self.overwrite))

    def prediction(self) -> PredictionSettings:
        """Just the prediction part: what the engine needs."""
        return PredictionSettings.build(
            **{name: getattr(self, name) for name in PredictionSettings.names()}
        )


@dataclass
class FileResult:
    """What happened to one input: ``status`` is ``"done"``, ``"skipped"`` or ``"failed"``."""

    input: Path
    status: str
    outputs: list[Path] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")


@dataclass(frozen=True)
class BatchProgress:
    """Progress of a batch; ``result`` is set on the event that finishes a file."""

    file_index: int
    n_files: int
    path: Path
    slices_done: int
    slices_total: int
    result: FileResult | None = None


# ---------------------------------------------------------------------------
# Inputs and output names


def _natural_key(path: Path) -> list[Any]:
    """Sort ``slice_2`` before ``slice_10``, as a biologist reading a folder expects."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES and not path.name.startswith(".")


def expand_inputs(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Files, folders (their ``*.tif``/``*.tiff``, not recursive) and globs -> sorted unique files.

    An explicitly named file is taken whatever its suffix (it fails later if it
    is no TIFF). A named path that does not exist is a ``ValueError`` (a typo
    should not cost a night's run); so is an empty result.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found.extend(p for p in path.iterdir() if p.is_file() and _is_tiff(p))
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(text):
            matches = [Path(p) for p in glob.glob(os.path.expanduser(text))]
            found.extend(p for p in matches if p.is_file() and _is_tiff(p))
        else:
            missing.append(text)
    if missing:
        raise ValueError(f"input not found: {', '.join(missing)}")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    if not unique:
        raise ValueError(f"no .tif/.tiff files found in {', '.join(os.fspath(i) for i in inputs)}")
    return sorted(unique.values(), key=_natural_key)


def output_paths(input: Path, outdir: Path, options: BatchOptions) -> dict[str, Path]:
    """Where the outputs of ``input`` go: ``{kind: path}`` for the kinds ``options`` asks for."""
    stem = Path(input).name
    for suffix in sorted(TIFF_SUFFIXES, key=len, reverse=True):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    kinds = [LABELS]
    if options.instances:
        kinds.append(INSTANCES)
    if options.probabilities:
        kinds.append(PROBABILITIES)
    if options.uncertainty:
        kinds.append(UNCERTAINTY)
    kinds.append(PROVENANCE)
    return {k: Path(outdir) / f"{stem}{_SUFFIX[k]}" for k in kinds}


def find_conflicts(paths: list[Path], outdir: Path, options: BatchOptions) -> dict[Path, FileResult]:
    """Inputs that must not run: outputs of another input, or sharing output names with one."""
    owner: dict[Path, Path] = {}
    produced: dict[Path, Path] = {}
    for p in paths:
        for out in output_paths(p, outdir, options).values():
            produced.setdefault(out.resolve(), p)
    found: dict[Path, FileResult] = {}
    for p in paths:
        source = produced.get(p.resolve())
        if source is not None and source != p:
            found[p] = FileResult(p, "skipped", reason=f"it is an output of {source.name}")
            continue
        labels = output_paths(p, outdir, options)[LABELS].resolve()
        first = owner.setdefault(labels, p)
        if first != p:
            found[p] = FileResult(
                p,
                "failed",
                reason=f"its outputs would overwrite those of {first} (same file name); "
                "segment it into another output folder",
            )
    return found


# ---------------------------------------------------------------------------
# The model and what identifies it


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Checksum of a file, read in chunks (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_sha256(trained: Any) -> str:
    """Checksum of an in-memory model's weights (no file to hash)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trained.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A checkpoint path, with ``"default"`` meaning the pretrained model shipped with the package."""
    if os.fspath(model) == "default" and not Path("default").exists():
        from ..model.pretrained import default_checkpoint

        path = default_checkpoint()
        if path is None:
            raise ValueError(
                "no pretrained default model ships with this napari-unet version yet; train one "
                "(napari-unet train IMAGE LABELS -o model.pt) and pass its path"
            )
        return path
    path = Path(model).expanduser()
    if not path.is_file():
        raise ValueError(f"model file not found: {path}")
    return path


def load_model(model: Any) -> tuple[Any, dict[str, Any]]:
    """``(TrainedModel, identity)`` for a TrainedModel, a checkpoint path or ``"default"``.

    ``identity`` (path and sha256) goes into every provenance record.
    """
    from ..model.checkpoint import TrainedModel, load_checkpoint

    if isinstance(model, TrainedModel):
        return model, {"path": None, "weights_sha256": _weights_sha256(model)}
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a TrainedModel or a checkpoint path, got {type(model).__name__}")
    path = resolve_model_path(model)
    trained = load_checkpoint(path)
    return trained, {"path": str(path.resolve()), "sha256": file_sha256(path)}


def model_record(trained: Any, identity: dict[str, Any]) -> dict[str, Any]:
    """What a provenance record says about the model (TIFF batch and zarr volumes alike)."""
    training = trained.training or {}
    return {
        **identity,
        "class_names": list(trained.class_names),
        "config": trained.config.to_dict(),
        "normalization": trained.normalization.to_dict(),
        "trained_iterations": training.get("iteration"),
        "best_val_dice": training.get("best_val_dice"),
    }


class BatchEngine:
    """A model on its device plus its identity: built once per batch (or per worker task).

    ``close`` (or ``with``) hands the device copy of the weights back.
    """

    def __init__(self, trained: Any, identity: dict[str, Any], options: BatchOptions) -> None:
        from .stack import PredictionEngine

        self.trained = trained
        self.identity = identity
        self.engine = PredictionEngine(trained, options.prediction())

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------
# One file


def _check_input(reader: TiffSlices) -> None:
    """Reject shapes and dtypes the network cannot take, without reading pixels."""
    # a zero-stride view has the file's shape and dtype and costs no memory
    as_stack(np.broadcast_to(np.zeros((), reader.dtype), reader.shape), reader.path.name)


def _reason(exc: BaseException) -> str:
    """One line for the summary table: our own errors speak for themselves."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if isinstance(exc, (ValueError, OSError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically, like the TIFFs (a half-written JSON would mark a file as done)."""
    tmp = temp_beside(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _narrow_to_uint16(tmp: Path, shape: tuple[int, ...], spacing: Any, unit: Any) -> Path:
    """Re-encode a finished uint32 temporary labels file as uint16, page by page."""
    target = tmp.with_name(tmp.name + ".u16")
    with TiffSlices(tmp) as src:
        depth = 1 if len(shape) == 2 else shape[0]
        pages = (src.slice(z).astype(np.uint16) for z in range(depth))
        write_tiff_pages(target, pages, shape, np.uint16, spacing=spacing, unit=unit, overwrite=True)
    tmp.unlink(missing_ok=True)
    return target


def _open_writers(
    writers: dict[str, TiffPageWriter],
    wanted: list[str],
    targets: dict[str, Path],
    reader: TiffSlices,
    options: BatchOptions,
) -> None:
    """Hidden temporary TIFF writers for the outputs this file still needs."""
    shape = reader.shape
    meta = {"spacing": reader.spacing, "unit": reader.unit, "overwrite": True}
    if LABELS in wanted:
        writers[LABELS] = TiffPageWriter(targets[LABELS], shape, np.uint8, **meta)
    if INSTANCES in wanted:
        # ids grow through the stack: uint32 now, uint16 at the end if they fit
        writers[INSTANCES] = TiffPageWriter(targets[INSTANCES], shape, np.uint32, **meta)
    for kind in (PROBABILITIES, UNCERTAINTY):
        if kind in wanted:
            writers[kind] = TiffPageWriter(targets[kind], shape, np.dtype(options.probability_dtype), **meta)


def unit_page(values: np.ndarray, dtype: str) -> np.ndarray:
    """A [0, 1] map as a page: uint8 scaled to 0..255, or float16."""
    if dtype == "uint8":
        return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return values.astype(np.float16)


def _provenance(
    path: Path,
    reader: TiffSlices,
    engine: BatchEngine,
    options: BatchOptions,
    walk: Any,
    targets: dict[str, Path],
    finals: dict[str, Path],
    dtypes: dict[str, str],
    kept: list[Path],
    seconds: float,
) -> dict[str, Any]:
    """The ``_provenance.json`` record of a finished file: what, with which model, how, how fast."""
    predictor = engine.engine.predictor
    shape = reader.shape
    pixels = int(np.prod(shape))
    return {
        "napari_unet_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "path": str(path.resolve()),
            "shape": list(shape),
            "dtype": str(reader.dtype),
            "spacing": None if reader.spacing is None else list(reader.spacing),
            "unit": reader.unit,
            "bytes": path.stat().st_size,
        },
        "model": model_record(engine.trained, engine.identity),
        "settings": {
            **options.to_dict(),
            "tile_size_used": predictor.tile_size,
            "device_used": str(predictor.device),
            "precision_used": predictor.precision_used,
            "normalization_low_high": [walk.low, walk.high],
            "engine_notices": list(predictor.notices),
        },
        "outputs": {k: {"file": targets[k].name, "dtype": dtypes[k]} for k in finals},
        "kept_existing": [p.name for p in kept],
        "instances": None
        if INSTANCES not in finals
        else {"labelling": "2D per slice, ids unique across the stack", "count": walk.n_objects},
        "timings": {
            "seconds": round(seconds, 3),
            "statistics_seconds": round(walk.statistics_seconds, 3),
            "network_seconds": round(walk.network_seconds, 3),
            "megapixels_per_second": round(pixels / 1e6 / max(seconds, 1e-9), 3),
        },
        "environment": _environment(),
    }


def segment_with_engine(
    engine: BatchEngine,
    path: Path,
    outdir: Path,
    options: BatchOptions,
    should_stop: StopCallback | None,
) -> Generator[tuple[int, int], None, FileResult]:
    """Segment one file with a ready engine: yields ``(slices_done, total)``, returns the result.

    The per-file half of :func:`batch_segment_steps` and of the cluster's tasks.
    """
    from .stack import StackPrediction

    t0 = time.perf_counter()
    path = Path(path)
    targets = output_paths(path, outdir, options)
    for target in targets.values():  # what a killed earlier run left beside its outputs
        remove_stale_temps(target)
    present = [k for k, p in targets.items() if p.exists()]
    if not options.overwrite and len(present) == len(targets):
        return FileResult(path, "skipped", [targets[k] for k in targets], "outputs exist")
    # without overwrite, outputs that exist (e.g. labels, when probabilities are
    # asked for on a second run) are kept and only the missing ones are written
    wanted = [k for k in targets if k != PROVENANCE and (options.overwrite or k not in present)]
    kept = [targets[k] for k in present if k != PROVENANCE and k not in wanted]

    writers: dict[str, TiffPageWriter] = {}
    temps: list[Path] = []
    committed: list[Path] = []
    reader: TiffSlices | None = None
    try:
        reader = TiffSlices(path)
        _check_input(reader)
        shape = reader.shape
        depth = 1 if reader.ndim == 2 else shape[0]
        yield 0, depth
        if should_stop is not None and should_stop():
            raise Cancelled("batch cancelled")

        predictor = engine.engine.predictor
        predictor.should_stop = should_stop
        predictor.progress = None
        stack = reader if reader.ndim == 3 else reader.slice(0)[None]
        # compute only what this file still needs (kept outputs are not redone)
        settings = dataclasses.replace(
            engine.engine.settings,
            instances=INSTANCES in wanted,
            probabilities=PROBABILITIES in wanted,
            uncertainty=UNCERTAINTY in wanted,
        )
        walk = StackPrediction(engine.engine, stack, should_stop=should_stop, settings=settings)

        _open_writers(writers, wanted, targets, reader, options)

        for result in walk:
            if LABELS in writers:
                writers[LABELS].write(result.semantic)
            if INSTANCES in writers:
                writers[INSTANCES].write(result.instances)
            if PROBABILITIES in writers:
                writers[PROBABILITIES].write(unit_page(result.foreground, options.probability_dtype))
            if UNCERTAINTY in writers:
                writers[UNCERTAINTY].write(unit_page(result.uncertainty, options.probability_dtype))
            z = result.z
            del result
            yield z + 1, depth

        # everything computed: finish the temporary files, then rename them all
        finals: dict[str, Path] = {}
        dtypes: dict[str, str] = {}
        for kind, writer in list(writers.items()):
            tmp = writer.finish()
            temps.append(tmp)  # ours to rename or delete from here on
            del writers[kind]
            dtypes[kind] = str(writer.dtype)
            if kind == INSTANCES and walk.n_objects <= _UINT16_MAX:
                tmp = _narrow_to_uint16(tmp, shape, reader.spacing, reader.unit)
                temps.append(tmp)
                dtypes[kind] = "uint16"
            finals[kind] = tmp
        if should_stop is not None and should_stop():
            raise Cancelled("batch cancelled")
        for kind in (LABELS, INSTANCES, PROBABILITIES, UNCERTAINTY):
            if kind in finals:
                os.replace(finals[kind], targets[kind])
                committed.append(targets[kind])
        seconds = time.perf_counter() - t0
        record = _provenance(path, reader, engine, options, walk, targets, finals, dtypes, kept, seconds)
        write_json(targets[PROVENANCE], record)
        committed.append(targets[PROVENANCE])
        return FileResult(path, "done", committed + kept, "", seconds)
    except Cancelled:
        raise
    except Exception as exc:  # one bad file must not stop the batch: report it and go on
        logger.debug("segmenting %s failed", path, exc_info=True)
        return FileResult(path, "failed", committed, _reason(exc), time.perf_counter() - t0)
    finally:
        for writer in writers.values():
            writer.abort()
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if reader is not None:
            reader.close()


def _environment() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(terse=True),
    }


def segment_file_steps(
    model: Any,
    path: Path,
    outdir: Path,
    options: BatchOptions = BatchOptions(),
    should_stop: StopCallback | None = None,
) -> Generator[tuple[int, int], None, FileResult]:
    """Segment one file: yields ``(slices_done, slices_total)``, returns its :class:`FileResult`.

    ``model`` is a :class:`~napari_unet.model.checkpoint.TrainedModel` (or a
    checkpoint path). Raises :class:`~napari_unet.errors.Cancelled` when
    ``should_stop()`` turns true, after deleting the temporary outputs.
    """
    trained, identity = load_model(model)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with BatchEngine(trained, identity, options) as engine:
        return (yield from segment_with_engine(engine, Path(path), outdir, options, should_stop))


# ---------------------------------------------------------------------------
# Many files


def batch_segment_steps(
    model: Any,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    outdir: str | os.PathLike,
    options: BatchOptions = BatchOptions(),
    should_stop: StopCallback | None = None,
) -> Generator[BatchProgress, None, list[FileResult]]:
    """Segment every input; yields :class:`BatchProgress` per slice, returns the results.

    Problems with the batch as a whole (no inputs, unreadable model, output
    folder not writable) raise before any work; problems with one file are
    reported in its result. The model is loaded and moved to its device once.
    """
    paths = expand_inputs(inputs)
    outdir = Path(outdir).expanduser()
    outdir.mkdir(parents=True, exist_ok=True)
    if not os.access(outdir, os.W_OK):
        raise ValueError(f"output folder {outdir} is not writable")
    trained, identity = load_model(model)
    conflicts = find_conflicts(paths, outdir, options)
    with BatchEngine(trained, identity, options) as engine:
        return (yield from _run_files(engine, paths, outdir, options, conflicts, should_stop))


def _run_files(
    engine: BatchEngine,
    paths: list[Path],
    outdir: Path,
    options: BatchOptions,
    conflicts: dict[Path, FileResult],
    should_stop: StopCallback | None,
) -> Generator[BatchProgress, None, list[FileResult]]:
    results: list[FileResult] = []
    n = len(paths)
    logger.info("segmenting %d file(s) into %s on %s", n, outdir, engine.engine.device)
    for i, path in enumerate(paths):
        if should_stop is not None and should_stop():
            raise _cancelled(results, n)
        result = conflicts.get(path)
        total = 0
        if result is None:
            steps = segment_with_engine(engine, path, outdir, options, should_stop)
            try:
                while True:
                    done, total = next(steps)
                    yield BatchProgress(i, n, path, done, total)
            except StopIteration as stop:
                result = stop.value
            except Cancelled:
                raise _cancelled(results, n) from None
        if result.status == "failed":
            logger.info("%s failed: %s", path.name, result.reason)
        results.append(result)
        yield BatchProgress(i, n, path, total, total, result)
    return results


def _cancelled(results: list[FileResult], n: int) -> Cancelled:
    exc = Cancelled(f"batch cancelled after {len(results)} of {n} file(s)")
    exc.results = list(results)  # type: ignore[attr-defined]
    return exc


def batch_segment(
    model: Any,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    outdir: str | os.PathLike,
    options: BatchOptions = BatchOptions(),
    should_stop: StopCallback | None = None,
    callback: Callable[[BatchProgress], None] | None = None,
) -> list[FileResult]:
    """Run :func:`batch_segment_steps` to the end; ``callback`` sees every progress event."""
    steps = batch_segment_steps(model, inputs, outdir, options, should_stop)
    while True:
        try:
            event = next(steps)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)


def summarize_results(results: Sequence[FileResult]) -> dict[str, int]:
    """Counts per status, e.g. ``{"done": 3, "skipped": 1, "failed": 0}``."""
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts
