"""KServe v2 / Open Inference Protocol on our server, exercised with Triton's own client (`tritonclient[http]`)
against a real `python -m serve` process on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from serve_support import Server, encode, export_onnx, reference_probs

import resnet
from resnet.card import ModelCard
from resnet.preprocess import preprocess

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the [dev] extra) is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

API_KEY = "kserve-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}  # tritonclient adds its own headers to the dict it is given: copy
MODEL = "digits-resnet8"


@pytest.fixture(scope="module")
def onnx_path(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(digits_checkpoint, tmp_path_factory.mktemp("kserve") / "digits.onnx")


@pytest.fixture(scope="module")
def server(onnx_path: Path) -> Any:
    """ONNX Runtime backend, exact decoding (so answers equal the offline torchvision pipeline), an API key."""
    srv = Server(
        ["--model", str(onnx_path), "--no-draft"],
        env={"RESNET_SERVE_API_KEY": API_KEY},
        log_path=onnx_path.with_suffix(".log"),
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    c = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60.0)
    yield c
    c.close()


def _crops(images: np.ndarray, card: ModelCard) -> np.ndarray:
    return np.concatenate([preprocess(Image.fromarray(im), card, crops="ten") for im in images])


def test_tritonclient_sees_a_live_ready_server_and_the_models_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=dict(AUTH))
    assert not client.is_model_ready("no-such-model", headers=dict(AUTH))
    server_meta = client.get_server_metadata(headers=dict(AUTH))
    assert server_meta["name"] == "resnet-stack" and "binary_tensor_data" in server_meta["extensions"]
    meta = client.get_model_metadata(MODEL, headers=dict(AUTH))
    assert meta["versions"] == ["1"] and meta["platform"] == "resnet-stack_onnxruntime"
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"]} == {
        ("input", "FP32", (-1, 3, 32, 32)),
        ("image", "BYTES", (-1,)),
    }
    assert {(t["name"], tuple(t["shape"])) for t in meta["outputs"]} == {
        ("logits", (-1, 10)),
        ("probabilities", (-1, 10)),
    }
    config = client.get_model_config(MODEL, headers=dict(AUTH))
    assert config["max_batch_size"] == 64 and json.loads(config["parameters"]["labels"]["string_value"])[3] == "3"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope", headers=dict(AUTH))


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_fp32_crops_give_the_logits_of_the_same_onnx_model(
    client: Any, onnx_path: Path, digits_test_images: tuple[np.ndarray, np.ndarray], binary: bool
) -> None:
    card = resnet.onnx_card.read_onnx_card(onnx_path)
    crops = _crops(digits_test_images[0][:3], card)  # three ten-crop images = 30 rows
    inp = httpclient.InferInput("input", list(crops.shape), "FP32")
    inp.set_data_from_numpy(crops, binary_data=binary)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer(MODEL, [inp], outputs=[out], headers=dict(AUTH), request_id="crops-1")
    logits = result.as_numpy("logits")
    expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": crops})[0]
    assert logits.shape == (30, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "crops-1" and result.get_response()["model_version"] == "1"


def test_bytes_images_give_the_offline_ten_crop_probabilities(
    client: Any, digits_checkpoint: Path, photo_paths: list[Path]
) -> None:
    model, card = resnet.load_checkpoint(digits_checkpoint)
    model.eval()
    photos = [p.read_bytes() for p in photo_paths[:3]]
    inp = httpclient.InferInput("image", [len(photos)], "BYTES")
    inp.set_data_from_numpy(np.array(photos, dtype=np.object_))
    result = client.infer(MODEL, [inp], headers=dict(AUTH))  # no outputs named: all of them, binary
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 10)
    for row, photo in zip(probs, photos):
        np.testing.assert_allclose(row, reference_probs(photo, model, card), atol=1e-4)
    # The classification extension: top-3 as "value:index:label", the same order as the probabilities.
    out = httpclient.InferRequestedOutput("probabilities", class_count=3)
    top = client.infer(MODEL, [inp], outputs=[out], headers=dict(AUTH)).as_numpy("probabilities")
    assert top.shape == (3, 3)
    for row, entries in zip(probs, top):
        parsed = [e.decode().split(":") for e in entries]
        assert [int(i) for _, i, _ in parsed] == list(np.argsort(-row, kind="stable")[:3])
        assert [lab for _, _, lab in parsed] == [card.labels[int(i)] for _, i, _ in parsed]
        np.testing.assert_allclose([float(v) for v, _, _ in parsed], np.sort(row)[::-1][:3], atol=1e-6)


@pytest.mark.parametrize("crops", ["center", "multiscale"])
def test_crops_parameter_and_json_base64_images(server: Any, photo_paths: list[Path], crops: str) -> None:
    """``crops`` center and multiscale (the paper's multi-scale test) answer what /classify answers for them."""
    import base64

    png = next(p for p in photo_paths if p.suffix == ".png").read_bytes()
    body = {
        "parameters": {"crops": crops},
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png).decode()]}],
    }
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "probabilities" and out["shape"] == [1, 10]
    classify = httpx.post(
        f"{server.url}/classify",
        params={"topk": 10, "crops": crops},
        content=png,
        headers={**AUTH, "Content-Type": "image/png"},
        timeout=30,
    ).json()
    expected = np.zeros(10)
    for e in classify["results"][0]["topk"]:
        expected[e["index"]] = e["probability"]
    np.testing.assert_allclose(out["data"], expected, atol=1e-6)


def test_inference_and_metadata_need_the_api_key_but_health_does_not(client: Any, server: Any) -> None:
    crops = np.zeros((10, 3, 32, 32), np.float32)
    inp = httpclient.InferInput("input", list(crops.shape), "FP32")
    inp.set_data_from_numpy(crops)
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [inp])
    assert err.value.status() == "401"
    assert client.infer(MODEL, [inp], headers={"X-API-Key": API_KEY}).as_numpy("logits").shape == (10, 10)
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
    for path in ("/v2", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/config"):
        assert httpx.get(server.url + path).status_code == 401, path
        assert httpx.get(server.url + path, headers=AUTH).status_code == 200, path


def _binary_request(inputs: list[dict[str, Any]], blobs: list[bytes], **extra: Any) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + b"".join(blobs), {**AUTH, "Inference-Header-Content-Length": str(len(head))}


def _binary(inputs: list[dict[str, Any]], blobs: list[bytes]) -> dict[str, Any]:
    """Request kwargs (content, headers) for the binary tensor extension."""
    return dict(zip(("content", "headers"), _binary_request(inputs, blobs)))


_ZEROS = np.zeros((2, 3, 32, 32), np.float32)
_JPEG = encode(Image.new("RGB", (40, 40), "red"), "JPEG")
_FP32 = {"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32"}
# Each case: a name, the request (``path`` overrides the infer route; ``headers`` the API key), status, message part.
MALFORMED: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown model", {"path": "/v2/models/other/infer", "json": {"inputs": []}}, 404, "unknown model"),
    (
        "unknown version",
        {"path": f"/v2/models/{MODEL}/versions/7/infer", "json": {"inputs": []}},
        404,
        "no version",
    ),
    ("not json", {"content": b"{not json"}, 400, "not an inference request"),
    ("no inputs key", {"json": {"outputs": []}}, 400, "inputs"),
    ("two inputs", {"json": {"inputs": [{**_FP32, "data": _ZEROS.ravel().tolist()}] * 2}}, 400, "exactly one"),
    ("unknown input", {"json": {"inputs": [{**_FP32, "name": "pixels", "data": [0]}]}}, 400, "unknown input"),
    (
        "wrong datatype",
        {"json": {"inputs": [{**_FP32, "datatype": "INT32", "data": [0] * _ZEROS.size}]}},
        400,
        "must be FP32",
    ),
    (
        "wrong crop size",
        {"json": {"inputs": [{**_FP32, "shape": [2, 3, 30, 30], "data": [0.0] * 5400}]}},
        400,
        "[N, 3, 32, 32]",
    ),
    ("too few values", {"json": {"inputs": [{**_FP32, "data": [0.0] * 10}]}}, 400, "needs 6144"),
    ("non-numeric data", {"json": {"inputs": [{**_FP32, "data": ["a"] * _ZEROS.size}]}}, 400, "not a list of FP32"),
    (
        "NaN crops",
        _binary(
            [{**_FP32, "parameters": {"binary_data_size": _ZEROS.nbytes}}],
            [np.full_like(_ZEROS, np.nan).tobytes()],
        ),
        400,
        "NaN",
    ),
    ("no data", {"json": {"inputs": [_FP32]}}, 400, "neither 'data'"),
    (
        "binary size past the end",
        _binary([{**_FP32, "parameters": {"binary_data_size": _ZEROS.nbytes}}], [_ZEROS.tobytes()[:100]]),
        400,
        "does not fit",
    ),
    (
        "header length past the end",
        {"content": b"{}", "headers": {**AUTH, "Inference-Header-Content-Length": "99"}},
        400,
        "outside the body",
    ),
    (
        "header length not a number",
        {"content": b"{}", "headers": {**AUTH, "Inference-Header-Content-Length": "x"}},
        400,
        "not an integer",
    ),
    (
        "truncated BYTES element",
        _binary(
            [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}],
            [struct.pack("<I", 1000) + b"abcd"],
        ),
        400,
        "runs past the end",
    ),
    (
        "BYTES count differs from shape",
        _binary(
            [
                {
                    "name": "image",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(_JPEG)},
                }
            ],
            [struct.pack("<I", len(_JPEG)) + _JPEG],
        ),
        400,
        "needs 2",
    ),
    (
        "images as FP32",
        {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}},
        400,
        "must be BYTES",
    ),
    (
        "JSON image not base64",
        {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}},
        400,
        "base64",
    ),
    (
        "corrupt image",
        _binary(
            [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + 40},
                }
            ],
            [struct.pack("<I", 40) + _JPEG[:40]],
        ),
        400,
        "image",
    ),
    (
        "not an image",
        _binary(
            [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + 11},
                }
            ],
            [struct.pack("<I", 11) + b"hello world"],
        ),
        415,
        "",
    ),
    (
        "bad crops parameter",
        {
            "json": {
                "parameters": {"crops": "five"},
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
            }
        },
        400,
        "crops must be one of",
    ),
    (
        "output of the other input",
        {"json": {"inputs": [{**_FP32, "data": _ZEROS.ravel().tolist()}], "outputs": [{"name": "probabilities"}]}},
        400,
        "needs input 'image'",
    ),
    (
        "bad classification count",
        {
            "json": {
                "inputs": [{**_FP32, "data": _ZEROS.ravel().tolist()}],
                "outputs": [{"name": "logits", "parameters": {"classification": 11}}],
            }
        },
        400,
        "classification must be",
    ),
    (
        "compressed body",
        {"content": b"x", "headers": {**AUTH, "Content-Encoding": "gzip"}},
        415,
        "Content-Encoding",
    ),
]


@pytest.mark.parametrize("label, request_kwargs, status, message", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_inference_request_gets_the_protocols_error_body(
    server: Any, label: str, request_kwargs: dict[str, Any], status: int, message: str
) -> None:
    kwargs = dict(request_kwargs)
    url = server.url + kwargs.pop("path", f"/v2/models/{MODEL}/infer")
    before = server.metric("resnet_serve_requests_total", f'route="/v2/models/{{name}}/infer",status="{status}"')
    r = httpx.post(url, headers=kwargs.pop("headers", AUTH), timeout=30, **kwargs)
    assert r.status_code == status, (label, r.status_code, r.text)
    error = r.json()["error"]
    assert isinstance(error, str) and message in error, (label, error)
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200  # the server is still fine
    if "path" not in request_kwargs:  # /metrics counts the protocol's requests by route and status
        after = server.metric("resnet_serve_requests_total", f'route="/v2/models/{{name}}/infer",status="{status}"')
        assert after == before + 1


def test_there_are_at_least_twenty_malformed_cases() -> None:
    assert len(MALFORMED) >= 20


def test_readiness_goes_503_while_draining_then_the_server_exits(onnx_path: Path) -> None:
    """SIGTERM makes /v2/health/ready and the model's readiness 503 (a load balancer stops sending work) for the
    drain grace period, then the process exits cleanly. Its own server, so no other test depends on running first."""
    srv = Server(
        ["--model", str(onnx_path), "--drain-grace-s", "1.5"],
        env={"RESNET_SERVE_API_KEY": API_KEY},
        log_path=onnx_path.with_suffix(".drain.log"),
    ).start()
    try:
        srv.signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and httpx.get(srv.url + "/v2/health/ready").status_code == 200:
            time.sleep(0.02)
        r = httpx.get(srv.url + "/v2/health/ready")
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and r.json()["ready"] is False
        assert httpx.get(f"{srv.url}/v2/models/{MODEL}/ready", headers=AUTH).status_code == 503
        assert httpx.get(srv.url + "/v2/health/live").status_code == 200
        assert srv.proc.wait(timeout=30) == 0
    finally:
        srv.stop()
