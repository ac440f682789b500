"""Operations of the real server: back-pressure (503), deadlines (504), disconnected clients, API key, graceful
SIGTERM drain, and the command line (settings from flags and environment, clear errors and exit codes)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from resnet import run_cli
from serve.__main__ import main
from serve.settings import build_parser, settings_from, settings_table
from tests.serve_support import REPO, Server, export_onnx, until


@pytest.fixture(scope="module")
def onnx_model(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(digits_checkpoint, tmp_path_factory.mktemp("serve_ops") / "digits.onnx")


@pytest.fixture(scope="module")
def image(photo_paths) -> bytes:
    return next(p for p in photo_paths if p.suffix == ".png").read_bytes()


@pytest.fixture(scope="module")
def slow_server(onnx_model: Path):
    """Batches wait up to 3 s to fill, the queue holds 10 crops (one ten-crop image), deadline 1 s."""
    server = Server(
        ["--model", str(onnx_model), "--max-wait-ms", "3000", "--max-queue-crops", "10", "--request-timeout-s", "1.0"],
        log_path=onnx_model.parent / "slow.log",
    ).start()
    yield server
    server.stop()


def post_later(url: str, image: bytes, out: dict, key: str, timeout: float = 30.0) -> threading.Thread:
    def go() -> None:
        try:
            out[key] = httpx.post(url + "/classify", files=[("file", ("a.png", image))], timeout=timeout)
        except httpx.HTTPError as e:
            out[key] = e

    t = threading.Thread(target=go)
    t.start()
    return t


def test_full_queue_returns_503_with_retry_after_and_deadline_504_frees_the_queue(slow_server, image):
    out: dict = {}
    first = post_later(slow_server.url, image, out, "first")
    until(lambda: slow_server.metric("resnet_serve_queue_crops") == 10)  # its 10 crops fill the queue
    second = httpx.post(slow_server.url + "/classify", files=[("file", ("b.png", image))], timeout=10)
    assert second.status_code == 503, second.text
    assert second.headers["Retry-After"] == "1" and second.json()["error"]["code"] == "queue_full"
    first.join()
    r = out["first"]
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    # The timed-out request's crops left the queue at its deadline (1 s), not when the batch would run (3 s).
    assert slow_server.metric("resnet_serve_queue_crops") == 0
    assert slow_server.metric("resnet_serve_rejected_total", 'reason="queue_full"') >= 1
    assert slow_server.metric("resnet_serve_rejected_total", 'reason="deadline"') >= 1


def test_disconnected_client_crops_are_dropped_from_the_queue(slow_server, image):
    before = slow_server.metric("resnet_serve_rejected_total", 'reason="client_gone"')
    out: dict = {}
    t = post_later(slow_server.url, image, out, "gone", timeout=0.3)  # the client gives up after 0.3 s
    t.join()
    assert isinstance(out["gone"], httpx.TimeoutException)
    # The crops leave the queue well before the 1 s deadline and the 3 s batch wait.
    until(lambda: slow_server.metric("resnet_serve_rejected_total", 'reason="client_gone"') == before + 1, timeout=0.9)
    assert slow_server.metric("resnet_serve_queue_crops") == 0


@pytest.fixture(scope="module")
def keyed_server(digits_checkpoint: Path, onnx_model: Path):
    """The checkpoint on torch, the API key from the environment (12-factor), CORS for one origin."""
    server = Server(
        ["--model", str(digits_checkpoint), "--cors-origins", "http://app.example"],
        env={"RESNET_SERVE_API_KEY": "s3cret-key"},
        log_path=onnx_model.parent / "keyed.log",
    ).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"X-API-Key": "s3cret-ke"}, 401),
        ({"Authorization": "Basic czNjcmV0LWtleQ=="}, 401),
        ({"Authorization": "Bearer s3cret-key"}, 200),
        ({"X-API-Key": "s3cret-key"}, 200),
    ],
    ids=["none", "wrong_bearer", "prefix_of_key", "basic_auth", "bearer_ok", "x_api_key_ok"],
)
def test_api_key_guards_classify(keyed_server, image, headers, status):
    r = httpx.post(keyed_server.url + "/classify", files=[("file", ("a.png", image))], headers=headers, timeout=30)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["WWW-Authenticate"] == "Bearer"
    else:
        assert r.json()["backend"].startswith("torch:")


def test_api_key_is_checked_before_the_body_is_read(keyed_server):
    r = httpx.post(keyed_server.url + "/classify", content=b"x" * (8 << 20), headers={"Content-Type": "image/png"})
    assert r.status_code == 401


def test_health_endpoints_stay_open_with_an_api_key_metrics_does_not(keyed_server):
    for path in ("/healthz", "/readyz"):
        assert httpx.get(keyed_server.url + path).status_code == 200, path
    assert httpx.get(keyed_server.url + "/metrics").status_code == 401
    assert httpx.get(keyed_server.url + "/metrics", headers={"X-API-Key": "s3cret-key"}).status_code == 200


def test_cors_allows_only_the_given_origins(keyed_server, slow_server):
    def preflight(server, origin):
        return httpx.options(
            server.url + "/classify", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )

    assert preflight(keyed_server, "http://app.example").headers["access-control-allow-origin"] == "http://app.example"
    assert "access-control-allow-origin" not in preflight(keyed_server, "http://evil.example").headers
    assert "access-control-allow-origin" not in preflight(slow_server, "http://app.example").headers  # CORS off


def test_sigterm_drains_readiness_503_in_flight_finishes_then_exit_0(onnx_model: Path, image):
    server = Server(
        ["--model", str(onnx_model), "--max-wait-ms", "1500"], log_path=onnx_model.parent / "drain.log"
    ).start()
    try:
        out: dict = {}
        t = post_later(server.url, image, out, "in_flight")
        until(lambda: server.metric("resnet_serve_queue_crops") == 10)  # the request is waiting for its batch
        server.signal()
        ready = until(lambda: (r := httpx.get(server.url + "/readyz", timeout=5)).status_code == 503 and r)
        assert ready.json()["status"] == "draining"
        late = httpx.post(server.url + "/classify", files=[("file", ("b.png", image))], timeout=5)
        assert late.status_code == 503 and late.headers["Retry-After"] == "1"
        t.join()
        assert out["in_flight"].status_code == 200, out["in_flight"]
        assert server.proc.wait(timeout=30) == 0, server.log()
    finally:
        server.stop()
    assert "draining" in server.log()


def test_ready_after_the_first_batch_shape_and_the_rest_warm_in_the_background(onnx_model: Path):
    log = onnx_model.parent / "warm.log"
    server = Server(["--model", str(onnx_model), "--batch-sizes", "1,7,33", "--max-batch", "33"], log_path=log)
    server.start(warm=False)
    try:
        ok = '"path": "/readyz", "query": "", "status": 200'
        text = until(lambda: ok in (t := log.read_text()) and t)  # the access line follows the answer
        assert "warmed up batch shapes [1] in" in text and "warming [33, 7] in the background" in text
        assert text.index("warmed up batch shapes [1]") < text.index(ok)
        until(lambda: server.metric("resnet_serve_batch_shapes", 'state="warm"') == 3)
        assert server.metric("resnet_serve_batch_shapes", 'state="cold"') == 0
        assert "warmed up every batch shape [1, 7, 33]" in until(
            lambda: "every batch shape" in (t := log.read_text()) and t
        )
    finally:
        server.stop()


# ---- command line -----------------------------------------------------------------------------------------------


def test_help_lists_every_option_with_its_environment_variable(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for env in ("RESNET_SERVE_MODEL", "RESNET_SERVE_API_KEY", "RESNET_SERVE_MAX_WAIT_MS", "RESNET_SERVE_DRAFT"):
        assert env in out
    assert settings_table().count("RESNET_SERVE_") == len(build_parser()._actions) - 1  # all but --help


def test_flags_override_environment_which_overrides_defaults():
    env = {
        "RESNET_SERVE_MODEL": "m.onnx",
        "RESNET_SERVE_PORT": "9001",
        "RESNET_SERVE_DRAFT": "false",
        "RESNET_SERVE_MAX_WAIT_MS": "5",
    }
    s = settings_from(["--port", "9002"], env)
    assert (s.model, s.port, s.draft, s.max_wait_ms, s.max_batch) == ("m.onnx", 9002, False, 5.0, 0)


@pytest.mark.parametrize(
    "argv, env, code, message",
    [
        ([], {}, 2, "no model given"),
        (["--model", "missing.onnx"], {}, 1, "no such model file"),
        (["--model", "x"], {"RESNET_SERVE_MAX_WAIT_MS": "soon"}, 2, "must be a float"),
        (["--model", "x", "--max-body-bytes", "0"], {}, 2, "must be > 0"),
        (["--model", "x", "--batch-sizes", "4,a"], {}, 2, "comma-separated integers"),
    ],
    ids=["no_model", "missing_file", "bad_env_number", "zero_body_cap", "bad_batch_sizes"],
)
def test_bad_usage_is_one_line_and_exit_code(argv, env, code, message, monkeypatch, capsys):
    for k in list(__import__("os").environ):
        if k.startswith("RESNET_SERVE_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert run_cli(main, argv, prog="python -m serve") == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_wrong_backend_for_artifact_is_usage_error(onnx_model, digits_checkpoint, tmp_path, capsys):
    assert run_cli(main, ["--model", str(onnx_model), "--backend", "torch"]) == 2
    assert run_cli(main, ["--model", str(digits_checkpoint), "--backend", "onnxruntime"]) == 2
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    assert run_cli(main, ["--model", str(odd)]) == 2
    capsys.readouterr()


def test_tensorrt_demanded_without_it_exits_4(onnx_model, capsys):
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has the TensorRT execution provider")
    assert run_cli(main, ["--model", str(onnx_model), "--backend", "tensorrt"]) == 4
    assert "TensorrtExecutionProvider" in capsys.readouterr().err


def test_plan_without_tensorrt_exits_4_or_names_missing_sidecar(tmp_path, capsys):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    code = run_cli(main, ["--model", str(plan)])
    err = capsys.readouterr().err
    assert code in (1, 4) and len(err.strip().splitlines()) == 1, err


def test_corrupt_artifacts_fail_cleanly_from_the_shell(tmp_path):
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"\x08\x01garbage")
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"PK\x03\x04 truncated")
    for path in (bad_onnx, bad_pt):
        p = subprocess.run(
            [sys.executable, "-m", "serve", "--model", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 1, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in p.stderr and "error:" in lines[0], p.stderr
