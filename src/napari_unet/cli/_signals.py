"""Ctrl-C handling for the long-running commands: the first press stops cleanly, the second aborts.

Training and segmentation run for minutes to hours; a first Ctrl-C must let
them finish the step in hand and keep (or clean up) their outputs, while a
second one must still get the user out. Doing that right takes signal
handlers, a wakeup fd to count presses that Python coalesces, and shields
around cleanup, which is one idea of its own and is kept out of the commands.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator


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

