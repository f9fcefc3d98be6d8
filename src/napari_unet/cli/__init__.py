"""The ``napari-unet`` command line: train, segment, export, demo, info.

Exit codes: 0 all good (a training stopped early with Ctrl-C also counts: the
model so far is saved), 1 an error or at least one input failed, 2 a usage
error, 130 aborted (a second Ctrl-C, or a segmentation cancelled with
Ctrl-C). Errors are printed in one line; ``--verbose`` adds the traceback.
Heavy imports (torch) happen inside the commands so that ``--help`` is quick.

This package module holds the entry point, :func:`main` (parse, dispatch,
turn what went wrong into one line and an exit code), and re-exports the
names callers and tests use. The rest lives in one module per idea:
``_exit`` (program name, exit codes, :class:`CLIError`), ``_output``
(durations, progress bars, the batch summary), ``_signals`` (Ctrl-C),
``_parser`` (flags and help texts) and one module per command (``train``,
``segment``, ``export``, ``demo``, ``info``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from typing import Sequence

# ``x as x``: internals of the former single-file module, still importable from here (tests
# use and patch them; the commands look ``_bar`` up here at call time)
from ..errors import Cancelled
from ._exit import EXIT_ABORTED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG, CLIError
from ._output import _bar as _bar
from ._output import _err, print_summary
from ._output import _fmt_seconds as _fmt_seconds
from ._parser import build_parser
from ._signals import _abort as _abort
from ._signals import _ctrl_c as _ctrl_c
from ._signals import _PressCounter as _PressCounter
from ._signals import _shielded as _shielded
from .demo import cmd_demo
from .export import cmd_export
from .info import _version as _version
from .info import cmd_info
from .segment import _options as _options
from .segment import cmd_segment
from .train import BALANCE_OPTIONS, cmd_train
from .train import _run_training as _run_training

__all__ = [
    "BALANCE_OPTIONS", "EXIT_ABORTED", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "PROG", "CLIError",
    "build_parser", "cmd_demo", "cmd_export", "cmd_info", "cmd_segment", "cmd_train", "main", "print_summary",
]

logger = logging.getLogger(__name__)


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

