"""`python -m clients.loadgen` for short bounded runs against the real server: the figures are there and sane."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from clients.loadgen import is_loopback, main, parse_duration
from clients.promstats import histogram_totals, server_averages
from resnet import UsageError, run_cli
from resnet.samples import write_digits_imagefolder
from tests.clients_server import free_port, shared_server


@pytest.fixture(scope="module")
def server(digits_checkpoint, tmp_path_factory):
    return shared_server(digits_checkpoint, tmp_path_factory.mktemp("serve-log"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_digits_imagefolder(tmp_path_factory.mktemp("load-images"), "test", limit=20)


def test_closed_loop_levels_report_sane_figures_and_write_json_csv_png(server, images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "--url",
            server.url,
            "--api-key",
            server.api_key,
            "--images",
            str(images),
            "--concurrency",
            "1,4",
            "--duration",
            "1.5s",
            "--max-requests",
            "60",
            "--warmup",
            "0",
            "--crops",
            "ten",
            "--json",
            str(out / "load.json"),
            "--csv",
            str(out / "load.csv"),
            "--plot",
            str(out / "load.png"),
        ]
    )
    table = capsys.readouterr().out
    assert code == 0
    doc = json.loads((out / "load.json").read_text())
    levels = doc["levels"]
    assert [lv["level"] for lv in levels] == [1, 4] and doc["meta"]["mode"] == "concurrency"
    for lv in levels:
        assert 0 < lv["requests"] <= 60 and lv["ok"] == lv["requests"] and lv["errors"] == {}
        assert lv["elapsed_s"] < 1.5 + 10  # bounded: the deadline, plus the answers already on their way
        lat = lv["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lv["throughput"] == pytest.approx(lv["images_ok"] / lv["elapsed_s"])
        # The server's own figures from /metrics: a ten-crop request is 10 crops, batches are at most 64 crops.
        assert 10 <= lv["server_batch_size"] <= 64
        assert 0 <= lv["server_queue_ms"] <= lat["max"]
    # Four clients at once let the server batch several requests together.
    assert levels[1]["server_batch_size"] > levels[0]["server_batch_size"]
    rows = list(csv.DictReader((out / "load.csv").open()))
    assert [r["level"] for r in rows] == ["1", "4"] and float(rows[0]["p99_ms"]) > 0
    png = out / "load.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] >= 400
    header, rule, *body = table.splitlines()
    assert header.split()[:4] == ["level", "requests", "ok", "img/s"] and set(rule) == {"-"} and len(body) == 2


def test_open_loop_poisson_rate_is_bounded_by_time_and_count(server, images, tmp_path):
    out = tmp_path / "rate.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.loadgen",
            "--url",
            server.url,
            "--api-key",
            server.api_key,
            "--images",
            str(images),
            "--rate",
            "15",
            "--duration",
            "1s",
            "--max-requests",
            "40",
            "--warmup",
            "0",
            "--crops",
            "center",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    (level,) = json.loads(out.read_text())["levels"]
    assert level["mode"] == "rate" and level["level"] == 15.0
    assert 3 <= level["requests"] <= 40 and level["ok"] == level["requests"]  # Poisson(15), mean 15 in 1 s
    assert "15/s" in proc.stdout


def test_max_requests_stops_a_level_exactly(server, images, tmp_path):
    out = tmp_path / "n.json"
    code = main(
        [
            "--url",
            server.url,
            "--api-key",
            server.api_key,
            "--images",
            str(images),
            "--concurrency",
            "3",
            "--duration",
            "60s",
            "--max-requests",
            "7",
            "--warmup",
            "0",
            "--crops",
            "center",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    (level,) = json.loads(out.read_text())["levels"]
    assert level["requests"] == 7 and level["elapsed_s"] < 30


def test_errors_are_counted_by_status_and_exit_1(server, images, tmp_path):
    out = tmp_path / "e.json"
    code = main(
        [
            "--url",
            server.url,
            "--images",
            str(images),
            "--concurrency",
            "2",
            "--duration",
            "0.5s",
            "--max-requests",
            "6",
            "--warmup",
            "0",
            "--json",
            str(out),
        ]
    )  # no API key
    assert code == 1
    (level,) = json.loads(out.read_text())["levels"]
    assert level["errors"] == {"401": 6} and level["ok"] == 0 and level["latency_ms"]["p50"] is None


def test_server_down_is_one_line_and_exit_1(images, capsys):
    code = run_cli(main, ["--url", f"http://127.0.0.1:{free_port()}", "--images", str(images)], prog="clients.loadgen")
    err = capsys.readouterr().err
    assert code == 1 and "cannot connect" in err and len(err.strip().splitlines()) == 1


def test_bad_usage_exits_2(images, tmp_path, capsys):
    for argv in (
        ["--url", "ftp://127.0.0.1", "--images", str(images)],
        ["--images", str(images), "--concurrency", "1,zero"],
        ["--images", str(images), "--duration", "soon"],
        ["--images", str(tmp_path / "missing")],
    ):
        assert run_cli(main, argv, prog="clients.loadgen") == 2, argv
    assert "duration" in capsys.readouterr().err


def test_duration_and_loopback_parsing():
    assert parse_duration("20s") == 20 and parse_duration("500ms") == 0.5 and parse_duration("1m") == 60
    assert parse_duration("2.5") == 2.5
    with pytest.raises(UsageError):
        parse_duration("-1s")
    assert (
        is_loopback("http://127.0.0.1:8000") and is_loopback("http://localhost:8000") and is_loopback("http://[::1]:80")
    )
    assert not is_loopback("http://10.0.0.5:8000") and not is_loopback("http://example.org")


def test_server_averages_come_from_the_real_metrics_text(server, images):
    """Two scrapes around one known request: one ten-crop image is one batch of 10 crops."""
    headers = {"Authorization": f"Bearer {server.api_key}"}
    before = httpx.get(server.url + "/metrics").text
    assert histogram_totals(before, "resnet_serve_batch_size") is not None
    png = next(images.rglob("*.png")).read_bytes()
    r = httpx.post(server.url + "/classify", files={"file": ("d.png", png, "image/png")}, headers=headers, timeout=30)
    assert r.status_code == 200
    after = httpx.get(server.url + "/metrics").text
    batch, queue_ms = server_averages(before, after)
    assert batch == 10 and queue_ms is not None and queue_ms >= 0
