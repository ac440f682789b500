"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis, bounded examples) against a real server, and a
round of mutated images (hypothesis) against /classify and /v2: never a 5xx, every answer documented and JSON."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection, positive_data_acceptance

from tests.serve_support import Server, encode, export_onnx

MODEL = "digits-resnet8"
KEY = "fuzz-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def server(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("fuzz")
    onnx_path = export_onnx(digits_checkpoint, folder / "digits.onnx")
    srv = Server(
        ["--model", str(onnx_path), "--request-timeout-s", "20", "--api-key", KEY], log_path=folder / "fuzz.log"
    ).start()
    yield srv
    assert srv.stop() == 0, srv.log()
    assert "Traceback" not in srv.log_path.read_text()


def test_api_from_its_own_openapi_schema(server):
    """Every documented operation with generated parameters and bodies (schemathesis strategies, bounded examples
    per operation): no 5xx, and each answer conforms to the schema (status, content type, body)."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case) -> None:
            response = case.call(base_url=server.url, headers=AUTH, timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            # Random bytes are rarely an image: "schema-valid data must be accepted" does not hold for /classify; the
            # valid key rides along on every call, so the API-key rule is tested in test_serve_robust.py instead.
            case.validate_response(
                response,
                excluded_checks=[positive_data_acceptance, negative_data_rejection, ignored_auth],
                headers=AUTH,
            )

        check()


def _seed_images() -> list[bytes]:
    img = Image.radial_gradient("L").convert("RGB").resize((48, 40))
    return [encode(img, fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")]


SEEDS = _seed_images()


@st.composite
def mutants(draw) -> bytes:
    """A real image with bit flips, byte overwrites, a truncation or an inserted run."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "insert"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[max(1, i) :]
        else:
            data[i:i] = bytes([draw(st.integers(0, 255))]) * draw(st.integers(1, 64))
    return bytes(data)


@given(data=mutants())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_mutated_images_get_a_clean_answer(server, data):
    r = httpx.post(server.url + "/classify", files=[("file", ("m", data))], headers=AUTH, timeout=30)
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text[:300])
    assert ("results" if r.status_code == 200 else "error") in r.json()
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}]}
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, headers=AUTH, timeout=30)
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text[:300])
    assert isinstance(r.json().get("error", ""), str)


def test_seed_images_decode():
    for data in SEEDS:
        Image.open(io.BytesIO(data)).load()


def test_openapi_says_what_the_routes_really_take(server):
    """The infer body is documented as the protocol's request (``inputs`` required, each tensor's name, shape and
    datatype), not ``{"type": "object"}``; routes without ``{version}`` take no ``version`` query parameter."""
    doc = httpx.get(server.url + "/openapi.json", headers=AUTH, timeout=10).json()
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["inputs"] and body["type"] == "object"
        assert body["properties"]["inputs"]["items"]["required"] == ["name", "shape", "datatype"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            params = {(p["name"], p["in"]) for p in op.get("parameters", [])}
            if path.startswith("/v2/models/") and "{version}" not in path:
                assert ("version", "query") not in params, (method, path)
            if "{version}" in path:
                assert ("version", "path") in params, (method, path)
    r = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json={}, headers=AUTH, timeout=10)
    assert r.status_code == 400 and "inputs" in r.json()["error"]  # {} is invalid by the documented schema too
    r = httpx.get(f"{server.url}/v2/models/{MODEL}", params={"version": "9"}, headers=AUTH, timeout=10)
    assert r.status_code == 200  # an undocumented query parameter is ignored, as for any route
