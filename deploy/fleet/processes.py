"""The processes of the fleet drill (deploy/fleet/fleet.py): server replicas and Debian's nginx in front of them,
each started, watched and stopped on 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deploy" / "nginx.conf"
REPLICA_FLAGS = ("--threads", "1", "--decode-threads", "1", "--batch-sizes", "10,20,40", "--max-batch", "40")
DRAIN_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url``/readyz until 200; RuntimeError if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}: not ready within {timeout:g} s")


class Replica:
    """One ``python -m serve`` process on a fixed 127.0.0.1 port (a restart keeps the port, as a pod keeps its
    Service endpoint name); its output goes to ``log``."""

    def __init__(self, name: str, log_dir: Path, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.model: Path | None = None

    def argv(self, model: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "serve",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *REPLICA_FLAGS,
            "--drain-timeout-s",
            str(DRAIN_TIMEOUT_S),
            "--log-level",
            "warning",
        ]

    def start(self, model: Path) -> Replica:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv(model), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.model = model
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_ready(self.url, timeout, self.proc)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=DRAIN_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def nginx_site(upstreams: Sequence[int], listen_port: int, conf: str | None = None) -> str:
    """deploy/nginx.conf with its upstream servers replaced by the replicas' loopback ports and its ``listen`` by
    127.0.0.1:``listen_port``: every proxy setting (retries included) is the file's own."""
    text = NGINX_CONF.read_text() if conf is None else conf
    upstream = re.search(r"upstream\s+\w+\s*\{(.*?)\}", text, re.S)
    if upstream is None:
        raise ValueError("deploy/nginx.conf has no upstream block")
    body = upstream.group(1)
    template = re.search(r"^\s*server\s+\S+(\s[^;]*)?;", body, re.M)
    if template is None:
        raise ValueError("deploy/nginx.conf's upstream has no server line")
    params = template.group(1) or ""
    servers = "".join(f"\n    server 127.0.0.1:{p}{params};" for p in upstreams)
    body = re.sub(r"^\s*server\s+[^;]*;", "", body, flags=re.M)
    text = text[: upstream.start(1)] + servers + body + text[upstream.end(1) :]
    return re.sub(r"listen\s+[^;]+;", f"listen 127.0.0.1:{listen_port};", text)


class Nginx:
    """Debian's nginx in the foreground with a private prefix: its own pid file, logs and temp folders."""

    LOG_FORMAT = "fleet '$msec $status $upstream_addr \"$upstream_status\"'"

    def __init__(self, prefix: Path, upstreams: Sequence[int], port: int | None = None) -> None:
        self.prefix = prefix
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = prefix / "access.log"
        self.proc: subprocess.Popen | None = None
        self.exe = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
        if self.exe is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        prefix.mkdir(parents=True, exist_ok=True)
        temps = [prefix / t for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
        for t in temps:
            t.mkdir(exist_ok=True)
            t.chmod(0o777)  # nginx's workers drop root to `nobody` when started as root
        prefix.chmod(0o755)
        (prefix / "site.conf").write_text(nginx_site(upstreams, self.port))
        (prefix / "nginx.conf").write_text(
            f"worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
            "events { worker_connections 1024; }\nhttp {\n"
            f"  log_format {self.LOG_FORMAT};\n  access_log {self.access_log} fleet;\n"
            f"  client_body_temp_path {temps[0]};\n  proxy_temp_path {temps[1]};\n  fastcgi_temp_path {temps[2]};\n"
            f"  uwsgi_temp_path {temps[3]};\n  scgi_temp_path {temps[4]};\n  include {prefix}/site.conf;\n}}\n"
        )

    def command(self, *extra: str) -> list[str]:
        return [
            self.exe,
            "-p",
            str(self.prefix),
            "-c",
            str(self.prefix / "nginx.conf"),
            "-e",
            str(self.prefix / "error.log"),
            *extra,
        ]

    def test_config(self) -> None:
        proc = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"nginx -t: {proc.stderr.strip()}")

    def start(self) -> Nginx:
        self.test_config()
        self.proc = subprocess.Popen(
            self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen within 15 s")

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def log_size(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def retried_since(self, offset: int) -> int:
        """Requests logged after byte ``offset`` that nginx sent to more than one replica."""
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        return sum(1 for line in lines if "," in line.partition('"')[2])  # "$upstream_status" lists every try

    def wait_in_rotation(self, port: int, offset: int, timeout: float = 30.0) -> float:
        """Wait until nginx has answered a request with a 200 from the replica on ``port`` (logged after byte
        ``offset``): back in rotation. nginx's passive checks keep a replica that answered 503 while draining out
        for ``fail_timeout``; a rollout that drains the next one before that leaves nginx no live upstream.
        Returns the seconds waited; ``RuntimeError`` after ``timeout``."""
        t, addr = time.monotonic(), f"127.0.0.1:{port}"
        while time.monotonic() - t < timeout:
            with open(self.access_log, "rb") as f:
                f.seek(offset)
                for line in f.read().decode(errors="replace").splitlines():
                    fields = line.split(" ", 2)
                    if (
                        len(fields) == 3
                        and fields[1] == "200"
                        and fields[2].partition('"')[0].split(",")[-1].strip() == addr
                    ):
                        return time.monotonic() - t
            time.sleep(0.1)
        raise RuntimeError(f"nginx sent no request to {addr} within {timeout:.0f} s of its /readyz turning 200")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
