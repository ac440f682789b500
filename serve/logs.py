"""Every log line is one JSON object: ours, uvicorn's, any library's (python-multipart, Pillow's ``warnings``), and
what C libraries write straight to file descriptor 2 (libtiff's "TIFFReadDirectory: Warning, ..."), which a reader
thread turns into ``{"logger": "stderr", ...}`` lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import TextIO


class JsonFormatter(logging.Formatter):
    """One JSON object per line (access lines are already JSON and pass through as ``access``)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        entry: dict = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name}
        if record.name == "serve.access":
            entry["access"] = json.loads(msg)
        else:
            entry["message"] = msg
            entry.update(getattr(record, "fields", None) or {})  # structured extras, e.g. the precision table
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, stream: TextIO | None = None) -> logging.Handler:
    """The root logger (so every library's logger) writes JSON to ``stream``; ``warnings`` go through logging."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("serve", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.setLevel(level.upper())
        lg.propagate = True
    logging.captureWarnings(True)
    return handler


class StderrToLog:
    """Point fd 2 at a pipe whose lines become ``stderr`` log records; the JSON handler writes to the real stderr."""

    def __init__(self) -> None:
        self.real = os.dup(2)
        self.stream = open(self.real, "w", buffering=1, closefd=False)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._read = read
        self._thread = threading.Thread(target=self._pump, name="stderr-to-log", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        log = logging.getLogger("stderr")
        with open(self._read, "rb", buffering=0) as pipe:
            for line in iter(pipe.readline, b""):
                text = line.decode("utf-8", "replace").rstrip()
                if text:
                    log.warning("%s", text)

    def restore(self) -> None:
        """fd 2 back to the terminal (the reader thread ends when the pipe's last writer closes)."""
        sys.stderr.flush()
        os.dup2(self.real, 2)


def json_logs(level: str) -> StderrToLog:
    """Set up JSON logging for the server process and capture raw writes to fd 2."""
    capture = StderrToLog()
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    setup_logging(level, capture.stream)
    return capture
