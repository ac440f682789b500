"""Hostile clients and bad models against the real server (``python -m serve`` on 127.0.0.1): KServe validation,
disconnects mid-body, the shutdown deadline, limits before the app, the decode budget and fairness, the card/graph
start-up check, JSON logs, and the API key on /metrics, /docs and /v2 metadata."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import resnet
from tests.serve_support import REPO, Server, export_onnx, healthz_latencies, png, raw_exchange, until

MODEL = "digits-resnet8"


@pytest.fixture(scope="module")
def server(hardened_server: Server) -> Server:
    return hardened_server  # conftest: header read and keep-alive timeouts short enough to test


# ---- KServe validation is a 400 in the protocol's shape, never a 500 -------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {
            "parameters": {"crops": ["ten"]},
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
        },
        {
            "parameters": {"crops": {"a": 1}},
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
        },
        {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="], "parameters": {"crops": 3}}
            ]
        },
        {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [10**400] + [0] * 3071}]},
        {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1e39] + [0] * 3071}]},
        {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [True] * 3072}]},
        {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [[0.0], 1.0]}]},
        {"inputs": [{"name": "input", "shape": [-1, 3, 32, 32], "datatype": "FP32", "data": [0.0]}]},
        {"inputs": [{"name": "input", "shape": ["1", 3, 32, 32], "datatype": "FP32", "data": [0.0]}]},
        {"inputs": [{"name": "input", "shape": [2**40, 3, 32, 32], "datatype": "FP32", "data": [0.0]}]},
        {"inputs": [{"name": "input", "shape": [1], "datatype": "COMPLEX", "data": [0.0]}]},
        {"inputs": [{"name": 7, "shape": [1], "datatype": "FP32", "data": [0.0]}]},
        {"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": "8"}}]},
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [["a"], "b"]}]},
        {"inputs": "all of them"},
        {"id": 5, "inputs": []},
        {"inputs": [], "outputs": [{"name": "logits", "parameters": {"classification": "3"}}]},
        [1, 2, 3],
    ],
    ids=lambda b: json.dumps(b)[:60],
)
def test_v2_bad_request_is_400_json_and_keeps_the_connection(server, body):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = client.post(f"/v2/models/{MODEL}/infer", json=body)
        assert r.status_code == 400, r.text
        assert isinstance(r.json()["error"], str) and r.json()["error"]
        assert r.headers.get("connection") != "close"
        assert client.get("/v2/health/live").status_code == 200  # the same connection serves on


def test_v2_large_json_body_is_parsed_off_the_event_loop(server):
    n = 200  # 200 crops = 614,400 numbers: a 6 MiB JSON body (wrong count at the end: parsed in full, then 400)
    values = [round(float(x), 6) for x in np.random.default_rng(0).standard_normal(n * 3072 - 1)]
    body = json.dumps({"inputs": [{"name": "input", "shape": [n, 3, 32, 32], "datatype": "FP32", "data": values}]})
    assert len(body) > 6 * 2**20
    with healthz_latencies(server) as worst, httpx.Client(base_url=server.url, timeout=60) as c:
        for _ in range(3):
            r = c.post(f"/v2/models/{MODEL}/infer", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and "needs" in r.json()["error"], r.text
    assert max(worst) < 0.5, f"/healthz waited {max(worst):.2f} s while JSON bodies were parsed"


# ---- a client that disconnects mid-body is a 499, without a traceback ------------------------------------------------


def test_disconnect_mid_body_is_counted_499_and_logs_no_traceback(server):
    def count(route: str) -> float:
        return server.metric("resnet_serve_requests_total", f'route="{route}",status="499"')

    before = {r: count(r) for r in ("/classify", "/v2/models/{name}/infer")}
    cases = [
        ("/classify", "image/png", b"\x89PNG"),
        (
            "/classify",
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n',
        ),
        (f"/v2/models/{MODEL}/infer", "application/json", b'{"inputs": ['),
    ]
    for path, ctype, start in cases:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: 100000\r\n\r\n"
            s.sendall(head.encode() + start + b"a" * 1000)
            time.sleep(0.2)
    until(lambda: count("/classify") == before["/classify"] + 2)
    until(lambda: count("/v2/models/{name}/infer") == before["/v2/models/{name}/infer"] + 1)
    fives = [
        ln for ln in httpx.get(server.url + "/metrics").text.splitlines() if 'status="5' in ln and "readyz" not in ln
    ]
    assert fives == []
    log = server.log()
    assert "Traceback" not in log and '"level": "error"' not in log, log


def test_disconnect_while_waiting_for_a_batch_cancels_the_work(digits_onnx_model):
    srv = Server(
        ["--model", str(digits_onnx_model), "--max-wait-ms", "5000"], log_path=digits_onnx_model.parent / "cancel.log"
    ).start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            data = png()
            s.sendall(
                f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            )
            import base64

            body = json.dumps(
                {
                    "inputs": [
                        {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}
                    ]
                }
            )
            s.sendall(f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            until(lambda: srv.metric("resnet_serve_queue_crops") == 10)
        until(lambda: srv.metric("resnet_serve_queue_crops") == 0, timeout=3)  # long before the 5 s batch wait
        until(lambda: srv.metric("resnet_serve_rejected_total", 'reason="client_gone"') == 1)
    finally:
        srv.stop()


# ---- the drain timeout bounds the whole exit; late requests get a JSON 503 -------------------------------------------


def test_drain_timeout_bounds_the_exit_and_late_requests_get_json_503(digits_onnx_model):
    srv = Server(
        ["--model", str(digits_onnx_model), "--max-wait-ms", "30000", "--max-batch", "128"]
        + ["--request-timeout-s", "60", "--drain-timeout-s", "3"],
        log_path=digits_onnx_model.parent / "drain_deadline.log",
    ).start()
    answers: list = []

    def post() -> None:
        try:
            answers.append(
                httpx.post(srv.url + "/classify", content=png(), headers={"Content-Type": "image/png"}, timeout=60)
            )
        except httpx.HTTPError as e:
            answers.append(e)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    until(lambda: srv.metric("resnet_serve_in_flight_requests") == 8)
    started = time.monotonic()
    srv.signal()
    assert srv.proc.wait(timeout=30) == 0
    took = time.monotonic() - started
    for t in threads:
        t.join()
    assert 2.0 <= took <= 4.0, f"exit took {took:.2f} s with --drain-timeout-s 3"
    assert len(answers) == 8
    for r in answers:
        assert isinstance(r, httpx.Response), r
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
        assert r.json()["error"]["code"] == "shutting_down"
    log = srv.log()
    assert "CancelledError" not in log and "Traceback" not in log and "Internal Server Error" not in log


# ---- the card must agree with the graph; /healthz reports a failed backend -------------------------------------------


def _onnx_with_card(digits_onnx_model: Path, out: Path, **changes) -> Path:
    import onnx

    from resnet.card import ModelCard
    from resnet.onnx_card import read_onnx_card, set_onnx_card

    card = read_onnx_card(digits_onnx_model).to_dict()
    card.update(changes)
    proto = onnx.load(str(digits_onnx_model))
    set_onnx_card(proto, ModelCard.from_dict(card))
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"input_size": 40, "resize_size": 46}, "input_size"),
        ({"num_classes": 11, "labels": [str(i) for i in range(11)]}, "11 labels"),
    ],
    ids=["input_size", "classes"],
)
def test_card_that_disagrees_with_the_graph_exits_1_with_one_line(
    digits_onnx_model, digits_checkpoint, tmp_path, changes, words
):
    source = digits_onnx_model
    if "input_size" in changes:  # a graph that takes any height and width fits any input_size: use a fixed-size one
        source = export_onnx(digits_checkpoint, tmp_path / "fixed.onnx", any_size=False)
    model = _onnx_with_card(source, tmp_path / "liar.onnx", **changes)
    p = subprocess.run(
        [sys.executable, "-m", "serve", "--model", str(model), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("{")]  # JSON: the info log
    assert p.returncode == 1 and len(lines) == 1 and words in lines[0] and "does not fit the graph" in lines[0], (
        p.stderr
    )


def test_healthz_is_503_once_the_backend_has_failed(digits_checkpoint):
    """A real uvicorn (in this process) around a backend that starts failing after warm-up."""
    import uvicorn

    from resnet.runtime.runner import Runner
    from serve.api.app import create_app
    from serve.engine.backends import load_backend
    from serve.settings import Settings
    from tests.serve_support import free_port

    class Breaking:
        """The torch runner, with every field a Runner declares, until the device is "lost"."""

        def __init__(self, inner) -> None:
            for field in Runner.__annotations__:
                setattr(self, field, getattr(inner, field))
            self.inner, self.broken, self.name = inner, False, "breaking"

        def close(self) -> None:
            self.inner.close()

        def run(self, batch):
            if self.broken:
                raise RuntimeError("device lost")
            return self.inner.run(batch)

    backend = Breaking(load_backend(digits_checkpoint, "torch"))
    port = free_port()
    app = create_app(Settings(model=str(digits_checkpoint), port=port, max_wait_ms=0), backend)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        until(lambda: _get(url + "/readyz") == 200, timeout=60)
        assert httpx.get(url + "/healthz").status_code == 200
        backend.broken = True
        for _ in range(3):
            r = httpx.post(url + "/classify", content=png(), headers={"Content-Type": "image/png"}, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["code"] == "backend_failed"
        health = httpx.get(url + "/healthz")
        assert health.status_code == 503 and "device lost" in health.json()["detail"]
        assert httpx.get(url + "/readyz").status_code == 503
        r = httpx.post(url + "/classify", content=png(), headers={"Content-Type": "image/png"}, timeout=30)
        assert r.status_code == 503 and "failed" in r.json()["error"]["message"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


# ---- JSON logs; the API key guards /metrics, /docs and /v2 metadata --------------------------------------------------


def test_every_log_line_is_json_even_after_hostile_input(server):
    tiff = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(tiff, "TIFF", compression="tiff_deflate")
    data = tiff.getvalue()
    for body in (data[: len(data) // 2], data[:-7], b"II*\x00" + b"\xff" * 200):
        httpx.post(server.url + "/classify", files=[("file", ("t.tif", body))], timeout=30)
    httpx.post(
        server.url + "/classify",
        content=b"junk before\r\n--xyz\r\nContent-Disposition: form-data; name=file\r\n\r\nabc\r\n--xyz--\r\nafter",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        timeout=30,
    )
    raw_exchange(server, b"BAD REQUEST LINE\r\n\r\n")
    until(lambda: server.metric("resnet_serve_requests_total", 'route="(before the app)",status="400"') >= 1)
    lines = [ln for ln in server.log_path.read_text().splitlines() if ln.strip()]
    assert lines
    for ln in lines:
        json.loads(ln)


@pytest.fixture(scope="module")
def keyed(digits_onnx_model: Path):
    srv = Server(
        ["--model", str(digits_onnx_model), "--api-key", "k3y"], log_path=digits_onnx_model.parent / "keyed_robust.log"
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    "path",
    [
        "/metrics",
        "/docs",
        "/openapi.json",
        "/v2",
        f"/v2/models/{MODEL}",
        f"/v2/models/{MODEL}/ready",
        f"/v2/models/{MODEL}/config",
    ],
)
def test_api_key_guards_metrics_docs_and_v2_metadata(keyed, path):
    r = httpx.get(keyed.url + path)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", r.text
    assert httpx.get(keyed.url + path, headers={"X-API-Key": "k3y"}).status_code == 200
    assert httpx.get(keyed.url + path, headers={"Authorization": "Bearer k3y"}).status_code == 200


def test_health_stays_open_with_a_key_and_public_metrics_opens_metrics_and_docs(keyed, digits_onnx_model):
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(keyed.url + path).status_code == 200, path
    srv = Server(
        ["--model", str(digits_onnx_model), "--api-key", "k3y", "--public-metrics"],
        log_path=digits_onnx_model.parent / "pub.log",
    )
    srv.start()
    try:
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert httpx.get(srv.url + path).status_code == 200, path
        assert httpx.get(srv.url + "/v2").status_code == 401
    finally:
        srv.stop()


def test_card_check_helper_accepts_the_real_model(digits_onnx_model):
    from serve.engine.backends import load_backend
    from serve.engine.service import check_backend

    assert check_backend(load_backend(digits_onnx_model, "onnxruntime")) >= 0
    assert resnet.onnx_card.read_onnx_card(digits_onnx_model).input_size == 32
