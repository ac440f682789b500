"""Cold start of the server: seconds from launching ``python -m serve --model M`` to the first ``/readyz`` 200.

    python -m bench.serve_cold_start --python /tmp/serve-only/bin/python --model resnet50.onnx --runs 3 \
        -- --max-batch 10 --batch-sizes 1,10

``--python`` picks the interpreter (e.g. the ``.[serve]``-only environment); it runs from a scratch folder so the
installed package is measured, not this checkout. /readyz turns 200 once the smallest batch shape is warm (the
others warm in the background), so the default flags start about as fast as ``--batch-sizes 1``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(
    python: str, model: str, extra: Sequence[str] = (), timeout: float = 120.0, pythonpath: str | None = None
) -> tuple[float, float]:
    """One launch: (seconds to /readyz 200, of which the warm-up before ready); stopped with SIGTERM after.
    ``pythonpath``: measure that checkout instead of the installed package."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    with tempfile.TemporaryDirectory() as scratch, open(os.path.join(scratch, "server.log"), "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [python, "-m", "serve", "--model", model, "--port", str(port), *extra],
            cwd=scratch,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            while time.perf_counter() - started < timeout:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited {proc.returncode}: {_log(scratch)[-1500:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                        if r.status == 200:
                            ready = time.perf_counter() - started
                            found = re.search(r"warmed up batch shapes .*? in ([0-9.]+) s", _log(scratch))
                            return ready, float(found.group(1)) if found else float("nan")
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.02)
            raise RuntimeError(f"not ready within {timeout} s")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _log(folder: str) -> str:
    with open(os.path.join(folder, "server.log"), "rb") as f:
        return f.read().decode(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_cold_start", description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="interpreter that runs the server")
    p.add_argument("--model", required=True, help="model artifact to serve")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "server_args", nargs="*", help="more server flags after --, e.g. -- --max-batch 10 --batch-sizes 1,10"
    )
    args = p.parse_args(argv)
    runs = [cold_start(args.python, args.model, args.server_args) for _ in range(args.runs)]
    times = [t for t, _ in runs]
    print("runs (to /readyz 200 / of which warm-up): " + ", ".join(f"{t:.2f}/{w:.1f} s" for t, w in runs))
    print(
        f"cold start to /readyz 200: median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
        f"max {max(times):.2f} s over {len(times)} runs ({', '.join(f'{t:.2f}' for t in times)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
