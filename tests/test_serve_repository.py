"""The model repository (serve.repository.manager): a real server on 127.0.0.1 over a folder in Triton's layout with real
ONNX graphs (the digits model): models and versions by name, a new version swapped in under load with no failed
request, a broken version reported and skipped, unload/load, and export.triton's folder served as it is."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from resnet.samples import digits_images
from serve.repository.folder import parse_version
from serve.repository.manager import READY, UNAVAILABLE, ModelRepository
from serve.repository.pbtxt import PbtxtError, VersionPolicy, model_config, parse_pbtxt, read_model_config
from serve.settings import Settings, settings_from
from tests.serve_support import REPO, Server, encode, until

POLL_S = 0.5


def _digit_png(i: int = 0) -> bytes:
    x, _ = digits_images("test")
    return encode(Image.fromarray(x[i]).resize((64, 64)), "PNG")


DIGIT = str(digits_images("test")[1][0])  # the label of _digit_png(0)


def _index(server: Server) -> dict[tuple[str, str], dict[str, str]]:
    rows = httpx.post(server.url + "/v2/repository/index", timeout=10).json()
    return {(r["name"], r["version"]): r for r in rows}


def _classify(server: Server, **params: str) -> httpx.Response:
    files = {"file": ("d.png", _digit_png(), "image/png")}
    return httpx.post(server.url + "/classify", params={"topk": 3, **params}, files=files, timeout=30)


def _place(model: Path, repo: Path, name: str, version: int) -> Path:
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    shutil.copyfile(model, folder / "model.onnx")  # copied in place (not renamed): the settle check must hold it
    return folder


@pytest.fixture(scope="module")
def repo_server(digits_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """digits (versions 1 and 2, latest 2 served), other (version 1) and swap (versions 1 and 2, no config.pbtxt:
    version 2 served), polled every 0.5 s."""
    repo = tmp_path_factory.mktemp("repo") / "models"
    for v in (1, 2):
        _place(digits_onnx_model, repo, "digits", v)
    (repo / "digits" / "config.pbtxt").write_text(
        '# a hand-written config\nname: "digits"\nmax_batch_size: 40\nversion_policy: { latest { num_versions: 2 } }\n'
    )
    _place(digits_onnx_model, repo, "other", 1)
    for v in (1, 2):
        _place(digits_onnx_model, repo, "swap", v)  # no config.pbtxt: only the latest is served
    args = ["--model-repository", str(repo), "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_S)]
    server = Server([*args, "--default-model", "digits"], log_path=repo.parent / "server.log").start(timeout=180)
    until(
        lambda: sum(r["state"] == READY for r in _index(server).values()) == 4, timeout=120
    )  # digits 1, 2; other 1; swap 2
    yield server, repo
    assert server.stop() == 0, server.log()


def test_models_and_versions_answer_by_name(repo_server: tuple[Server, Path]) -> None:
    server, _ = repo_server
    for params, want in (
        ({"model": "digits", "version": "1"}, ("digits", "1")),
        ({"model": "digits", "version": "2"}, ("digits", "2")),
        ({"model": "digits"}, ("digits", "2")),  # no version: the highest loaded
        ({}, ("digits", "2")),  # no model: --default-model
        ({"model": "other"}, ("other", "1")),
    ):
        r = _classify(server, **params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model"], body["version"]) == want
        assert body["results"][0]["topk"][0]["label"] == DIGIT  # the same graph, whichever version answers
    from clients.client import Client

    with Client(server.url) as client:
        answer = client.classify(_digit_png(), model_name="digits", model_version="1")
    assert (answer.model, answer.version, answer.top[0].label) == ("digits", "1", DIGIT)
    crops = np.zeros((1, 3, 32, 32), np.float32)
    infer = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": crops.ravel().tolist()}]}
    r = httpx.post(server.url + "/v2/models/digits/versions/1/infer", json=infer, timeout=30)
    assert r.status_code == 200 and (r.json()["model_name"], r.json()["model_version"]) == ("digits", "1")
    meta = httpx.get(server.url + "/v2/models/digits", timeout=10).json()
    assert meta["name"] == "digits" and meta["versions"] == ["1", "2"]
    config = httpx.get(server.url + "/v2/models/digits/config", timeout=10).json()
    assert config["max_batch_size"] == 40  # config.pbtxt's max_batch_size bounds the batcher
    missing = _classify(server, model="nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert "digits, other, swap" in missing.json()["error"]["message"]
    gone = httpx.post(server.url + "/v2/models/digits/versions/9/infer", json=infer, timeout=10)
    assert gone.status_code == 404 and isinstance(gone.json()["error"], str)


def _full_log(server: Server) -> str:
    assert server.log_path is not None
    return server.log_path.read_text(errors="replace")


def _loaded_in(server: Server, name: str, version: int) -> float:
    """The load + warm-up seconds the server logged for a version."""
    m = re.search(rf"model {name} version {version} loaded and warmed up in ([0-9.]+) s", _full_log(server))
    assert m, server.log()
    return float(m.group(1))


def test_new_version_swaps_in_under_load_without_a_failed_request(
    repo_server: tuple[Server, Path], digits_onnx_model: Path, tmp_path: Path
) -> None:
    server, repo = repo_server
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.png").write_bytes(_digit_png(i))
    out = tmp_path / "load.json"
    load = subprocess.Popen(
        [sys.executable, "-m", "clients.loadgen", "--url", server.url, "--images", str(images)]
        + ["--concurrency", "8", "--duration", "15s", "--warmup", "0s", "--model-name", "swap", "--json", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(2.0)  # the load is running on version 2
        written = time.monotonic()
        _place(digits_onnx_model, repo, "swap", 3)
        seen = until(lambda: _classify(server, model="swap").json().get("version") == "3" and time.monotonic(), 60)
        load_s = _loaded_in(server, "swap", 3)
        # poll period + settle + loading and warming up, plus slack for a shared CI machine
        assert seen - written <= POLL_S + 0.2 + load_s + 3.0, (seen - written, load_s)
        output, _ = load.communicate(timeout=90)
    finally:
        if load.poll() is None:
            load.kill()
    assert load.returncode == 0, output
    result = json.loads(out.read_text())["levels"][0]
    assert result["requests"] > 20 and result["ok"] == result["requests"] and result["errors"] == {}, result
    # version 2 served the load until the switch and was closed once its last request was answered
    index = until(lambda: (i := _index(server))[("swap", "2")]["state"] == UNAVAILABLE and i, timeout=30)
    assert "unloaded: the version policy (latest 1) serves [3]" in index[("swap", "2")]["reason"]
    assert index[("swap", "3")]["state"] == READY and ("swap", "1") not in index  # never loaded
    until(lambda: "model swap version 2 unloaded" in _full_log(server), timeout=30)
    assert _classify(server, model="swap", version="2").status_code == 404
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for version in ("2", "3"):
        assert re.search(
            rf'resnet_serve_model_requests_total\{{model="swap",outcome="ok",version="{version}"\}} [1-9]', text
        )

    # A broken version 4: UNAVAILABLE with its reason, version 3 keeps answering.
    (repo / "swap" / "4").mkdir()
    (repo / "swap" / "4" / "model.onnx").write_bytes(b"\x08\x07not an onnx graph" * 100)
    row = until(lambda: (r := _index(server).get(("swap", "4"))) and r["state"] == UNAVAILABLE and r, timeout=30)
    assert "failed to load" in row["reason"], row
    for _ in range(5):
        r = _classify(server, model="swap")
        assert r.status_code == 200 and r.json()["version"] == "3"
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'resnet_serve_model_state{model="swap",state="UNAVAILABLE",version="4"} 1.0' in text
    assert re.search(r'resnet_serve_model_info\{[^}]*model="other"[^}]*version="1"\} 1.0', text)


def test_unload_then_requests_404_and_load_brings_it_back(repo_server: tuple[Server, Path]) -> None:
    server, _ = repo_server
    assert httpx.post(server.url + "/v2/repository/models/other/unload", timeout=30).json() == {}
    r = _classify(server, model="other")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    crops = np.zeros((1, 3, 32, 32), np.float32).ravel().tolist()
    infer = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": crops}]}
    v2 = httpx.post(server.url + "/v2/models/other/infer", json=infer, timeout=10)
    assert v2.status_code == 404 and isinstance(v2.json()["error"], str) and "other" in v2.json()["error"]
    time.sleep(2 * POLL_S)  # polling does not bring an unloaded model back
    assert _index(server)[("other", "1")]["state"] == UNAVAILABLE
    assert "unloaded by request" in _index(server)[("other", "1")]["reason"]
    assert httpx.post(server.url + "/v2/repository/models/other/load", timeout=60).json() == {}
    assert _classify(server, model="other").json()["version"] == "1"
    nope = httpx.post(server.url + "/v2/repository/models/nope/load", timeout=10)
    assert nope.status_code == 404 and isinstance(nope.json()["error"], str)


def test_export_triton_folder_serves_unchanged(digits_onnx_model: Path, tmp_path: Path) -> None:
    from export.triton import write_repository

    repo = tmp_path / "triton"
    write_repository(digits_onnx_model, repo, name="digits-triton")
    server = Server(["--model-repository", str(repo)], log_path=tmp_path / "server.log").start(timeout=180)
    try:
        r = _classify(server)  # the only model is the default
        assert r.status_code == 200 and (r.json()["model"], r.json()["version"]) == ("digits-triton", "1")
        assert r.json()["results"][0]["topk"][0]["label"] == DIGIT
        config = httpx.get(server.url + "/v2/models/digits-triton/config", timeout=10).json()
        assert config["max_batch_size"] == 64  # export.triton's default, read from its config.pbtxt
        assert _index(server)[("digits-triton", "1")]["state"] == READY
    finally:
        assert server.stop() == 0, server.log()


# ---- in-process: resources, folders that are not (yet) versions ---------------------------------------------------


def _sync(settings: Settings) -> ModelRepository:
    async def run() -> ModelRepository:
        repo = ModelRepository(settings)
        await repo.start()
        await repo.close()
        return repo

    return asyncio.run(run())


def test_loads_that_would_not_fit_are_refused_with_the_reason(digits_onnx_model: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        _place(digits_onnx_model, tmp_path, name, 1)
    repo = _sync(Settings(model_repository=str(tmp_path), max_loaded_models=1, multiscale="off"))
    rows = {r["name"]: r for r in repo.index()}
    assert rows["a"]["state"] == READY
    assert rows["b"]["state"] == UNAVAILABLE and "--max-loaded-models is 1" in rows["b"]["reason"]
    repo = _sync(Settings(model_repository=str(tmp_path), max_model_memory_mb=1, multiscale="off"))
    for row in repo.index():
        assert row["state"] == UNAVAILABLE and "refused: needs about" in row["reason"], row


def test_version_folders_without_a_servable_artifact(digits_onnx_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty" / "1").mkdir(parents=True)
    (tmp_path / "empty" / "1" / "notes.txt").write_text("no model here")
    fp16 = tmp_path / "half" / "1"
    fp16.mkdir(parents=True)
    shutil.copyfile(digits_onnx_model, fp16 / "model.fp16.onnx")
    failed = {"format": "resnet-parity", "version": 2, "passed": False, "failures": ["top-1 agreement 0.9 < 0.99"]}
    failed |= {"runtime": "onnxruntime", "provider": "CPUExecutionProvider", "precision": "fp16"}
    (tmp_path / "half" / "1" / "model.fp16.onnx.parity.json").write_text(json.dumps(failed))
    (tmp_path / "noversions").mkdir()
    (tmp_path / ".staging" / "1").mkdir(parents=True)  # hidden: a writer's temp folder, never a model
    (tmp_path / "badconfig" / "1").mkdir(parents=True)
    (tmp_path / "badconfig" / "config.pbtxt").write_text("version_policy: { latest: { num_versions: 0 } }")
    shutil.copyfile(digits_onnx_model, tmp_path / "badconfig" / "1" / "model.onnx")
    rows = {(r["name"], r["version"]): r for r in _sync(Settings(model_repository=str(tmp_path))).index()}
    assert "no artifact" in rows[("empty", "1")]["reason"]
    assert "gate failed" in rows[("half", "1")]["reason"]
    assert rows[("noversions", "")]["reason"] == "no version folder"
    assert not any(name.startswith(".") for name, _ in rows)
    assert "num_versions must be >= 1" in rows[("badconfig", "")]["reason"]
    assert rows[("badconfig", "")]["state"] == UNAVAILABLE and "not loaded" in rows[("badconfig", "")]["reason"]
    assert ("badconfig", "1") not in rows  # as Triton: a model whose config does not read is not loaded (one row)


# ---- settings and config.pbtxt -------------------------------------------------------------------------------------


def test_repository_flags_and_environment(tmp_path: Path) -> None:
    s = settings_from(["--model-repository", str(tmp_path), "--model-control-mode", "poll"], environ={})
    assert s.model_repository == str(tmp_path) and s.model_control_mode == "poll" and s.repository_poll_secs == 5.0
    s = settings_from(
        [], environ={"RESNET_SERVE_MODEL_REPOSITORY": str(tmp_path), "RESNET_SERVE_MAX_LOADED_MODELS": "2"}
    )
    assert s.model_repository == str(tmp_path) and s.max_loaded_models == 2
    from resnet import UsageError

    with pytest.raises(UsageError, match="not both"):
        settings_from(["--model", "x.onnx", "--model-repository", str(tmp_path)], environ={})
    with pytest.raises(UsageError, match="no such folder"):
        settings_from(["--model-repository", str(tmp_path / "missing")], environ={})
    with pytest.raises(UsageError, match="repository-poll-secs"):
        settings_from(["--model-repository", str(tmp_path), "--repository-poll-secs", "0"], environ={})


def test_cli_refuses_a_missing_repository_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "serve", "--model-repository", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr


CONFIGS = [
    'name: "m"\nmax_batch_size: 64\nversion_policy: { latest: { num_versions: 2 } }',
    "version_policy { all {} }",
    "version_policy: < specific: < versions: [1, 3] > >",
    "version_policy: { specific { versions: 4 versions: 2 } }\nmax_batch_size: 8",
    '# no policy\nplatform: \'onnxruntime_onnx\'\ninput [ { name: "input" dims: [ 3, 32, 32 ] }, { name: "x" } ]',
    "dynamic_batching { preferred_batch_size: [ 10, 20 ] max_queue_delay_microseconds: 2000 };\nmax_batch_size: 0",
]


@pytest.mark.parametrize("text", CONFIGS)
def test_pbtxt_reads_what_protobuf_reads(text: str) -> None:
    """protobuf's own text-format parser over Triton's ModelConfig message (tritonclient ships it) is the oracle."""
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    ref = text_format.Parse(text, pb.ModelConfig())
    ours = model_config(text)
    assert ours.max_batch_size == ref.max_batch_size
    kind = ref.version_policy.WhichOneof("policy_choice") or "latest"
    assert ours.policy.kind == kind
    if kind == "latest":
        assert ours.policy.num == (ref.version_policy.latest.num_versions or 1)
    if kind == "specific":
        assert ours.policy.versions == tuple(sorted(ref.version_policy.specific.versions))


def test_export_triton_config_is_read(digits_onnx_model: Path) -> None:
    from export.triton import render_config
    from resnet.onnx_card import read_onnx_card

    text = render_config(
        name="d",
        platform="onnxruntime_onnx",
        card=read_onnx_card(digits_onnx_model),
        max_batch=64,
        instances=1,
        kind="KIND_AUTO",
    )
    config = model_config(text)
    assert config.max_batch_size == 64 and config.policy == VersionPolicy("latest", 1)
    assert parse_pbtxt(text)["input"][0]["dims"] == [3, 32, 32]


@pytest.mark.parametrize(
    "text,message",
    [
        ("version_policy: { latest: { num_versions: 1 } ", "end of text"),
        ("max_batch_size: 64 64", "field name"),
        ('name: "unterminated', "unexpected character"),
        ("version_policy: { latest {} all {} }", "exactly one"),
        ("max_batch_size: -1", ">= 0"),
        ("max_batch_size: 'x'", "must be an integer"),
        ('name: "\\x"', "line 1: bad escape"),  # was a UnicodeDecodeError that stopped every scan
        ("a {" * 3000 + "}" * 3000, "nested more than 32 deep"),  # was a RecursionError
    ],
)
def test_pbtxt_errors_say_where(text: str, message: str) -> None:
    with pytest.raises(PbtxtError, match=message):
        model_config(text)


def test_a_config_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "config.pbtxt"
    big.write_text("max_batch_size: 8\n" + "# padding\n" * 200)
    assert read_model_config(big).max_batch_size == 8
    with pytest.raises(PbtxtError, match="bytes, over the 1000"):
        read_model_config(big, max_bytes=1000)


def test_version_names_are_plain_ascii_decimal() -> None:
    assert [parse_version(t) for t in ("0", "12", "007")] == [0, 12, 7]
    for text in ("\u00b2", "\u0661", "1" * 19, "", "-1", "+1", " 1", "1.0"):
        assert parse_version(text) is None, text


def test_version_policies_select() -> None:
    have = [1, 2, 3, 5]
    assert VersionPolicy().select(have) == [5]
    assert VersionPolicy("latest", 2).select(have) == [5, 3]
    assert VersionPolicy("all").select(have) == [5, 3, 2, 1]
    assert VersionPolicy("specific", versions=(2, 4)).select(have) == [2]
