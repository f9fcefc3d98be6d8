"""Saving a trained model without ever losing it to a bad path or a full disk.

Training takes minutes to hours; the file it ends in takes a second. So the
destination is checked *before* training (:func:`check_destination`), and if
the write still fails at the end (the disk filled up, permissions changed),
:func:`save_with_fallback` puts the model somewhere else and says where,
instead of dropping it with the error. The CLI and the napari Train panel
both use these.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ._atomic import remove_stale_temps, temp_name

if TYPE_CHECKING:
    from ..model.checkpoint import TrainedModel

logger = logging.getLogger(__name__)

RESCUE_PREFIX = "napari-unet-rescued-"


class DestinationError(OSError):
    """A model cannot be written where asked; the message says why (shown as is)."""


class DestinationExists(DestinationError):
    """The destination is an existing file and replacing it was not allowed."""


class ModelNotSaved(OSError):
    """Neither the chosen path nor any fallback folder took the model (it is only in memory)."""


def _existing_ancestor(folder: Path) -> Path:
    """The nearest folder (or file) on the way up from ``folder`` that exists."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MB"


def check_destination(path: str | os.PathLike, *, overwrite: bool = False, need_bytes: int = 0) -> Path:
    """Check that a file can be written at ``path``; raise :class:`DestinationError` if not.

    Checks that ``path`` is not a folder, that an existing file may be replaced
    (:class:`DestinationExists` otherwise), that its folder exists or can be
    created, and that a file can really be created there (a probe file is
    created and removed: permissions, read-only disks, ACLs and quotas all
    answer). ``need_bytes`` > 0 also asks for that much free space. Nothing
    is left behind, and a missing folder is not created yet.
    """
    path = Path(path)
    if path.is_dir():
        raise DestinationError(f"{path} is a folder; give a file name, e.g. {path / 'model.pt'}")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise DestinationExists(f"{path} exists")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise DestinationError(
            f"cannot save to {path}: {base} is a file, not a folder"
        )
    # probe in the folder itself, or where its first missing sub-folder would go
    missing = path.parent.absolute().relative_to(base).parts if base != path.parent.absolute() else ()
    probe = base / temp_name(missing[0] if missing else path)
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except OSError as exc:
        raise DestinationError(f"cannot save to {path}: cannot write in {base} ({exc.strerror})") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as exc:
        logger.warning("could not remove the probe file %s: %s", probe, exc)
    if need_bytes > 0:
        free = shutil.disk_usage(base).free
        if free < need_bytes:
            raise DestinationError(
                f"cannot save to {path}: only {_mb(free)} free on its disk, the model needs about "
                f"{_mb(need_bytes)}"
            )
    return path


def checkpoint_bytes(n_parameters: int) -> int:
    """A generous size estimate of a float32 checkpoint with its AdamW state (3 copies) plus 1 MB."""
    return 12 * int(n_parameters) + 2**20


def describe_write_error(exc: BaseException, path: str | os.PathLike | None = None) -> str:
    """Why a write failed, in words a user can act on (torch's own messages are cryptic)."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"the disk is full ({text})"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied ({text})"
    if code == errno.EROFS:
        return f"the disk is read-only ({text})"
    if isinstance(exc, IsADirectoryError):
        return f"it is a folder ({text})"
    if isinstance(exc, RuntimeError):  # torch's zip writer: "file write failed", "unexpected pos"
        free = None
        if path is not None:
            try:
                free = shutil.disk_usage(_existing_ancestor(Path(path).parent)).free
            except OSError:
                pass
        where = f"; {_mb(free)} free there" if free is not None else ""
        return f"the write stopped part-way, the disk may be full{where} ({text})"
    return text


@dataclass(frozen=True)
class SaveResult:
    """Where the model went; ``rescued`` when that is not where it was asked to go."""

    path: Path
    requested: Path
    error: BaseException | None = None

    @property
    def rescued(self) -> bool:
        return self.error is not None

    @property
    def reason(self) -> str:
        """Why the requested path failed ('' when it did not)."""
        return "" if self.error is None else describe_write_error(self.error, self.requested)


def rescue_folders() -> list[Path]:
    """Where a model goes when its own path fails: the current folder, the temp folder, home."""
    folders: list[Path] = []
    for get in (Path.cwd, lambda: Path(tempfile.gettempdir()), Path.home):
        try:
            folder = get().absolute()
        except (OSError, RuntimeError):  # a deleted cwd, no home
            continue
        if folder not in folders:
            folders.append(folder)
    return folders


def rescue_path(folder: Path) -> Path:
    """``napari-unet-rescued-<date>-<time>.pt`` in ``folder``, numbered if taken."""
    stem = RESCUE_PREFIX + time.strftime("%Y%m%d-%H%M%S")
    candidate = folder / f"{stem}.pt"
    n = 1
    while candidate.exists():
        n += 1
        candidate = folder / f"{stem}-{n}.pt"
    return candidate


def save_with_fallback(
    trained: TrainedModel,
    path: str | os.PathLike,
    *,
    fallback_folders: Sequence[str | os.PathLike] | None = None,
    **save_kwargs: Any,
) -> SaveResult:
    """Save ``trained`` to ``path``; if that fails, to a rescue file in a fallback folder.

    Stale temporaries of ``path`` (a killed earlier save) are removed first.
    Write errors (``OSError``, and ``RuntimeError`` from torch's writer on a
    full disk) never propagate as such: the result says where the model went
    and why ``path`` failed. Only when every folder fails is
    :class:`ModelNotSaved` raised; the model is then still the caller's, in
    memory. No temporary file is left behind either way.
    """
    path = Path(path)
    remove_stale_temps(path)
    try:
        return SaveResult(Path(trained.save(path, **save_kwargs)), path)
    except (OSError, RuntimeError) as exc:
        first = exc
    logger.info("could not save the model to %s: %s", path, first)
    failures = [f"{path}: {describe_write_error(first, path)}"]
    folders = rescue_folders() if fallback_folders is None else [Path(f) for f in fallback_folders]
    for folder in folders:
        try:
            target = rescue_path(folder)
            written = Path(trained.save(target, **save_kwargs))
        except (OSError, RuntimeError) as exc:
            failures.append(f"{folder}: {describe_write_error(exc, folder / 'x')}")
            continue
        logger.info("saved the model to %s instead of %s", written, path)
        return SaveResult(written, path, first)
    raise ModelNotSaved("could not save the model anywhere: " + "; ".join(failures))
