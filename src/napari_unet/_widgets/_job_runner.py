"""Starting, cancelling and finishing a panel's job (a mixin of ``JobWidget``).

A job runs in a napari ``thread_worker``: the Start button becomes Cancel,
a napari progress bar appears in the activity dock, and every value the job
yields is handled here on the main thread, one handler at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from magicgui.widgets import Label, ProgressBar, PushButton, Widget
    from napari.qt.threading import GeneratorWorker

logger = logging.getLogger(__name__)


#: Linux nice value of job threads (0 normal, 19 lowest): below napari's, not starved.
_JOB_NICE = 10


class JobRunnerMixin:
    """The worker thread behind Start/Cancel, and the delivery of what it sends.

    The handlers it delivers to (``on_yielded``, ``on_returned``, ``after_job``)
    are the panel's: ``JobWidget`` declares them.
    """

    start: PushButton
    progress: ProgressBar
    status: Label
    native: Any
    _start_text: str

    def _init_runner(self) -> None:
        self._worker: GeneratorWorker | None = None
        self._cancel_event: threading.Event | None = None
        self._pbar: Any = None
        self._pending: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._dispatching = False
        self._close_guard: _CloseGuard | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None

    def input_widgets(self) -> list[Widget]:
        """Widgets disabled while a job runs (the settings it was started with)."""
        keep = {id(self.start), id(self.progress), id(self.status)}
        return [w for w in self if id(w) not in keep]  # type: ignore[attr-defined]

    def run_job(
        self, job: Callable[..., Any], request: Any, *, total: int, desc: str
    ) -> GeneratorWorker:
        """Start ``job(request, cancel_event)`` in a worker thread; Start becomes Cancel."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self._cancel_event = threading.Event()
        worker = create_worker(
            _behind_the_viewer, job, request, self._cancel_event, _start_thread=False
        )

        # values reach the handlers only while this worker is the widget's current job
        def relay(handler: Callable[..., None]) -> Callable[..., None]:
            def deliver(*args: Any) -> None:
                if self._worker is worker:
                    self._dispatch(handler, *args)

            return deliver

        worker.yielded.connect(relay(self.on_yielded))
        worker.returned.connect(relay(self.on_returned))
        worker.errored.connect(relay(self._on_errored))
        worker.finished.connect(relay(self._on_finished))
        self._worker = worker
        self._pbar = progress(total=total, desc=desc)
        self.progress.max = max(1, total)
        self.progress.value = 0
        self.progress.visible = True
        for w in self.input_widgets():
            w.enabled = False
        self.start.text = "Cancel"
        self.start.enabled = True
        self._stop_when_closed(worker, self._cancel_event)
        worker.start()
        return worker

    def _stop_when_closed(self, worker: GeneratorWorker, cancel_event: threading.Event) -> None:
        """Closing the window mid-run stops the job (and frees its GPU memory).

        Otherwise it would keep running for a widget that no longer exists.
        """

        def stop_on_close(*_: Any) -> None:
            cancel_event.set()
            worker.quit()
            self._worker = None  # the Qt widgets are gone: drop the job's last signals
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None

        self._close_guard = _CloseGuard(self.native, stop_on_close)

    def _dispatch(self, handler: Callable[..., None], *args: Any) -> None:
        """Run job handlers one at a time, in the order the worker sent them.

        napari's progress bar and notifications call ``processEvents``, so a
        handler can be re-entered by the worker's next signal (even "finished")
        before it returns; queueing keeps each handler atomic.
        """
        self._pending.append((handler, args))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._pending:
                next_handler, next_args = self._pending.popleft()
                try:
                    next_handler(*next_args)
                except Exception:  # a GUI bug must not leave the widget stuck in "running"
                    logger.exception(
                        "napari-unet: error in %s", getattr(next_handler, "__name__", next_handler)
                    )
        finally:
            self._dispatching = False

    def set_progress(self, done: int) -> None:
        """Move both progress bars (the widget's and napari's activity dock) to ``done``."""
        self.progress.value = min(int(done), self.progress.max)
        if self._pbar is not None:
            delta = int(done) - int(self._pbar.n)
            if delta > 0:
                self._pbar.update(delta)

    def cancel(self) -> None:
        """Ask the running job to stop; it finishes its step and keeps what it made."""
        if self._cancel_event is not None and not self._cancel_event.is_set():
            self._cancel_event.set()
            self.start.text = "Cancelling..."
            self.start.enabled = False
            self.set_status("Cancelling after the current step...", "warn")  # type: ignore[attr-defined]

    def _on_errored(self, exc: BaseException) -> None:
        # napari's worker already shows the exception (with traceback) as a notification
        logger.error("napari-unet job failed", exc_info=(type(exc), exc, exc.__traceback__))
        self.set_status(f"Failed: {type(exc).__name__}: {exc}", "error")  # type: ignore[attr-defined]

    def _on_finished(self) -> None:
        logger.debug("%s job finished", type(self).__name__)
        if self._close_guard is not None:
            self._close_guard.release()
            self._close_guard = None
        self._worker = None
        self._cancel_event = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.progress.visible = False
        for w in self.input_widgets():
            w.enabled = True
        self.start.text = self._start_text
        keep = self.status.value, getattr(self, "status_level", "info")
        self.after_job()
        problem = self.revalidate()  # type: ignore[attr-defined]
        if problem is None:  # keep the job's final message rather than "Ready"
            self.set_status(*keep)  # type: ignore[attr-defined]


class _CloseGuard:
    """Ends a job when its panel goes away, and forgets the panel when the job ends.

    The panel's widget may be destroyed (the window closes), or napari's close
    button on its dock only unparents the panel and deletes the dock: the
    panel lives on, invisible, so the dock's end must end the job too.
    """

    def __init__(self, native: Any, stop: Callable[..., None]) -> None:
        from qtpy.QtWidgets import QDockWidget

        self.stop = stop
        self.sources = [native]
        parent = native.parentWidget()
        while parent is not None and not isinstance(parent, QDockWidget):
            parent = parent.parentWidget()
        if parent is not None:
            self.sources.append(parent)
        for source in self.sources:
            source.destroyed.connect(stop)

    def release(self) -> None:
        for source in self.sources:
            with contextlib.suppress(RuntimeError, TypeError):  # the dock may be gone
                source.destroyed.disconnect(self.stop)
        self.sources = []


def _behind_the_viewer(job: Callable[..., Any], *args: Any) -> Any:
    """Run the job generator ``job(*args)`` at a lower CPU priority than napari's thread.

    Training and prediction keep every core busy; at equal priority napari's
    repaints (software OpenGL on machines without a GPU driver) waited behind
    them for 300 ms and more. A nicer thread only yields when the viewer
    needs the CPU, so a job alone runs as fast as before. Linux gives each
    thread its own nice value and torch's helper threads inherit it from the
    thread that starts them; elsewhere this does nothing. (A pool thread keeps
    the lower priority for later background work: only raising it needs
    privileges.)
    """
    # only Linux: elsewhere (macOS) PRIO_PROCESS with a thread id names a *process*
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            nice = max(os.getpriority(os.PRIO_PROCESS, tid), _JOB_NICE)
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    return (yield from job(*args))
