"""JPEG scan bombs and the true cost of decoding (issue 28), against the real server on 127.0.0.1 with default flags.

A scan bomb is Pillow's own progressive JPEG whose last scan is repeated thousands of times: each scan is another pass
over every coefficient, so 330 KB held a decode thread for minutes before scans were counted. It is now refused from
its markers (413 ``too_many_scans``) before anything is decoded; a progressive 6000 x 6000 JPEG costs its full size
in the decode queue (not its draft size), and a 4-megapixel PNG is no longer a "small" image; a decode whose request
is gone stops at its next block of input.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from resnet.preprocess import DecodeCancelled, TooManyScansError, decode_image, jpeg_scans
from serve.settings import Settings
from tests.serve_support import Server, encode, until
from tests.test_serve_fair_decode import solid_png

BOMB_REPEATS = 2000


def progressive_jpeg(side: int) -> bytes:
    """Pillow's (libjpeg's) progressive JPEG of one colour: 10 scans."""
    return encode(Image.new("RGB", (side, side), (200, 30, 40)), "JPEG", progressive=True)


def scan_bomb(data: bytes, repeats: int = BOMB_REPEATS) -> bytes:
    """``data`` with its last scan (SOS header and entropy-coded data) repeated ``repeats`` more times."""
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:end] + data[last:end] * repeats + data[end:]


@pytest.fixture(scope="module")
def big_progressive() -> bytes:
    return progressive_jpeg(6000)


@pytest.fixture(scope="module")
def bomb(big_progressive: bytes) -> bytes:
    return scan_bomb(big_progressive)


@pytest.fixture(scope="module")
def bomb_server(digits_onnx_model: Path) -> Iterator[Server]:
    server = Server(["--model", str(digits_onnx_model)], log_path=digits_onnx_model.parent / "bomb.log").start()
    yield server
    server.stop()


# ---- counting scans from the markers -------------------------------------------------------------------------------


def test_scans_are_counted_from_the_markers(big_progressive: bytes, bomb: bytes) -> None:
    assert jpeg_scans(big_progressive) == (10, True)
    assert jpeg_scans(encode(Image.new("RGB", (64, 48)), "JPEG")) == (1, False)
    assert jpeg_scans(encode(Image.new("RGB", (64, 48)), "PNG")) == (0, False)
    assert 320_000 < len(bomb) < 340_000  # the 330 KB
    started = time.perf_counter()
    assert jpeg_scans(bomb, limit=10**6) == (10 + BOMB_REPEATS, True)
    assert time.perf_counter() - started < 0.5


def test_a_flood_of_marker_segments_is_refused_without_walking_it() -> None:
    flood = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 4_000_000  # 16 MB of empty comments
    started = time.perf_counter()
    with pytest.raises(TooManyScansError, match="marker segments"):
        jpeg_scans(flood)
    assert time.perf_counter() - started < 0.5


def test_decode_image_refuses_a_scan_bomb_before_decoding(bomb: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(TooManyScansError, match="more than 32 scans"):
        decode_image(bomb, 256)
    assert time.perf_counter() - started < 0.5


def test_a_cancelled_decode_stops_at_its_next_block_of_input(big_progressive: bytes) -> None:
    slow = scan_bomb(big_progressive, 300)  # unrefused (max_scans=None): over 10 s of decoding
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.perf_counter()
    with pytest.raises(DecodeCancelled):
        decode_image(slow, 256, max_scans=None, cancel=cancel)
    assert time.perf_counter() - started < 2.5


def test_images_go_to_the_lane_of_their_true_cost(big_progressive: bytes) -> None:
    from serve.engine.images import ImageError, decode_costs

    settings = Settings()
    small_lane = settings.decode_small_pixels
    png_4mp = solid_png(2000, 2000, (1, 2, 3))
    baseline = encode(Image.new("RGB", (6000, 6000), (9, 9, 9)), "JPEG")
    thumb = encode(Image.new("RGB", (32, 32)), "PNG")
    costs = decode_costs([png_4mp, big_progressive, baseline, thumb], 256, settings)
    assert costs[0] == 4_000_000 > small_lane  # was "small" with the 4 MP bound
    assert costs[1] == 36_000_000  # full size x 10 scans / 10, not the 750 x 750 draft
    assert costs[2] == 750 * 750  # a baseline JPEG is drafted: its draft size
    assert costs[3] == 32 * 32 <= small_lane
    with pytest.raises(ImageError) as e:
        decode_costs([thumb, scan_bomb(big_progressive)], 256, settings)
    assert (e.value.status, e.value.code) == (413, "too_many_scans")
    assert e.value.message.startswith("image 2 of 2:")


# ---- against the server --------------------------------------------------------------------------------------------


async def _bombs_and_probes(url: str, bomb: bytes, small: bytes, seconds: float = 6.0) -> tuple[list, list, list]:
    """Three clients send scan bombs back to back while a fourth sends a small image every 0.5 s."""
    stop = time.monotonic() + seconds
    bombs: list[tuple[int, float]] = []
    probes: list[tuple[int, float]] = []

    async def attacker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            r = await client.post(url, files={"file": ("bomb.jpg", bomb, "image/jpeg")})
            bombs.append((r.status_code, time.perf_counter() - started))
            codes.append(r.json()["error"]["code"] if r.status_code >= 400 else "")

    async def prober(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            r = await client.post(url, files={"file": ("small.png", small, "image/png")})
            probes.append((r.status_code, time.perf_counter() - started))
            await asyncio.sleep(max(0.0, 0.5 - (time.perf_counter() - started)))

    codes: list[str] = []
    clients = [httpx.AsyncClient(timeout=40.0) for _ in range(4)]
    try:
        await asyncio.gather(*(attacker(c) for c in clients[:3]), prober(clients[3]))
    finally:
        for c in clients:
            await c.aclose()
    return bombs, probes, codes


def test_three_scan_bombs_are_refused_at_once_and_small_requests_stay_fast(bomb_server: Server, bomb: bytes) -> None:
    small = encode(Image.new("RGB", (32, 32), (10, 200, 30)), "PNG")
    bombs, probes, codes = asyncio.run(_bombs_and_probes(bomb_server.url + "/classify", bomb, small))
    assert bombs and {s for s, _ in bombs} == {413}, sorted({s for s, _ in bombs})
    assert set(codes) == {"too_many_scans"}
    assert max(t for _, t in bombs) < 1.0, f"a bomb took {max(t for _, t in bombs):.2f} s to refuse"
    assert {s for s, _ in probes} == {200}, [s for s, _ in probes]
    took = [t for _, t in probes]
    assert statistics.median(took) <= 1.0 and max(took) <= 3.0, took


async def _flood_and_probe(url: str, large: bytes, small: bytes, n: int) -> tuple[list, list[float]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as attacker, httpx.AsyncClient(timeout=60.0) as third:
        attack = [
            asyncio.ensure_future(attacker.post(url, files={"file": ("big.jpg", large, "image/jpeg")}))
            for _ in range(n)
        ]
        took: list[float] = []
        while not all(t.done() for t in attack) or len(took) < 3:
            started = time.perf_counter()
            r = await third.post(url, files={"file": ("small.png", small, "image/png")})
            assert r.status_code == 200, r.text
            took.append(time.perf_counter() - started)
            await asyncio.sleep(0.25)
        return await asyncio.gather(*attack, return_exceptions=True), took


def test_progressive_6000_jpegs_do_not_starve_small_requests(bomb_server: Server, big_progressive: bytes) -> None:
    small = encode(Image.new("RGB", (32, 32), (10, 200, 30)), "PNG")
    results, took = asyncio.run(_flood_and_probe(bomb_server.url + "/classify", big_progressive, small, 32))
    assert statistics.median(took) <= 1.0 and max(took) <= 3.0, took
    statuses = {r.status_code for r in results if not isinstance(r, BaseException)}
    assert not [r for r in results if isinstance(r, BaseException)] and statuses <= {200, 503}, statuses


def test_a_progressive_photo_of_ordinary_size_is_classified(bomb_server: Server) -> None:
    photo = encode(Image.new("RGB", (800, 600), (90, 120, 200)), "JPEG", progressive=True)
    r = httpx.post(bomb_server.url + "/classify", files={"file": ("p.jpg", photo, "image/jpeg")}, timeout=30)
    assert r.status_code == 200, r.text


def test_the_scan_limit_is_a_flag(digits_onnx_model: Path, big_progressive: bytes) -> None:
    server = Server(["--model", str(digits_onnx_model), "--max-jpeg-scans", "5"]).start(warm=False)
    try:
        r = httpx.post(server.url + "/classify", files={"file": ("p.jpg", big_progressive, "image/jpeg")}, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_scans", r.text
        assert "more than 5 scans" in r.json()["error"]["message"]
    finally:
        server.stop()


def test_the_decode_of_a_request_past_its_deadline_stops(digits_onnx_model: Path, big_progressive: bytes) -> None:
    """With the scan limit lifted, a 300-scan bomb decodes for over 10 s; its request's 1 s deadline stops it, so
    the one thread large images get (--decode-threads 1) is free again for the next large image."""
    slow = scan_bomb(big_progressive, 300)
    large = solid_png(2000, 2000, (1, 2, 3))  # 4 MP: the large lane
    args = ["--model", str(digits_onnx_model), "--max-jpeg-scans", "1000", "--request-timeout-s", "1"]
    log = digits_onnx_model.parent / "deadline.log"
    server = Server([*args, "--decode-threads", "1"], log_path=log).start(warm=False)
    try:
        for _ in range(2):
            r = httpx.post(server.url + "/classify", files={"file": ("b.jpg", slow, "image/jpeg")}, timeout=30)
            assert r.status_code == 504, r.text
            assert r.json()["error"]["message"] == "no answer within the 1 s deadline"
            ok = until(
                lambda: (
                    httpx.post(
                        server.url + "/classify", files={"file": ("l.png", large, "image/png")}, timeout=30
                    ).status_code
                    == 200
                ),
                timeout=4.0,
                every=0.3,
            )
            assert ok, "the large lane's thread is still decoding the bomb"
    finally:
        server.stop()
    assert "Traceback" not in log.read_text() and "never retrieved" not in log.read_text()
