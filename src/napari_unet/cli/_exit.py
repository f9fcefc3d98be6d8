"""How the command line ends: its name in messages, the exit codes, the user's errors.

Every command module needs these, and the package's ``__init__`` re-exports
them; keeping them in a leaf module with no imports of its own lets the
command modules import them without going through the package while it is
still being initialised.
"""

from __future__ import annotations

PROG = "napari-unet"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 130


class CLIError(Exception):
    """A problem the user can fix; printed in one line."""
