"""``--workers N``: one server over several processes (serve.workers, serve.siblings), as a real supervisor with real
workers on loopback: whole-server metrics on every scrape, a killed worker replaced while the others answer, SIGTERM
leaving no process, repository loads and swaps reaching every worker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from resnet import UsageError
from serve.settings import settings_from
from serve.workers import worker_count
from tests.serve_support import REPO, Server, classify, png, until

CLASSIFY_OK = ("resnet_serve_requests_total", {"route": "/classify", "status": "200"})


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def worker_env(pid: int) -> dict[str, str]:
    """A worker's environment, as the supervisor started it."""
    return dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)


def worker_socket(pid: int) -> Path:
    """A worker's private unix socket, from its environment."""
    return Path(worker_env(pid)["RESNET_SERVE_WORKER_SOCKET"])


def worker_client(pid: int) -> httpx.Client:
    """HTTP to one worker only, over its private socket."""
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(worker_socket(pid))), base_url="http://w", timeout=30)


def sample(server: Server, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def fresh(server: Server, image: bytes) -> httpx.Response:
    """One /classify on a new connection (the kernel hands each to whichever worker accepts first)."""
    with httpx.Client(timeout=60) as c:
        return c.post(server.url + "/classify", params={"topk": 3}, files=[("file", ("a.png", image))])


@pytest.fixture(scope="module")
def image(photo_paths) -> bytes:
    return next(p for p in photo_paths if p.suffix == ".png").read_bytes()


@pytest.fixture(scope="module")
def two_workers(digits_onnx_model: Path) -> Iterator[Server]:
    server = Server(["--model", str(digits_onnx_model), "--workers", "2"], log_path=digits_onnx_model.parent / "w.log")
    server.start(timeout=120)
    until(lambda: len(children(server.proc.pid)) == 2)
    yield server
    server.stop()


def test_workers_flag_resolves_zero_to_one_per_four_cores_and_refuses_negative():
    assert worker_count(3) == 3
    assert worker_count(0, cpus=2) == 1 and worker_count(0, cpus=16) == 4 and worker_count(0, cpus=128) == 8
    with pytest.raises(UsageError, match="--workers must be >= 0"):
        settings_from(["--model", "x.onnx", "--workers", "-1"], environ={})


def test_two_workers_metrics_totals_equal_the_requests_sent_on_every_scrape(two_workers, image):
    before = sample(two_workers, *CLASSIFY_OK)
    images_before = sample(two_workers, "resnet_serve_images_total", {})
    for n in range(1, 13):
        assert fresh(two_workers, image).status_code == 200
        assert sample(two_workers, *CLASSIFY_OK) == before + n
        assert sample(two_workers, "resnet_serve_images_total", {}) == images_before + n
    assert sample(two_workers, "resnet_serve_batch_shapes", {"state": "cold"}) == 0


def test_sigkill_of_a_worker_is_survived_and_it_is_replaced(two_workers, image):
    pids = children(two_workers.proc.pid)
    sent = sample(two_workers, *CLASSIFY_OK)
    os.kill(pids[0], signal.SIGKILL)
    for _ in range(10):  # the other worker keeps answering while the dead one is replaced
        assert fresh(two_workers, image).status_code == 200
    new = until(lambda: [p for p in children(two_workers.proc.pid) if p not in pids], timeout=60)
    assert pids[1] in children(two_workers.proc.pid) and not alive(pids[0])
    with worker_client(new[0]) as w:
        until(lambda: worker_socket(new[0]).exists() and w.get("/readyz").status_code == 200, timeout=60)
        assert w.post("/classify", files=[("file", ("a.png", image))]).status_code == 200
    assert sample(two_workers, *CLASSIFY_OK) == sent + 11  # the dead worker's counts stay in the totals


def test_sigterm_drains_every_worker_and_leaves_no_process(digits_onnx_model: Path, image):
    server = Server(["--model", str(digits_onnx_model), "--workers", "2"]).start(timeout=120)
    pids = until(lambda: children(server.proc.pid) if len(children(server.proc.pid)) == 2 else None)
    folder = worker_socket(pids[0]).parent
    assert fresh(server, image).status_code == 200
    assert server.stop() == 0
    assert not any(alive(p) for p in pids) and not folder.exists()


def test_a_worker_that_cannot_load_the_model_stops_the_server_with_its_code(tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    proc = subprocess.run(
        [sys.executable, "-m", "serve", "--model", str(bad), "--workers", "2", "--port", "0"],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode not in (0, None) and b"Traceback" not in proc.stderr


def _place(model: Path, repo: Path, name: str, version: int) -> None:
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    shutil.copyfile(model, folder / "model.onnx")


def _versions(w: httpx.Client, name: str) -> list[str]:
    r = w.get(f"/v2/models/{name}")
    return r.json().get("versions", []) if r.status_code == 200 else []


def _ready_everywhere(server: Server, name: str, version: str) -> bool:
    pids = children(server.proc.pid)
    for pid in pids:
        with worker_client(pid) as w:
            if w.get(f"/v2/models/{name}/versions/{version}/ready").status_code != 200:
                return False
    return len(pids) == 2


def test_explicit_load_and_unload_reach_every_worker(digits_onnx_model: Path, tmp_path: Path):
    repo = tmp_path / "models"
    _place(digits_onnx_model, repo, "digits", 1)
    args = ["--model-repository", str(repo), "--model-control-mode", "explicit", "--workers", "2"]
    server = Server(args, log_path=tmp_path / "explicit.log").start(timeout=120)
    try:
        until(lambda: _ready_everywhere(server, "digits", "1"), timeout=60)
        _place(digits_onnx_model, repo, "late", 1)
        assert httpx.post(server.url + "/v2/repository/models/late/load", timeout=120).status_code == 200
        assert _ready_everywhere(server, "late", "1")  # at once: the 200 came after every worker had it
        assert httpx.post(server.url + "/v2/repository/models/late/unload", timeout=120).status_code == 200
        for pid in children(server.proc.pid):
            with worker_client(pid) as w:
                until(lambda w=w: w.get("/v2/models/late/versions/1/ready").status_code != 200)
    finally:
        server.stop()


def test_a_client_forwarded_header_is_not_trusted_and_the_load_still_reaches_every_worker(
    digits_onnx_model: Path, tmp_path: Path
):
    repo = tmp_path / "models"
    _place(digits_onnx_model, repo, "digits", 1)
    args = ["--model-repository", str(repo), "--model-control-mode", "explicit", "--workers", "2"]
    log_path = tmp_path / "forged.log"
    server = Server(args, log_path=log_path).start(timeout=120)
    try:
        until(lambda: _ready_everywhere(server, "digits", "1"), timeout=60)
        token = worker_env(children(server.proc.pid)[0]).get("RESNET_SERVE_WORKER_TOKEN", "")
        # "1" (what the header said before it carried a token), any other value, and even the real token over TCP
        for name, value in (("forged", "1"), ("other", "anything"), ("tcp", token or "absent")):
            _place(digits_onnx_model, repo, name, 1)
            headers = {"x-resnet-serve-forwarded": value}
            r = httpx.post(server.url + f"/v2/repository/models/{name}/load", headers=headers, timeout=120)
            assert r.status_code == 200
            assert _ready_everywhere(server, name, "1"), f"{name}: the load reached one worker only"
        log = log_path.read_text(errors="replace")
        assert log.count("x-resnet-serve-forwarded header not honoured") == 3
        assert token and token not in log
    finally:
        server.stop()


def test_poll_mode_swap_reaches_every_worker(digits_onnx_model: Path, tmp_path: Path):
    repo = tmp_path / "models"
    _place(digits_onnx_model, repo, "digits", 1)
    args = ["--model-repository", str(repo), "--model-control-mode", "poll", "--repository-poll-secs", "0.5"]
    server = Server([*args, "--workers", "2"], log_path=tmp_path / "poll.log").start(timeout=120)
    try:
        until(lambda: _ready_everywhere(server, "digits", "1"), timeout=60)
        _place(digits_onnx_model, repo, "digits", 2)
        until(lambda: _ready_everywhere(server, "digits", "2"), timeout=60)
        assert classify(server, [("a.png", png())], model="digits").status_code == 200
    finally:
        server.stop()
