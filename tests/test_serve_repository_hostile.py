"""A model repository holding hostile entries beside a good model (issue 28), on a real server on 127.0.0.1: each bad
entry is one UNAVAILABLE model with its reason, the server becomes ready on what is good, the good model serves and a
new version of it still loads; versions that are not plain ASCII decimal and over-long names are 4xx, not 500."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from resnet.samples import digits_images
from tests.serve_support import Server, encode, until

POLL_S = 0.5
BAD = ("badescape", "deep", "superscript", "huge", "outside", "passwd", "usr")


def _png() -> bytes:
    return encode(Image.fromarray(digits_images("test")[0][0]).resize((64, 64)), "PNG")


def _index(server: Server) -> dict[tuple[str, str], dict[str, str]]:
    rows = httpx.post(server.url + "/v2/repository/index", timeout=10).json()
    return {(r["name"], r["version"]): r for r in rows}


def _place(model: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copyfile(model, folder / "model.onnx")
    return folder


def _hostile_repository(model: Path, base: Path) -> Path:
    repo = base / "models"
    _place(model, repo / "digits" / "1")
    _place(model, repo / "badescape" / "1")
    (repo / "badescape" / "config.pbtxt").write_text('name: "\\x"\n')
    _place(model, repo / "deep" / "1")
    (repo / "deep" / "config.pbtxt").write_text("a {" * 3000 + "}" * 3000)
    _place(model, repo / "superscript" / "\u00b2")
    _place(model, repo / "huge" / "1")
    (repo / "huge" / "config.pbtxt").write_text("# padding\n" * 1_000_000)  # 10 MB
    outside = _place(model, base / "elsewhere" / "1")
    (repo / "outside").mkdir()
    os.symlink(outside, repo / "outside" / "1")
    (repo / "passwd" / "1").mkdir(parents=True)
    os.symlink("/etc/passwd", repo / "passwd" / "1" / "model.onnx")
    (repo / "usr").mkdir()
    os.symlink("/usr", repo / "usr" / "1")
    return repo


@pytest.fixture(scope="module")
def hostile(digits_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    base = tmp_path_factory.mktemp("hostile")
    repo = _hostile_repository(digits_onnx_model, base)
    args = ["--model-repository", str(repo), "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_S)]
    server = Server([*args, "--default-model", "digits"], log_path=base / "server.log").start(timeout=120)
    yield server, repo
    assert server.stop() == 0, server.log()


def test_bad_entries_are_unavailable_and_the_good_model_serves(hostile: tuple[Server, Path]) -> None:
    server, _ = hostile
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
    index = _index(server)
    assert index[("digits", "1")]["state"] == "READY"
    for name in BAD:
        rows = [r for (n, _), r in index.items() if n == name]
        assert rows and all(r["state"] != "READY" for r in rows), (name, rows)
        assert any(r["reason"] for r in rows), (name, rows)
    reasons = {name: " ".join(r["reason"] for (n, _), r in index.items() if n == name) for name in BAD}
    assert "bad escape" in reasons["badescape"]
    assert "nested more than" in reasons["deep"]
    assert "not a plain decimal number" in reasons["superscript"]
    assert "bytes, over the" in reasons["huge"]
    for name in ("outside", "passwd", "usr"):
        assert "outside the repository" in reasons[name], reasons[name]
    r = httpx.post(server.url + "/classify", files={"file": ("d.png", _png(), "image/png")}, timeout=30)
    assert r.status_code == 200 and r.json()["model"] == "digits", r.text


def test_a_new_version_of_the_good_model_still_loads(
    hostile: tuple[Server, Path], digits_onnx_model: Path, tmp_path: Path
) -> None:
    server, repo = hostile
    staged = _place(digits_onnx_model, tmp_path / "v2")
    os.rename(staged, repo / "digits" / "2")  # renamed into place, as export.triton does
    until(lambda: _index(server).get(("digits", "2"), {}).get("state") == "READY", timeout=60)
    r = httpx.post(
        server.url + "/classify", params={"model": "digits"}, files={"file": ("d.png", _png(), "image/png")}, timeout=30
    )
    assert r.status_code == 200 and r.json()["version"] == "2", r.text


def test_requests_stay_fast_while_polls_meet_the_hostile_entries(hostile: tuple[Server, Path]) -> None:
    server, _ = hostile
    worst = 0.0
    for _ in range(int(4 * POLL_S / 0.1)):  # about four polls, each meeting a 10 MB config and a link to /usr
        started = time.perf_counter()
        assert httpx.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
        worst = max(worst, time.perf_counter() - started)
        time.sleep(0.1)
    assert worst < 1.0, worst


def test_versions_that_are_not_ascii_decimal_are_4xx(hostile: tuple[Server, Path]) -> None:
    server, _ = hostile
    files = {"file": ("d.png", _png(), "image/png")}
    for version in ("\u00b2", "\u0661", "1" * 30):  # superscript two, Arabic-Indic one, past int64
        r = httpx.post(
            server.url + "/classify", params={"model": "digits", "version": version}, files=files, timeout=30
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter", r.text
        crops = np.zeros((1, 3, 32, 32), np.float32).ravel().tolist()
        infer = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": crops}]}
        for method, path in (("POST", "/infer"), ("GET", "/ready"), ("GET", "")):
            url = f"{server.url}/v2/models/digits/versions/{version}{path}"
            r = httpx.request(method, url, json=infer if method == "POST" else None, timeout=30)
            assert r.status_code == 400 and isinstance(r.json()["error"], str), (path, r.text)


def test_over_long_model_names_are_4xx(hostile: tuple[Server, Path]) -> None:
    server, _ = hostile
    for action in ("load", "unload"):
        r = httpx.post(f"{server.url}/v2/repository/models/{'a' * 300}/{action}", timeout=10)
        assert r.status_code == 400 and "at most" in r.json()["error"], r.text
    assert httpx.get(f"{server.url}/v2/models/{'a' * 300}/ready", timeout=10).status_code == 404
