"""Plain log lines for the export commands (stdout, flushed), and progress bars only on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def log(message: str) -> None:
    """One plain line on stdout."""
    print(message, flush=True)


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """``tqdm`` on an interactive terminal, the bare iterable otherwise (logs stay clean)."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    kwargs: dict[str, Any] = {"desc": desc, "leave": False, "unit": "batch"}
    if total is not None:
        kwargs["total"] = total
    return tqdm(items, **kwargs)
