"""Limits before the app and the decode budget, against the real server (``python -m serve`` on 127.0.0.1): header
size, count and read timeouts, idle keep-alive, malformed HTTP, the per-request pixel budget and fair decoding."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.serve_support import Server, encode, healthz_latencies, png, raw_exchange

MODEL = "digits-resnet8"


@pytest.fixture(scope="module")
def server(hardened_server: Server) -> Server:
    return hardened_server  # conftest: header read and keep-alive timeouts short enough to test


# ---- limits before the app -------------------------------------------------------------------------------------------


def test_huge_header_line_is_refused_at_once_and_does_not_stall_others(server):
    with healthz_latencies(server) as worst:
        started = time.perf_counter()
        line = b"X-Big: " + b"a" * (64 << 20)
        answer = raw_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
        took = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "header_too_large"
    assert took < 2.0 and max(worst, default=0.0) < 0.5, (took, worst)


def test_too_many_headers_is_431_json(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n"
    answer = raw_exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 431") and b'"too_many_headers"' in answer, answer[:300]


def test_malformed_http_is_a_json_400(server):
    answer = raw_exchange(server, b"HELLO THERE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"application/json" in answer, answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"


def test_connection_that_never_finishes_its_headers_is_closed(server):
    started = time.monotonic()
    answer = raw_exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", read_s=10)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and 1.0 <= took < 5.0, (answer, took)
    started = time.monotonic()
    assert raw_exchange(server, b"", read_s=10) == b""  # connected, said nothing: closed too
    assert time.monotonic() - started < 5.0


def _read_one_response(s: socket.socket) -> bytes:
    """Read one whole HTTP/1.1 response with a Content-Length from a socket, and nothing more."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, f"connection closed mid-body: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_idle_keep_alive_connection_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.settimeout(10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_one_response(s)  # headers and body may arrive in separate segments
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert s.recv(65536) == b""  # closed by the server after --keep-alive-timeout-s 1
        assert time.monotonic() - started < 5.0


# ---- per-request pixel budget and fair decoding ----------------------------------------------------------------------


def big_flat_png(side: int = 6000) -> bytes:
    return encode(Image.new("L", (side, side), 128), "PNG", optimize=True)


def test_request_over_the_pixel_budget_is_413_before_decoding(server):
    big = big_flat_png()
    assert len(big) < 200_000  # small file, 36 megapixels
    files = [("file", (f"{i}.png", big)) for i in range(64)]
    started = time.perf_counter()
    r = httpx.post(server.url + "/classify", files=files, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text
    assert time.perf_counter() - started < 5.0
    v2 = {
        "inputs": [
            {
                "name": "image",
                "shape": [64],
                "datatype": "BYTES",
                "data": [__import__("base64").b64encode(big).decode()] * 64,
            }
        ]
    }
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=v2, timeout=60)
    assert r.status_code == 413 and "budget" in r.json()["error"], r.text


def test_small_request_is_not_starved_by_large_ones(digits_onnx_model):
    srv = Server(
        [
            "--model",
            str(digits_onnx_model),
            "--max-request-pixels",
            "10000000000",
            "--decode-threads",
            "2",
            "--max-decode-pixels",  # both large requests are admitted: this checks the turns, not the bound
            "1000000000",
            "--request-timeout-s",
            "120",
        ],
        log_path=digits_onnx_model.parent / "fair.log",
    ).start()
    try:
        big = big_flat_png(4000)
        results: dict = {}

        def post(key: str, files: list) -> None:
            t = time.perf_counter()
            r = httpx.post(srv.url + "/classify", files=files, timeout=120)
            results[key] = (r.status_code, time.perf_counter() - t)

        heavy = [threading.Thread(target=post, args=(f"big{i}", [("file", ("b.png", big))] * 16)) for i in range(2)]
        for t in heavy:
            t.start()
        time.sleep(0.5)  # both large requests are decoding now
        post("small", [("file", ("s.png", png()))])
        for t in heavy:
            t.join()
        assert results["small"][0] == 200 and all(results[f"big{i}"][0] == 200 for i in range(2)), results
        # The small request waited for at most a turn of the pool, not for 32 large decodes.
        assert results["small"][1] < min(results["big0"][1], results["big1"][1]) / 3, results
    finally:
        srv.stop()
