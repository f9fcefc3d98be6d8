"""Atomic file writing: a crash or a cancel never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


def temp_beside(path: str | os.PathLike) -> Path:
    """An empty hidden temporary file next to ``path`` (same file system: rename is atomic).

    Created with the usual permissions (0666 less the umask), unlike
    ``tempfile.mkstemp``'s private 0600, so that outputs and checkpoints in a
    shared lab folder stay readable by colleagues after the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.part"
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
        tmp.unlink(missing_ok=True)
        raise
