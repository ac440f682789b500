"""Errors a user can cause, each with the exit code of docs/DESIGN.md §5, and the CLI wrapper that prints them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """Something the user can fix (bad file, bad argument). Printed as one line, never as a traceback."""

    exit_code = 1


class UsageError(UserError):
    """Bad usage: an unknown option value, an unknown architecture. Exit code 2."""

    exit_code = 2


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe, or does not fit the architecture."""


class CardError(UserError):
    """A model card that is missing or lacks required fields (an artifact that is not ours)."""


class ParityError(UserError):
    """A parity gate failed. Exit code 3."""

    exit_code = 3


class MissingComponentError(UserError):
    """A component the user demanded (GPU, TensorRT) is not there. Exit code 4."""

    exit_code = 4


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, prog: str = "") -> int:
    """Call ``main(argv)``; print a ``UserError`` as one line on stderr and return its exit code.

    Programming errors are not hidden: anything else propagates with its traceback.
    """
    try:
        return main(argv)
    except UserError as e:
        print(f"{prog + ': ' if prog else ''}error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog + ': ' if prog else ''}interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` or similar that closed early: not an error of ours, and no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
