"""Batch segmentation on a dask.distributed cluster: one task per stack.

Use an existing distributed engine rather than anything home-made: every
input becomes one ``dask.distributed`` task that runs the same streaming
per-file code as :mod:`napari_unet.prediction.batch` on a worker. Each worker process
loads the checkpoint once (a module-level cache keyed by path and sha256)
and keeps it for all the stacks it is given. Workers must see the inputs,
the output folder and the checkpoint under the same paths as the client (a
shared file system, as on any HPC cluster); the checkpoint's checksum is
verified on the worker.

dask/distributed are imported only when a function here runs (optional
extra ``napari-unet[distributed]``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import Cancelled
from .batch import (
    BatchEngine,
    BatchOptions,
    BatchProgress,
    FileResult,
    expand_inputs,
    file_sha256,
    find_conflicts,
    resolve_model_path,
    segment_with_engine,
)
from .worker_memory import release_free_memory

logger = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()
#: Checkpoint loads in this process (tests check that each worker loads once).
LOADS = 0


def _worker_model(model_path: str, sha256: str) -> Any:
    """The checkpoint, loaded once per process (the cache survives across tasks)."""
    global LOADS
    from ..model.checkpoint import load_checkpoint

    key = (model_path, sha256)
    with _MODELS_LOCK:
        trained = _MODELS.get(key)
        if trained is None:
            actual = file_sha256(model_path)
            if actual != sha256:
                raise ValueError(
                    f"the model file {model_path} on this worker differs from the client's "
                    "(checksum mismatch); workers must see the same file"
                )
            trained = load_checkpoint(model_path)
            _MODELS[key] = trained
            LOADS += 1
            logger.info("worker loaded %s", model_path)
    return trained


def _stop_checker(event_name: str | None, every_s: float = 2.0) -> Callable[[], bool] | None:
    """A should_stop that asks the scheduler's Event at most every ``every_s`` seconds."""
    if event_name is None:
        return None
    from distributed import Event

    event = Event(event_name)
    state = {"last": 0.0, "stop": False}

    def should_stop() -> bool:
        now = time.monotonic()
        if not state["stop"] and now - state["last"] >= every_s:
            state["last"] = now
            state["stop"] = bool(event.is_set())
        return state["stop"]

    return should_stop


def _segment_task(
    model_path: str,
    sha256: str,
    input_path: str,
    outdir: str,
    options: BatchOptions,
    stop_event: str | None = None,
) -> FileResult:
    """Runs on a worker: segment one stack with the worker's cached model."""
    path = Path(input_path)
    try:
        trained = _worker_model(model_path, sha256)
        # an engine per task (on a GPU, its own copy of the weights: a few MB):
        # tasks in a multi-threaded worker share no per-file state or device
        engine = BatchEngine(trained, {"path": model_path, "sha256": sha256}, options)
    except Exception as exc:  # reported per file, like any other failure
        return FileResult(path, "failed", reason=f"worker could not load the model: {exc}")
    steps = segment_with_engine(engine, path, Path(outdir), options, _stop_checker(stop_event))
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        return stop.value
    except Cancelled:
        return FileResult(path, "failed", reason="cancelled")
    finally:
        engine.close()
        release_free_memory()  # a worker runs stack after stack: keep its memory flat


def connect(scheduler: Any) -> tuple[Any, bool]:
    """``(client, owned)`` for a Client, a scheduler address or a scheduler JSON file."""
    try:
        from distributed import Client
    except ImportError:
        raise ValueError(
            "dask.distributed is not installed; pip install 'napari-unet[distributed]'"
        ) from None
    if isinstance(scheduler, Client):
        return scheduler, False
    text = os.fspath(scheduler)
    try:
        if text.endswith(".json") and Path(text).is_file():
            return Client(scheduler_file=text, timeout="10s"), True
        return Client(text, timeout="10s"), True
    except (OSError, TimeoutError, ValueError) as exc:
        raise ValueError(f"cannot connect to the dask scheduler at {text}: {exc}") from None


def batch_segment_distributed(
    model: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    outdir: str | os.PathLike,
    options: BatchOptions | None = None,
    client: Any = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    callback: Callable[[BatchProgress], None] | None = None,
) -> list[FileResult]:
    """Segment every input as one dask.distributed task per stack; results in input order.

    Args:
        model: checkpoint path (or ``"default"``) that every worker can read.
        client: a ``distributed.Client``, a scheduler address
            (``tcp://host:8786``) or a scheduler JSON file; None uses the
            current default client.
        should_stop: polled while waiting; when true the remaining tasks are
            cancelled, running ones stop at their next check (their
            temporary files are deleted) and :class:`Cancelled` is raised.
        callback: called with a :class:`BatchProgress` per finished file.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError(
            "distributed batches need the model as a checkpoint file that the workers can read; "
            "save it first (trained.save('model.pt'))"
        )
    from ..model.checkpoint import load_checkpoint

    options = options or BatchOptions()
    paths = expand_inputs(inputs)
    model_path = resolve_model_path(model).resolve()
    load_checkpoint(model_path)  # a bad checkpoint fails here, not on every worker
    sha256 = file_sha256(model_path)
    outdir = Path(outdir).expanduser().resolve()
    outdir.mkdir(parents=True, exist_ok=True)

    if client is None:
        from distributed import get_client

        try:
            client = get_client()
        except ValueError:
            raise ValueError("no dask client: pass client= or a scheduler address") from None
        owned = False
    else:
        client, owned = connect(client)
    try:
        return _run(client, str(model_path), sha256, paths, outdir, options, should_stop, callback)
    finally:
        if owned:
            client.close()


def _run(
    client: Any,
    model_path: str,
    sha256: str,
    paths: list[Path],
    outdir: Path,
    options: BatchOptions,
    should_stop: Callable[[], bool] | None,
    callback: Callable[[BatchProgress], None] | None,
) -> list[FileResult]:
    from distributed import Event, wait

    n = len(paths)
    index = {p: i for i, p in enumerate(paths)}
    results: dict[Path, FileResult] = {}

    def report(path: Path, result: FileResult) -> None:
        results[path] = result
        if result.status == "failed":
            logger.info("%s failed: %s", path.name, result.reason)
        if callback is not None:
            callback(BatchProgress(index[path], n, path, 1, 1, result))

    for path, result in find_conflicts(paths, outdir, options).items():
        report(path, result)

    run_id = uuid.uuid4().hex[:8]
    stop = Event(f"napari-unet-stop-{run_id}", client=client)
    futures = {
        client.submit(
            _segment_task,
            model_path,
            sha256,
            str(p.resolve()),
            str(outdir),
            options,
            stop.name,
            key=f"napari-unet-{p.name}-{run_id}-{i}",
            pure=False,
        ): p
        for i, p in enumerate(paths)
        if p not in results
    }
    logger.info("submitted %d task(s) to %s", len(futures), client.scheduler.address)
    pending = set(futures)
    try:
        while pending:
            if should_stop is not None and should_stop():
                stop.set()
                client.cancel(list(pending))
                exc = Cancelled(f"batch cancelled after {len(results)} of {n} file(s)")
                exc.results = [results[p] for p in paths if p in results]  # type: ignore[attr-defined]
                raise exc
            try:
                done, not_done = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished yet: poll should_stop again
                continue
            pending = set(not_done)
            for fut in done:
                path = futures[fut]
                try:
                    result = fut.result()
                except Exception as exc:  # a worker died or the task could not run
                    result = FileResult(path, "failed", reason=f"task failed: {type(exc).__name__}: {exc}")
                report(path, result)
    finally:
        if pending:
            client.cancel(list(pending))
    return [results[p] for p in paths]
