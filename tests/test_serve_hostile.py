"""Hostile and malformed input against the real server (``python -m serve`` on 127.0.0.1, the digits model): one
clear JSON error per case, never a 5xx."""

from __future__ import annotations

import json
import re
import socket
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve_support import encode

# ---- hostile and malformed input: one clear JSON error, never a 500 ------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height pixels: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + _png_chunk(b"IEND", b"")
    )


def _hostile() -> dict[str, tuple[dict, int, str]]:
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8))
    png, jpg, gif = encode(img, "PNG"), encode(img, "JPEG"), encode(img, "GIF")
    tif, webp, bmp = encode(img, "TIFF"), encode(img, "WEBP"), encode(img, "BMP")
    corrupt = bytearray(png)
    i = png.find(b"IDAT")
    corrupt[i + 20 : i + 200] = b"\xff" * 180

    def files(*blobs: bytes) -> dict:
        return {"files": [("file", (f"x{n}", b)) for n, b in enumerate(blobs)]}

    def raw(body: bytes, ctype: str | None = "image/jpeg") -> dict:
        return {"content": body, "headers": {"Content-Type": ctype} if ctype else {}}

    return {
        "truncated_jpeg": (files(jpg[: len(jpg) // 2]), 400, "bad_image"),
        "truncated_png": (files(png[: len(png) // 2]), 400, "bad_image"),
        "corrupt_png_data_stream": (files(bytes(corrupt)), 400, "bad_image"),
        "truncated_gif": (files(gif[: len(gif) // 2]), 400, "bad_image"),
        "truncated_tiff": (files(tif[: len(tif) // 2]), 400, "bad_image"),
        "truncated_webp": (files(webp[: len(webp) // 2]), 400, "bad_image"),
        "truncated_bmp": (files(bmp[:60]), 400, "bad_image"),
        "empty_file_field": (files(b""), 400, "empty_image"),
        "empty_raw_body": (raw(b""), 400, "empty_image"),
        "second_image_truncated": (files(png, png[:100]), 400, "bad_image"),
        "text_file": (files(b"hello, I am not an image\n" * 10), 415, "unsupported_media_type"),
        "svg": (
            files(b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>"),
            415,
            "unsupported_media_type",
        ),
        "pdf": (files(encode(img, "PDF")), 415, "unsupported_media_type"),
        "ico_not_accepted": (files(encode(img.resize((32, 32)), "ICO")), 415, "unsupported_media_type"),
        "html_declared_as_jpeg": (raw(b"<html><body>hi</body></html>"), 415, "unsupported_media_type"),
        "png_signature_only": (files(png[:8]), 415, "unsupported_media_type"),
        "raw_body_text_content_type": (raw(png, "text/plain"), 415, "unsupported_media_type"),
        "raw_body_no_content_type": (raw(png, None), 415, "unsupported_media_type"),
        "decompression_bomb_49_megapixels": (files(_png_claiming(7000, 7000)), 413, "image_too_large"),
        "decompression_bomb_10_gigapixels": (files(_png_claiming(100_000, 100_000)), 413, "image_too_large"),
        "extreme_aspect_ratio": (files(encode(Image.new("RGB", (4000, 2)), "PNG")), 413, "image_too_large"),
        "too_many_images": (files(*([png] * 65)), 413, "too_many_images"),
        "multipart_without_boundary": (raw(b"abc", "multipart/form-data"), 400, "bad_request"),
        "multipart_garbage_body": (raw(b"garbage", "multipart/form-data; boundary=xyz"), 400, "bad_request"),
        "multipart_without_file_field": ({"files": [("image", ("a.png", png))]}, 422, "no_image"),
        "multipart_text_field_named_file": (
            {"data": {"file": "not a file"}, "files": [("other", ("a.png", png))]},
            422,
            "no_image",
        ),
    }


HOSTILE = _hostile()
BAD_PARAMS = {
    "topk_zero": {"topk": 0},
    "topk_negative": {"topk": -3},
    "topk_not_a_number": {"topk": "five"},
    "topk_over_classes": {"topk": 11},
    "crops_unknown": {"crops": "seven"},
    "topk_float": {"topk": 2.5},
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_gets_clear_json_error(onnx_server, name):
    kwargs, status, code = HOSTILE[name]
    r = httpx.post(onnx_server.url + "/classify", timeout=30, **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "\n" not in err["message"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
def test_bad_parameter_returns_422(onnx_server, photo_paths, name):
    r = httpx.post(
        onnx_server.url + "/classify", params=BAD_PARAMS[name], files=[("file", photo_paths[0].read_bytes())]
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_parameter"


def test_body_over_cap_by_content_length_returns_413_without_reading_it(onnx_server):
    big = b"\0" * (16 * 1024 * 1024 + 1)
    r = httpx.post(onnx_server.url + "/classify", content=big, headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_chunked_body_over_cap_returns_413_while_reading(onnx_server):
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(40):  # up to 40 MiB if the server kept reading
            sent += 1 << 20
            yield b"\xff" * (1 << 20)

    try:
        r = httpx.post(
            onnx_server.url + "/classify", content=chunks(), headers={"Content-Type": "image/jpeg"}, timeout=30
        )
    except httpx.HTTPError:  # the server may close the connection before the client finishes writing
        assert sent < 40 << 20
        return
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_wrong_method_and_unknown_path_use_the_error_shape(onnx_server):
    r = httpx.get(onnx_server.url + "/classify")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.post(onnx_server.url + "/no/such/route")
    assert r.status_code in (404, 405) and "error" in r.json()


@pytest.mark.parametrize(
    "method, path",
    [("OPTIONS", "/classify"), ("GET", "/v2/models/digits/infer"), ("PUT", "/v2/models/digits/versions/1/infer")],
)
def test_post_only_routes_answer_405_allow_post_beside_the_upload_page(onnx_server, method, path):
    """The upload page is served at / without shadowing the POST-only routes (it is the router's fallback)."""
    r = httpx.request(method, onnx_server.url + path)
    assert r.status_code == 405 and r.headers["allow"] == "POST", (r.status_code, r.headers, r.text)
    body = r.json()
    if path.startswith("/v2"):
        assert isinstance(body["error"], str) and "use POST" in body["error"]
    else:
        assert body["error"]["code"] == "method_not_allowed" and "use POST" in body["error"]["message"]
    page = httpx.get(onnx_server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    missing = httpx.get(onnx_server.url + "/no-such-page.html")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def _declared_over_the_limit(url: str, path: str) -> tuple[int, dict]:
    """A request whose Content-Length is over --max-body-bytes (no body sent): status and JSON body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        s.sendall((head + "Content-Length: 999999999999\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            re.search(rb"content-length: (\d+)", data.lower()).group(1) if b"\r\n\r\n" in data else b"1"
        ):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    return int(head_bytes.split()[1]), json.loads(body)


def test_a_body_over_the_limit_gets_each_protocols_error_shape(onnx_server):
    status, body = _declared_over_the_limit(onnx_server.url, "/v2/models/digits/infer")
    assert status == 413 and isinstance(body["error"], str) and "over the limit" in body["error"], body
    status, body = _declared_over_the_limit(onnx_server.url, "/classify")
    assert status == 413 and body["error"]["code"] == "body_too_large", body


def test_bad_input_never_produces_a_5xx(onnx_server, photo_paths):
    """Self-contained: sends every hostile input and bad parameter itself, then reads the 5xx counts."""
    for kwargs, _, _ in HOSTILE.values():
        httpx.post(onnx_server.url + "/classify", timeout=30, **kwargs)
    for params in BAD_PARAMS.values():
        httpx.post(onnx_server.url + "/classify", params=params, files=[("file", photo_paths[0].read_bytes())])
    text = httpx.get(onnx_server.url + "/metrics").text
    fives = [
        ln
        for ln in text.splitlines()
        if ln.startswith("resnet_serve_requests_total") and 'status="5' in ln and 'route="/readyz"' not in ln
    ]  # readyz is 503 while warming up: by design
    assert fives == [], fives
