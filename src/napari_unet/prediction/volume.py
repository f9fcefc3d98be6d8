"""One volume (OME-Zarr or plain zarr) split into z-blocks, predicted here or on a dask cluster.

A volume too large for one machine's time is cut into blocks of ``block_z``
slices. Each block is one task: it reads its slices, predicts them with a
:class:`~napari_unet.prediction.stack.PredictionEngine` (on a cluster the
checkpoint is loaded once per worker, as in :mod:`.cluster`) and writes its
own z-range of the output OME-Zarr stores, whose chunks are ``block_z`` deep,
so no two tasks ever write the same chunk. The result is bit-identical to a
single-process run:

- normalisation statistics are computed once, on the whole volume, by the
  client and handed to every block;
- instance ids are numbered slice by slice in z order, as
  :class:`~.stack.StackPrediction` does: each block writes its block-local ids
  to a hidden scratch store and records its object count; a final pass adds
  to every block the objects of the blocks before it;
- with ``instances_3d`` the 2D objects are then linked across slices where
  they overlap (:mod:`.link_z`): every block computes the overlaps inside it
  and across its lower border from the scratch ids, the client numbers the
  linked groups, and the same final pass writes the 3D ids. They depend only
  on the 2D ids, so they too are the same for any block layout.

Outputs are written in place (not renamed into place: a volume may be larger
than what one rename-able temporary could hold). Each finished block leaves
a small JSON record in ``<stem>_labels.zarr/napari_unet_blocks/``, so an
interrupted run resumes with the blocks that have none; ``<stem>_provenance.json``
is written last and marks the volume as done. By default blocks split only z:
a block holds ``block_z`` whole slices in memory. With ``block_xy`` they split
y and x too (windows of ``block_xy`` pixels, also the outputs' xy chunk), and
each window is predicted with the whole slice's tile plan
(:mod:`.volume_xy`), so labels and probabilities stay bit-identical.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..errors import Cancelled
from ..io.zarr_volume import ZarrVolume, create_ome_zarr, zarr_stem
from .batch import (
    INSTANCES,
    LABELS,
    PROBABILITIES,
    PROVENANCE,
    UNCERTAINTY,
    BatchOptions,
    FileResult,
    load_model,
    model_record,
    unit_page,
    write_json,
)
from .worker_memory import release_free_memory, trimmed
from .z_context import resolve_z_sigma

StopCallback = Callable[[], bool]
BLOCK_Z = 16
_RECORDS = "napari_unet_blocks"
_KINDS = (LABELS, INSTANCES, PROBABILITIES, UNCERTAINTY)


def volume_outputs(input: str | os.PathLike, outdir: str | os.PathLike, options: BatchOptions) -> dict[str, Path]:
    """``{kind: path}``: ``<stem>_labels.zarr`` etc., as batch names its TIFFs, and the provenance."""
    stem = zarr_stem(input)
    wanted = {LABELS: True, INSTANCES: options.instances, PROBABILITIES: options.probabilities,
              UNCERTAINTY: options.uncertainty}
    paths = {k: Path(outdir) / f"{stem}_{k}.zarr" for k in _KINDS if wanted[k]}
    paths[PROVENANCE] = Path(outdir) / f"{stem}_provenance.json"
    return paths


@dataclass(frozen=True)
class VolumeJob:
    """Everything a block task needs (picklable: it travels to the workers)."""

    input: str
    level: int
    outputs: dict[str, str]  # kind -> OME-Zarr store (provenance excluded)
    scratch: str | None  # block-local instance ids, before the offset pass
    options: BatchOptions
    low: float
    high: float
    block_xy: int | None = None  # xy window edge; None: whole slices
    link_overlap: float | None = None  # 3D instances: link overlap fraction; None: 2D ids

    @property
    def records(self) -> Path:
        return Path(self.outputs[LABELS]) / _RECORDS


def blocks(depth: int, block_z: int) -> list[tuple[int, int]]:
    """``[(z0, z1), ...]`` covering ``depth`` slices, ``block_z`` at a time."""
    return [(z0, min(z0 + block_z, depth)) for z0 in range(0, depth, block_z)]


Block = tuple[int, int, Any]  # z0, z1, xy window (y0, y1, x0, x1) or None (whole slices)


def volume_blocks(shape: tuple[int, ...], block_z: int, block_xy: int | None) -> list[Block]:
    """Every block of a volume, z-major: whole-slice z-blocks, or each z-block's xy windows."""
    from .volume_xy import xy_windows

    windows = [None] if block_xy is None else xy_windows(shape[1:], block_xy)
    return [(z0, z1, w) for z0, z1 in blocks(shape[0], block_z) for w in windows]


def _record_path(job: VolumeJob, z0: int, z1: int, window: Any = None) -> Path:
    if window is None:
        return job.records / f"{z0:09d}-{z1:09d}.json"
    y0, _, x0, _ = window
    return job.records / f"{z0:09d}-{z1:09d}_y{y0:09d}_x{x0:09d}.json"


def _predict_window_block(engine: Any, job: VolumeJob, z0: int, z1: int, window: Any,
                          should_stop: StopCallback | None) -> dict[str, Any]:
    """One xy window of slices ``z0:z1`` (no instances), written in place with its record."""
    import zarr

    from .volume_xy import predict_window

    t0 = time.perf_counter()
    volume = ZarrVolume(job.input, job.level)
    y0, y1, x0, x1 = window
    shape = (z1 - z0, y1 - y0, x1 - x0)
    unit_dtype = np.dtype(job.options.probability_dtype)
    buffers = {LABELS: np.zeros(shape, np.uint8)}
    buffers.update({k: np.zeros(shape, unit_dtype) for k in (PROBABILITIES, UNCERTAINTY)
                    if k in job.outputs})
    source = {LABELS: "semantic", PROBABILITIES: "foreground", UNCERTAINTY: "uncertainty"}
    engine.should_stop = should_stop
    try:
        for z, result in predict_window(engine, volume, range(z0, z1), window,
                                        job.options.prediction(), (job.low, job.high)):
            for kind, data in buffers.items():
                page = result[source[kind]]
                data[z - z0] = page if kind == LABELS else unit_page(page, job.options.probability_dtype)
    finally:
        engine.should_stop = None
    for kind, data in buffers.items():
        zarr.open_array(f"{job.outputs[kind]}/0", mode="r+")[z0:z1, y0:y1, x0:x1] = data
    record = {"z": [z0, z1], "y": [y0, y1], "x": [x0, x1], "objects": 0,
              "seconds": round(time.perf_counter() - t0, 3)}
    write_json(_record_path(job, z0, z1, window), record)
    return record


def predict_block(engine: Any, job: VolumeJob, z0: int, z1: int,
                  should_stop: StopCallback | None = None, *, window: Any = None) -> dict[str, Any]:
    """Predict slices ``z0:z1`` (or one xy ``window`` of them) and write them and the block's record."""
    import zarr

    from .stack import StackPrediction

    if window is not None:
        return _predict_window_block(engine, job, z0, z1, window, should_stop)
    t0 = time.perf_counter()
    volume = ZarrVolume(job.input, job.level)
    settings = job.options.prediction()
    walk = StackPrediction(engine, volume, range(z0, z1), should_stop=should_stop,
                           settings=settings, statistics=(job.low, job.high))
    shape = (z1 - z0,) + volume.shape[1:]
    unit_dtype = np.dtype(job.options.probability_dtype)
    buffers = {LABELS: np.zeros(shape, np.uint8)}
    if INSTANCES in job.outputs:
        buffers[INSTANCES] = np.zeros(shape, np.uint32)
    for kind in (PROBABILITIES, UNCERTAINTY):
        if kind in job.outputs:
            buffers[kind] = np.zeros(shape, unit_dtype)
    for result in walk:
        i = result.z - z0
        buffers[LABELS][i] = result.semantic
        if INSTANCES in buffers:
            buffers[INSTANCES][i] = result.instances
        if PROBABILITIES in buffers:
            buffers[PROBABILITIES][i] = unit_page(result.foreground, job.options.probability_dtype)
        if UNCERTAINTY in buffers:
            buffers[UNCERTAINTY][i] = unit_page(result.uncertainty, job.options.probability_dtype)
    for kind, data in buffers.items():
        store = job.scratch if kind == INSTANCES else job.outputs[kind]
        zarr.open_array(f"{store}/0", mode="r+")[z0:z1] = data
    record = {"z": [z0, z1], "objects": walk.n_objects, "seconds": round(time.perf_counter() - t0, 3),
              "network_seconds": round(walk.network_seconds, 3)}
    write_json(_record_path(job, z0, z1), record)
    return record


def _block_task(model_path: str, sha256: str, job: VolumeJob, z0: int, z1: int,
                window: Any = None) -> dict[str, Any]:
    """Runs on a worker: one block with the worker's cached model."""
    from .cluster import _worker_model
    from .stack import PredictionEngine

    trained = _worker_model(model_path, sha256)
    try:
        with PredictionEngine(trained, job.options.prediction()) as engine:
            return predict_block(engine, job, z0, z1, window=window)
    finally:
        release_free_memory()  # a worker runs block after block: keep its memory flat


def _scratch_ids(job: VolumeJob, z0: int, z1: int, offset: int) -> np.ndarray:
    """Volume-wide 2D ids of slices ``z0:z1`` of one block: its scratch ids plus ``offset``.

    Always read from the scratch store, never from the output, so that every
    pass of the finish can be run again after an interruption.
    """
    import zarr

    ids = zarr.open_array(f"{job.scratch}/0", mode="r")[z0:z1]
    if offset:
        if offset + int(ids.max(initial=0)) > np.iinfo(np.uint32).max:
            raise ValueError("more than 2**32 - 1 objects; cannot store them as uint32")
        ids[ids > 0] += np.uint32(offset)
    return ids


def offset_block(job: VolumeJob, z0: int, z1: int, offset: int, table: str | None = None) -> None:
    """Final ids of one block: its block-local ids plus the objects of the blocks before it,
    mapped to 3D ids through the lookup table saved at ``table`` (an .npy) when given."""
    import zarr

    ids = _scratch_ids(job, z0, z1, offset)
    if table is not None:
        ids = np.load(table, mmap_mode="r")[ids]
    zarr.open_array(f"{job.outputs[INSTANCES]}/0", mode="r+")[z0:z1] = ids


def edge_block(job: VolumeJob, z0: int, z1: int, offset: int, below: int) -> np.ndarray:
    """The overlap edges of one block: inside ``z0:z1`` and, unless it is the first block,
    between slice ``z0 - 1`` (of the block below, whose offset is ``below``) and ``z0``."""
    from .link_z import stack_edges

    ids = _scratch_ids(job, z0, z1, offset)
    if z0 > 0:
        ids = np.concatenate([_scratch_ids(job, z0 - 1, z0, below), ids])
    return stack_edges(ids, job.link_overlap)


def _fingerprint(identity: dict[str, Any], options: BatchOptions, input: str, level: int,
                 shape: tuple[int, ...], block_z: int, block_xy: int | None = None,
                 link_overlap: float | None = None) -> str:
    """What a resumed run must share with the run that wrote the blocks."""
    settings = {k: v for k, v in options.to_dict().items() if k != "overwrite"}
    blocking: Any = block_z if block_xy is None else [block_z, block_xy]  # old runs' prints unchanged
    parts: list[Any] = [identity, settings, input, level, list(shape), blocking]
    if link_overlap is not None:  # only 3D runs add it: 2D runs keep their old prints
        parts.append({"instances_3d": link_overlap})
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _prepare(job: VolumeJob, volume: ZarrVolume, block_z: int, fingerprint: str, overwrite: bool) -> None:
    """Create the output stores, or check that existing ones belong to this run (resume)."""
    import zarr

    labels = Path(job.outputs[LABELS])
    if labels.exists() and not overwrite:
        attrs = dict(zarr.open_group(str(labels), mode="r").attrs).get("napari_unet", {})
        stores = list(job.outputs.values()) + ([job.scratch] if job.scratch else [])
        missing = [Path(p).name for p in stores if not Path(p).exists()]
        if attrs.get("run") == fingerprint and not missing:
            return
        if attrs.get("run") == fingerprint:
            raise ValueError(f"cannot resume {labels.name}: {', '.join(missing)} is missing; "
                             "pass overwrite=True (--overwrite) to start again")
        raise ValueError(
            f"{labels} exists and was written with another model, settings or block size; "
            "pass overwrite=True (--overwrite) to start again"
        )
    meta = {"spacing": volume.spacing, "unit": volume.unit, "chunk_z": block_z, "chunk_xy": job.block_xy}
    stores = {k: v for k, v in job.outputs.items() if k != LABELS}
    if job.scratch is not None:
        stores["scratch"] = job.scratch
    stores[LABELS] = job.outputs[LABELS]  # last: its attrs say the stores are ready
    dtypes = {LABELS: np.uint8, INSTANCES: np.uint32, "scratch": np.uint32}
    for kind, store in stores.items():
        shutil.rmtree(store, ignore_errors=True)
        dtype = dtypes.get(kind, np.dtype(job.options.probability_dtype))
        attrs = {"napari_unet": {"run": fingerprint, "kind": kind}} if kind == LABELS else None
        create_ome_zarr(store, volume.shape, dtype, attrs=attrs, **meta)


def _as_options(settings: Any) -> BatchOptions:
    """BatchOptions as they are; plain PredictionSettings with the outputs they ask for."""
    from .settings import PredictionSettings

    if settings is None:
        return BatchOptions()
    if isinstance(settings, BatchOptions):
        return settings
    if isinstance(settings, PredictionSettings):
        return BatchOptions(**settings.to_dict())
    raise TypeError(f"settings must be BatchOptions or PredictionSettings, got {type(settings).__name__}")


def _wait_all(client: Any, futures: list[Any], should_stop: StopCallback | None) -> list[Any]:
    """Results in order; a task's exception is raised here, a stop cancels what is left.

    Each result is fetched as its task completes and the future dropped at once
    (``futures`` is emptied), so a worker frees it then: were the results all
    gathered at the end, every worker would hold its share of them (the edge
    lists of a 3D-instance finish: memory growing with the volume).
    """
    from distributed import wait

    results: list[Any] = [None] * len(futures)
    index = {fut.key: i for i, fut in enumerate(futures)}
    pending = list(futures)
    futures.clear()
    try:
        while pending:
            if should_stop is not None and should_stop():
                raise Cancelled("volume prediction cancelled; run again to resume")
            try:
                done, not_done = wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            pending = list(not_done)
            for fut in done:
                results[index[fut.key]] = fut.result()  # raises the worker's exception (e.g. NaN in slice z)
            done = fut = None  # the last references: the scheduler may now forget these results
    finally:
        if pending:
            client.cancel(pending)
    return results


def _run_blocks(trained: Any, identity: dict[str, Any], job: VolumeJob, todo: list[Block],
                client: Any, should_stop: StopCallback | None) -> None:
    """Predict the blocks not yet recorded: here (one engine), or one dask task each."""
    if client is None:
        from .stack import PredictionEngine

        with PredictionEngine(trained, job.options.prediction()) as engine:
            for z0, z1, window in todo:
                predict_block(engine, job, z0, z1, should_stop, window=window)
        return
    if identity.get("path") is None:
        raise ValueError("a cluster needs the model as a checkpoint file the workers can read; "
                         "save it first (trained.save('model.pt'))")
    futures = [client.submit(_block_task, identity["path"], identity["sha256"], job, z0, z1, window,
                             key=f"napari-unet-block-{Path(job.input).name}-{z0}-{z1}-"
                                 f"{'' if window is None else '%d-%d-' % (window[0], window[2])}{time.time_ns()}",
                             pure=False) for z0, z1, window in todo]
    _wait_all(client, futures, should_stop)


def _map(client: Any, should_stop: StopCallback | None, fn: Callable[..., Any],
         args: list[tuple[Any, ...]]) -> list[Any]:
    """``fn(*a)`` for every ``a``: here in order, or one task each on the cluster."""
    if client is None:
        return [fn(*a) for a in args]
    # named after fn (not the wrapper), as the scheduler's dashboard shows them
    return _wait_all(client, [client.submit(trimmed, fn, *a, key=f"napari-unet-{fn.__name__}-{uuid.uuid4().hex}")
                              for a in args], should_stop)


def _finish_instances(job: VolumeJob, records: list[dict[str, Any]], client: Any,
                      should_stop: StopCallback | None) -> tuple[int, int | None]:
    """The offset pass: ids continue across blocks in z order, as in a single-process run.

    With 3D instances an edge pass comes first and the client saves the 2D-to-3D
    lookup table next to the scratch ids for the offset pass to apply. Returns
    the 2D object count and the 3D one (None without 3D instances).
    """
    from .link_z import link_components

    offsets = [int(o) for o in np.concatenate([[0], np.cumsum([r["objects"] for r in records])])]
    spans = [(r["z"][0], r["z"][1]) for r in records]
    table, n_3d = None, None
    if job.link_overlap is not None:
        below = [0] + offsets[:-2]
        edges = _map(client, should_stop, edge_block,
                     [(job, z0, z1, o, b) for (z0, z1), o, b in zip(spans, offsets, below)])
        lookup = link_components(offsets[-1], np.concatenate(edges) if edges else np.zeros((0, 2)))
        n_3d = int(lookup.max(initial=0))
        table = str(Path(job.scratch) / "napari_unet_link_z.npy")  # type: ignore[arg-type]
        np.save(table, lookup)
    _map(client, should_stop, offset_block, [(job, z0, z1, o, table) for (z0, z1), o in zip(spans, offsets)])
    return offsets[-1], n_3d


def _instances_record(job: VolumeJob, n_objects: int | None, n_3d: int | None) -> dict[str, Any] | None:
    """The provenance's "instances" entry: how the ids were made and how many there are."""
    if n_objects is None:
        return None
    if job.link_overlap is None:
        return {"labelling": "2D per slice, ids unique across the volume", "count": n_objects}
    return {"labelling": "3D: 2D objects linked across slices where they overlap by "
                         f">= {job.link_overlap:g} of the smaller",
            "count": n_3d, "count_2d": n_objects, "link_overlap": job.link_overlap}


def _provenance(job: VolumeJob, volume: ZarrVolume, trained: Any, identity: dict[str, Any],
                records: list[dict[str, Any]], instances: dict[str, Any] | None, block_z: int,
                seconds: float, distributed: bool) -> dict[str, Any]:
    from .batch import _environment

    return {
        "napari_unet_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": job.input, "level": job.level, "shape": list(volume.shape),
                  "dtype": str(volume.dtype), "spacing": volume.spacing and list(volume.spacing),
                  "unit": volume.unit},
        "model": model_record(trained, identity),
        "settings": {**job.options.to_dict(), "normalization_low_high": [job.low, job.high],
                     "block_z": block_z, "block_xy": job.block_xy, "blocks": len(records),
                     "distributed": distributed},
        "outputs": {k: Path(p).name for k, p in job.outputs.items()},
        "instances": instances,
        "timings": {"seconds": round(seconds, 3),
                    "block_seconds": round(sum(r["seconds"] for r in records), 3)},
        "environment": _environment(),
    }


def segment_volume(model: Any, input: str | os.PathLike, output: str | os.PathLike, *,
                   settings: Any = None, block_z: int = BLOCK_Z, block_xy: int | None = None,
                   client: Any = None, level: int = 0,
                   should_stop: StopCallback | None = None,
                   instances_3d: bool = False, link_overlap: float = 0.5) -> FileResult:
    """Segment one zarr volume into OME-Zarr outputs in ``output``, block by block.

    Args:
        model: a checkpoint path (needed with a cluster) or a TrainedModel.
        settings: :class:`BatchOptions` (what to compute and write) or PredictionSettings.
        block_z: slices per task; also the outputs' z chunk.
        block_xy: also cut slices into windows of this many pixels in y and x
            (also the outputs' xy chunk), for slices too large for one task.
            Labels, probabilities and uncertainty stay bit-identical to whole
            slices (each window runs the whole slice's tiles that touch it).
            Needs a valid-padding network, and refuses ``instances`` with a
            ValueError: an object crossing a window border would get two ids,
            and the ids would no longer match a single-process run.
        client: None (this process), a ``distributed.Client``, a scheduler
            address or a scheduler JSON file.
        level: multiscale level of an OME-Zarr input (0: full resolution).
        instances_3d: link the 2D objects of neighbouring slices that overlap
            by at least ``link_overlap`` of the smaller one into 3D objects
            (mitochondria, nuclei), across block borders too; the ids are
            the same for any ``block_z``. Implies ``instances`` (turned on
            if the settings leave it off); refused with ``block_xy``.
        link_overlap: that fraction, in (0, 1].

    Returns a ``"done"`` or ``"skipped"`` (provenance exists) FileResult;
    raises ValueError for a bad input (NaN slices named) and
    :class:`Cancelled` on ``should_stop`` (finished blocks are kept).
    """
    from .._validation import as_stack, check_positive_int

    t0 = time.perf_counter()
    options = _as_options(settings)
    block_z = check_positive_int(block_z, "block_z")
    link: float | None = None
    if instances_3d:
        from .link_z import check_min_overlap

        link = check_min_overlap(link_overlap)
        if block_xy is not None:
            raise ValueError("3D instances cannot be computed with xy blocks (block_xy): an object "
                             "crossing a block border would get two ids; use block_xy=None")
        options = dataclasses.replace(options, instances=True)
    if block_xy is not None:
        block_xy = check_positive_int(block_xy, "block_xy")
        if options.instances:
            raise ValueError("instances cannot be computed with xy blocks (block_xy): an object "
                             "crossing a block border would get two ids; use block_xy=None")
    path = Path(input).expanduser().resolve()
    outdir = Path(output).expanduser().resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    targets = volume_outputs(path, outdir, options)
    if targets[PROVENANCE].exists() and not options.overwrite:
        return FileResult(path, "skipped", list(targets.values()), "outputs exist")
    targets[PROVENANCE].unlink(missing_ok=True)
    volume = ZarrVolume(path, level)
    if volume.ndim != 3:
        raise ValueError(f"{path.name}: a volume needs three axes (z, y, x), got shape {volume.shape}")
    as_stack(np.broadcast_to(np.zeros((), volume.dtype), volume.shape), path.name)
    trained, identity = load_model(model)
    if block_xy is not None and trained.model.geometry.padding != "valid":
        raise ValueError("xy blocks (block_xy) need a valid-padding network; use block_xy=None")
    low, high = trained.normalization.statistics(volume)
    # "auto" z smoothing is decided once, on the whole volume, so that every block agrees
    options = dataclasses.replace(options, z_smoothing=resolve_z_sigma(options.z_smoothing, volume))
    scratch = str(outdir / f".{zarr_stem(path)}_instances.raw.zarr") if options.instances else None
    job = VolumeJob(str(path), int(level), {k: str(p) for k, p in targets.items() if k != PROVENANCE},
                    scratch, options, low, high, block_xy, link)
    _prepare(job, volume, block_z,
             _fingerprint(identity, options, str(path), level, volume.shape, block_z, block_xy, link),
             options.overwrite)
    owned = False
    if client is not None:
        from .cluster import connect

        client, owned = connect(client)
    try:
        return _run_volume(job, volume, trained, identity, targets, block_z, client, should_stop, t0)
    finally:
        if owned:
            client.close()


def _run_volume(job: VolumeJob, volume: ZarrVolume, trained: Any, identity: dict[str, Any],
                targets: dict[str, Path], block_z: int, client: Any,
                should_stop: StopCallback | None, t0: float) -> FileResult:
    """Blocks not recorded yet, then the instance offsets, then the provenance (marks done)."""
    every = volume_blocks(volume.shape, block_z, job.block_xy)
    todo = [b for b in every if not _record_path(job, *b).exists()]
    try:
        _run_blocks(trained, identity, job, todo, client, should_stop)
    except ValueError as exc:
        raise ValueError(f"{Path(job.input).name}: {exc}") from None
    records = [json.loads(_record_path(job, *b).read_text()) for b in every]
    n_objects, n_3d = _finish_instances(job, records, client, should_stop) if job.scratch else (None, None)
    seconds = time.perf_counter() - t0
    record = _provenance(job, volume, trained, identity, records, _instances_record(job, n_objects, n_3d),
                         block_z, seconds, client is not None)
    write_json(targets[PROVENANCE], record)
    if job.scratch:
        shutil.rmtree(job.scratch, ignore_errors=True)
    return FileResult(Path(job.input), "done", list(targets.values()), "", seconds)
