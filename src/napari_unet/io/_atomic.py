"""Atomic file writing: a crash or a cancel never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Iterator

logger = logging.getLogger(__name__)

#: Temporaries untouched for this long are stale whoever wrote them (a live writer
#: keeps touching its file; a process on another host cannot be asked).
STALE_AFTER_S = 24 * 3600


@functools.lru_cache(maxsize=1)
def host_tag() -> str:
    """8 hex digits naming this machine in temporary file names (file-name safe, fixed length)."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_name(path: str | os.PathLike) -> str:
    """``.<name>.<host>-<pid>-<random>.part``: hidden, and it says which process writes it.

    Knowing the writer lets a later run tell the leftovers of a killed process
    (same host, pid gone) from the file another running process is writing.
    """
    return f".{Path(path).name}.{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.part"


def temp_beside(path: str | os.PathLike) -> Path:
    """An empty hidden temporary file next to ``path`` (same file system: rename is atomic).

    Created with the usual permissions (0666 less the umask), unlike
    ``tempfile.mkstemp``'s private 0600, so that outputs and checkpoints in a
    shared lab folder stay readable by colleagues after the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / temp_name(path)
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    On any exception the temporary file is removed and the final name is untouched.
    """
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the original error is the one to report
            tmp.unlink()
        raise


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Temporaries of the final name ``name``: ours (host, pid), and two older forms
    (``.<name>.<12 hex>.part``, ``.<name>.<pid>.part``) that only age can retire.
    A second leading dot and a tail after ``.part`` cover a temporary's own
    temporary (e.g. the uint16 re-encoding of an instances file)."""
    return re.compile(
        r"\.\.?" + re.escape(name)
        + r"\.(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}|[0-9a-f]{12}|\d+)\.part(?:\..*)?"
    )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine; True when that cannot be told."""
    if pid == os.getpid():
        return True
    if os.name == "nt" or pid <= 0:  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def remove_stale_temps(final_path: str | os.PathLike, *, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the hidden temporaries a killed writer of ``final_path`` left beside it.

    A temporary is stale when its writer ran on this host and that process is
    gone, or when it has not been touched for ``max_age_s``. Temporaries of
    running processes (this one included) are left alone. Never raises: a
    leftover that cannot be removed is only logged. Returns what was removed.
    """
    path = Path(final_path)
    pattern = _temp_pattern(path.name)
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(".") and pattern.fullmatch(e.name)]
    except OSError:  # no folder yet, or not listable: nothing of ours there
        return removed
    now = time.time()
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
            match = pattern.fullmatch(entry.name)
            assert match is not None
            host, pid = match.group("host"), match.group("pid")
            dead = host == host_tag() and pid is not None and not pid_alive(int(pid))
            if not (dead or age > max_age_s):
                continue
            os.unlink(entry.path)
        except FileNotFoundError:  # another run cleaned it up first
            continue
        except OSError as exc:
            logger.warning("could not remove the stale temporary file %s: %s", entry.path, exc)
            continue
        logger.info("removed a stale temporary file %s", entry.path)
        removed.append(Path(entry.path))
    return removed
