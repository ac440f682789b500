"""Model control modes with Triton's meaning (issue 26), on real servers on 127.0.0.1: ``none`` (the default, and
``--model``'s one-model repository) refuses load/unload with a 400 in KServe's error shape and keeps serving;
``explicit`` loads and unloads on request."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
from PIL import Image

from resnet.samples import digits_images
from serve.settings import ModelControl, Settings
from tests.serve_support import REPO, Server, encode


def _classify(server: Server, **params: str) -> httpx.Response:
    png = encode(Image.fromarray(digits_images("test")[0][0]).resize((64, 64)), "PNG")
    return httpx.post(server.url + "/classify", params=params, files={"file": ("d.png", png, "image/png")}, timeout=30)


def _repository(model: Path, base: Path, names: tuple[str, ...] = ("digits",)) -> Path:
    for name in names:
        folder = base / "models" / name / "1"
        folder.mkdir(parents=True)
        shutil.copyfile(model, folder / "model.onnx")
    return base / "models"


def test_control_modes_are_the_settings_choices() -> None:
    field = next(f for f in Settings.__dataclass_fields__.values() if f.name == "model_control_mode")
    assert field.metadata["choices"] == tuple(m.value for m in ModelControl) == ("none", "poll", "explicit")
    assert field.default == ModelControl.NONE


def test_none_refuses_load_and_unload_and_keeps_serving(digits_onnx_model: Path, tmp_path: Path) -> None:
    repo = str(_repository(digits_onnx_model, tmp_path))
    for args, name in (
        (["--model", str(digits_onnx_model)], "digits-resnet8"),
        (["--model-repository", repo], "digits"),
    ):
        server = Server(args, log_path=tmp_path / "server.log").start(timeout=120)
        try:
            for action in ("unload", "load"):
                r = httpx.post(f"{server.url}/v2/repository/models/{name}/{action}", timeout=30)
                assert r.status_code == 400, r.text
                assert isinstance(r.json()["error"], str) and "model control mode is none" in r.json()["error"]
            r = _classify(server)
            assert r.status_code == 200 and r.json()["model"] == name, r.text
            rows = httpx.post(server.url + "/v2/repository/index", timeout=10).json()
            assert [(x["name"], x["version"], x["state"]) for x in rows] == [(name, "1", "READY")]
        finally:
            assert server.stop() == 0, server.log()


def test_explicit_loads_and_unloads_on_request(digits_onnx_model: Path, tmp_path: Path) -> None:
    repo = _repository(digits_onnx_model, tmp_path, ("digits", "other"))
    args = ["--model-repository", str(repo), "--model-control-mode", "explicit", "--default-model", "other"]
    server = Server(args, log_path=tmp_path / "server.log").start(timeout=120)
    try:
        assert httpx.post(server.url + "/v2/repository/models/digits/unload", timeout=30).json() == {}
        r = _classify(server, model="digits")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert httpx.post(server.url + "/v2/repository/models/digits/load", timeout=60).json() == {}
        r = _classify(server, model="digits")
        assert r.status_code == 200 and r.json()["version"] == "1", r.text
    finally:
        assert server.stop() == 0, server.log()


def test_application_state_is_typed_and_never_read_back_with_getattr() -> None:
    from serve.api.app import create_app
    from serve.api.state import ServeState

    for path in (REPO / "serve").rglob("*.py"):
        assert not re.search(r"getattr\([^)]*state", path.read_text()), path
    app = create_app(Settings(model="model.onnx"))
    assert isinstance(app.state.serve, ServeState)
    assert app.state.serve.repository.control == ModelControl.NONE


def test_every_route_dependency_runs_on_the_event_loop() -> None:
    """No route has a plain ``def`` dependency: FastAPI would run it in a worker thread on every request (a thread
    hop and 0.13 ms of GIL per /classify for the API-key check, measured with ``bench.gil_bench --top``)."""
    import inspect

    from fastapi.routing import APIRoute

    from serve.api.app import create_app

    def sync_calls(dependant) -> list[str]:
        found = []
        for dep in dependant.dependencies:
            call = dep.call
            target = call if inspect.isfunction(call) else type(call).__call__
            if not (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)):
                found.append(getattr(call, "__name__", type(call).__name__))
            found += sync_calls(dep)
        return found

    def routes(app_routes) -> list:  # APIRoutes, or (FastAPI >= 0.16x) the included routers' effective routes
        out = []
        for r in app_routes:
            out += [r] if isinstance(r, APIRoute) else list(getattr(r, "effective_route_contexts", list)())
        return out

    found = {r.path: sync_calls(r.dependant) for r in routes(create_app(Settings(model="m.onnx", api_key="k")).routes)}
    assert "/classify" in found and any(path.endswith("/infer") for path in found)
    assert {path: calls for path, calls in found.items() if calls} == {}
