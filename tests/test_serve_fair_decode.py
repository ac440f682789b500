"""Fair decoding under attack, against the real server on 127.0.0.1 with default flags: two clients each send 64
concurrent 6000 x 6000 PNGs (~120 KB each on the wire, under the pixel cap) while a third sends a 32 x 32 PNG.
The small request is answered 200 within 2 s; the attackers get 503 + Retry-After past the decode queue's pixel
bound (or their answer), never a timeout."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.serve_support import Server, encode

ATTACKERS, PER_ATTACKER, SIDE = 2, 64, 6000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real, valid single-colour RGB PNG, compressed row by row (Pillow takes seconds at this size)."""
    row = b"\0" + bytes(rgb) * width
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def large_png() -> bytes:
    data = solid_png(SIDE, SIDE, (200, 30, 40))
    assert len(data) < 200_000
    return data


@pytest.fixture(scope="module")
def fair_server(digits_onnx_model: Path) -> Iterator[Server]:
    server = Server(["--model", str(digits_onnx_model)], log_path=digits_onnx_model.parent / "fair.log").start()
    yield server
    server.stop()


def test_large_png_is_real_and_under_the_pixel_cap(large_png: bytes) -> None:
    import io

    with Image.open(io.BytesIO(large_png)) as im:
        assert im.format == "PNG" and im.size == (SIDE, SIDE) and SIDE * SIDE < 40_000_000
        im.verify()


async def _post(client: httpx.AsyncClient, url: str, data: bytes) -> httpx.Response | BaseException:
    try:
        return await client.post(url, files={"file": ("x.png", data, "image/png")})
    except httpx.HTTPError as e:
        return e


async def _attack_and_probe(url: str, large: bytes, small: bytes) -> tuple[list, httpx.Response, float]:
    limits = httpx.Limits(max_connections=PER_ATTACKER, max_keepalive_connections=PER_ATTACKER)
    timeout = httpx.Timeout(50.0)
    attackers = [httpx.AsyncClient(limits=limits, timeout=timeout) for _ in range(ATTACKERS)]
    try:
        attack = [asyncio.ensure_future(_post(client, url, large)) for client in attackers for _ in range(PER_ATTACKER)]
        # probe while the attack is under way: half the attackers were turned away, large decodes are running
        deadline = time.monotonic() + 30
        while sum(t.done() for t in attack) < PER_ATTACKER and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not all(t.done() for t in attack), "the attack was over before the probe"
        async with httpx.AsyncClient(timeout=timeout) as third:
            started = time.perf_counter()
            probe = await third.post(url, files={"file": ("small.png", small, "image/png")})
            took = time.perf_counter() - started
        results = await asyncio.gather(*attack)
    finally:
        for client in attackers:
            await client.aclose()
    return results, probe, took


def test_a_small_image_is_answered_while_two_clients_flood_large_pngs(fair_server: Server, large_png: bytes) -> None:
    small = encode(Image.new("RGB", (32, 32), (10, 200, 30)), "PNG")
    started = time.monotonic()
    results, probe, took = asyncio.run(_attack_and_probe(fair_server.url + "/classify", large_png, small))
    assert probe.status_code == 200, probe.text
    assert took < 2.0, f"the small request took {took:.2f} s under the attack"
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} attackers timed out or were dropped: {failures[:3]}"
    statuses = sorted({r.status_code for r in results})
    assert set(statuses) <= {200, 503}, statuses
    busy = [r for r in results if r.status_code == 503]
    assert len(busy) >= PER_ATTACKER, f"only {len(busy)} of {len(results)} attackers were turned away"
    assert all(r.headers.get("retry-after") and r.json()["error"]["code"] == "queue_full" for r in busy)
    assert time.monotonic() - started < 60
    assert fair_server.metric("resnet_serve_rejected_total", 'reason="decode_queue_full"') == len(busy)


# ---- the decode queue's scheduling, on real threads ---------------------------------------------------------------


def test_small_jobs_get_a_thread_while_large_ones_hold_all_the_others() -> None:
    import threading

    from serve.engine.decode import FairPool

    async def scenario() -> list[str]:
        pool = FairPool(2, max_pixels=None, small_pixels=100)
        release, order = threading.Event(), []

        def large(name: str) -> str:
            release.wait(10)
            order.append(name)
            return name

        def small() -> str:
            order.append("small")
            return "small"

        with pool.admitted([1000] * 4) as owner:
            big = [asyncio.ensure_future(pool.run(owner, large, f"L{i}", cost=1000)) for i in range(4)]
            await asyncio.sleep(0.1)
            with pool.admitted([10]) as other:
                assert await asyncio.wait_for(pool.run(other, small, cost=10), 5) == "small"
            release.set()
            await asyncio.gather(*big)
        pool.shutdown()
        return order

    assert asyncio.run(scenario())[0] == "small"


def test_the_decode_queue_is_bounded_in_pixels_per_size() -> None:
    from serve.engine.decode import DecodeQueueFull, FairPool

    pool = FairPool(1, max_pixels=100, small_pixels=10)
    with pool.admitted([60]):
        with pytest.raises(DecodeQueueFull, match="large images"):
            with pool.admitted([50]):
                pass
        with pool.admitted([10, 10]):  # small images have their own bound
            assert pool.pixels == {"small": 20, "large": 60}
    assert pool.pixels == {"small": 0, "large": 0}
    with pool.admitted([500]):  # an empty queue takes any one request
        pass
    pool.shutdown()
