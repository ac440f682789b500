"""`clients.Client` and `python -m clients.classify` against the real server (`python -m serve`) on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnet
from clients import Client, ClientError
from clients.classify import main
from resnet import run_cli
from resnet.multiscale import multiscale_probabilities, multiscale_views
from resnet.samples import DIGIT_LABELS, write_digits_imagefolder
from tests.clients_server import free_port, shared_server


@pytest.fixture(scope="module")
def server(digits_checkpoint, tmp_path_factory):
    return shared_server(digits_checkpoint, tmp_path_factory.mktemp("serve-log"))


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """Held-out digits as PNGs in nested folders <label>/<n>.png (a few per class)."""
    return write_digits_imagefolder(tmp_path_factory.mktemp("digits-png"), "test", limit=12)


def run_process(*args: str) -> subprocess.CompletedProcess:
    """The real `python -m clients.classify` process (used where the exit code or stderr of a process matters)."""
    return subprocess.run(
        [sys.executable, "-m", "clients.classify", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture()
def cli(capsys):
    """`clients.classify` in this process, as its `__main__` runs it: returns (exit code, stdout, stderr)."""

    def call(*args: str) -> subprocess.CompletedProcess:
        code = run_cli(main, list(args), prog="clients.classify")
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return call


def test_photo_prints_top5_table_with_bars_and_exits_0(server, photo_paths):
    proc = run_process(str(photo_paths[1]), "--url", server.url, "--api-key", server.api_key)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(str(photo_paths[1])) and "digits-resnet8" in lines[0] and "ten-crop" in lines[0]
    rows = lines[1:]
    assert len(rows) == 5
    probs = []
    for rank, row in enumerate(rows, 1):
        fields = row.split()
        assert fields[0] == f"{rank}." and fields[1] in DIGIT_LABELS
        probs.append(float(fields[2].rstrip("%")) / 100)
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert "█" in rows[0]  # the top class always fills at least one cell (it has >= 10% of the mass)


def test_client_matches_the_model_run_locally(server, photo_paths, digits_checkpoint):
    """The probabilities the client returns are the checkpoint's own ten-crop probabilities."""
    model, card = resnet.load_checkpoint(digits_checkpoint)
    model.eval()
    x = resnet.preprocess(photo_paths[0], card, crops="ten")
    with torch.no_grad():
        probs = resnet.crop_probabilities(model(torch.as_tensor(x)).numpy(), 10)[0]
    expected = resnet.topk(probs, 3, card.labels)
    with Client(server.url, api_key=server.api_key) as client:
        result = client.classify(photo_paths[0].read_bytes(), topk=3, crops="ten")
    assert [p.label for p in result.top] == [e["label"] for e in expected]
    np.testing.assert_allclose([p.probability for p in result.top], [e["probability"] for e in expected], atol=2e-4)
    assert result.model == "digits-resnet8" and result.backend and result.timings["total_ms"] > 0


def test_folder_is_searched_recursively_and_json_lines_name_each_file(server, digits_folder, digits_checkpoint, capsys):
    code = main([str(digits_folder), "--url", server.url, "--api-key", server.api_key, "--json", "--crops", "center"])
    out = capsys.readouterr().out
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    files = sorted(str(p) for p in digits_folder.rglob("*.png"))
    assert sorted(r["file"] for r in records) == files and len(files) == 12
    assert all(len(r["top"]) == 5 and r["crops"] == "center" for r in records)
    # Each answer is the checkpoint's own centre-crop verdict on that file.
    model, card = resnet.load_checkpoint(digits_checkpoint)
    model.eval()
    for r in records:
        with torch.no_grad():
            logits = model(torch.as_tensor(resnet.preprocess(Path(r["file"]), card, crops="center")))
        assert r["top"][0]["index"] == int(logits.argmax()), r


def test_multiscale_crops_from_the_command_line(server, photo_paths, digits_checkpoint, capsys):
    """--crops multiscale: the server's multi-scale answer (sides named), equal to resnet.multiscale offline."""
    code = main([str(photo_paths[0]), "--url", server.url, "--api-key", server.api_key, "--crops", "multiscale"])
    assert code == 0 and "multi-scale 28/32/36" in capsys.readouterr().out.splitlines()[0]
    main([str(photo_paths[0]), "--url", server.url, "--api-key", server.api_key, "--crops", "multiscale", "--json"])
    record = json.loads(capsys.readouterr().out)
    assert record["crops"] == "multiscale" and record["sides"] == [28, 32, 36]
    model, card = resnet.load_checkpoint(digits_checkpoint)
    with torch.no_grad():
        views = multiscale_views(photo_paths[0].read_bytes(), card)
        probs = multiscale_probabilities([model(torch.from_numpy(v)).numpy() for v in views])[0]
    expected = resnet.topk(probs, 5, card.labels)
    assert [p["index"] for p in record["top"]] == [e["index"] for e in expected]
    np.testing.assert_allclose(
        [p["probability"] for p in record["top"]], [e["probability"] for e in expected], atol=1e-4
    )


def test_missing_api_key_is_401_with_one_line_and_exit_1(server, photo_paths, cli):
    proc = cli(str(photo_paths[0]), "--url", server.url)
    assert proc.returncode == 1
    assert "HTTP 401" in proc.stderr and "--api-key" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli(str(photo_paths[0]), "--url", server.url, "--api-key", "wrong-key")
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr


def test_too_many_pixels_is_413_with_clear_message(server, tmp_path, cli):
    big = tmp_path / "huge.png"
    Image.new("RGB", (2000, 2000), (90, 140, 200)).save(big)  # 4 MP > the server's 3 MP limit, a small file
    proc = cli(str(big), "--url", server.url, "--api-key", server.api_key)
    assert proc.returncode == 1
    assert "HTTP 413" in proc.stderr and "too large" in proc.stderr and "Traceback" not in proc.stderr


def test_body_over_byte_limit_is_413(server):
    with Client(server.url, api_key=server.api_key) as client, pytest.raises(ClientError) as e:
        client.classify(b"\x89PNG\r\n\x1a\n" + bytes(5_000_000), name="big.png")
    assert e.value.status == 413 and "too large" in str(e.value)


def test_text_file_is_415_not_an_image_type(server, tmp_path, cli):
    note = tmp_path / "notes.txt"
    note.write_text("not a picture\n")
    proc = cli(str(note), "--url", server.url, "--api-key", server.api_key)
    assert proc.returncode == 1
    assert "HTTP 415" in proc.stderr and "not an image type" in proc.stderr


def test_one_corrupt_image_among_good_ones_exits_1_and_keeps_the_good_results(server, photo_paths, tmp_path, cli):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo_paths[3].read_bytes()[:400])  # a truncated JPEG (rocket.jpg)
    proc = cli(str(photo_paths[2]), str(broken), "--url", server.url, "--api-key", server.api_key, "--json")
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 2 and len(records[0]["top"]) == 5
    assert records[1]["error"]["status"] == 400
    assert "broken.jpg: error: HTTP 400" in proc.stderr and "1 of 2 image(s) failed" in proc.stderr


def test_server_down_says_connection_refused(photo_paths):
    proc = run_process(str(photo_paths[0]), str(photo_paths[1]), "--url", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 1
    assert "cannot connect" in proc.stderr and "is the server running" in proc.stderr
    assert "Traceback" not in proc.stderr and "2 of 2 image(s) failed" in proc.stderr


def test_silent_server_times_out_with_clear_message(photo_paths, cli):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        proc = cli(str(photo_paths[0]), "--url", f"http://127.0.0.1:{port}", "--timeout", "0.5")
    assert proc.returncode == 1
    assert "no answer" in proc.stderr and "0.5 s" in proc.stderr and "--timeout" in proc.stderr


class _Busy(BaseHTTPRequestHandler):
    """Answers 503 + Retry-After a set number of times, then a valid /classify answer."""

    busy_left = 0
    seen = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen += 1
        if type(self).busy_left > 0:
            type(self).busy_left -= 1
            body, status, extra = (
                b'{"error": {"code": "queue_full", "message": "queue full"}}',
                503,
                {"Retry-After": "0"},
            )
        else:
            answer = {
                "model": "m",
                "backend": "b",
                "crops": "ten",
                "timings": {"total_ms": 1.0},
                "results": [{"filename": "x", "topk": [{"index": 3, "label": "3", "probability": 0.9}]}],
            }
            body, status, extra = json.dumps(answer).encode(), 200, {}
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **extra}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def busy_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Busy
    httpd.shutdown()
    httpd.server_close()


def test_503_is_retried_honouring_retry_after_then_succeeds(busy_server, photo_paths):
    url, handler = busy_server
    handler.busy_left, handler.seen = 2, 0
    waits: list[float] = []
    with Client(url, retries=3, sleep=waits.append) as client:
        result = client.classify(photo_paths[0])
    assert result.top[0].label == "3" and handler.seen == 3 and waits == [0.0, 0.0]


def test_503_retries_are_bounded(busy_server, photo_paths):
    url, handler = busy_server
    handler.busy_left, handler.seen = 100, 0
    with Client(url, retries=2, sleep=lambda s: None) as client, pytest.raises(ClientError) as e:
        client.classify(photo_paths[0])
    assert e.value.status == 503 and "busy" in str(e.value) and handler.seen == 3


def test_bad_usage_exits_2(photo_paths, cli):
    assert cli(str(photo_paths[0]), "--url", "localhost:8000").returncode == 2
    assert cli(str(photo_paths[0]), "--topk", "0").returncode == 2
    proc = cli("/no/such/image.jpg")
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
