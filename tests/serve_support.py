"""Helpers for the serving tests: a real ``python -m serve`` process on 127.0.0.1, ONNX export, the offline reference."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

import resnet
from resnet.card import ModelCard

REPO = Path(__file__).resolve().parent.parent
DYNAMIC_INPUT = {0: "batch", 2: "height", 3: "width"}  # as export.onnx writes them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_onnx(checkpoint: Path, out: Path, any_size: bool = True) -> Path:
    """Plain ``torch.onnx.export`` + the card in metadata: what the export stage produces (input ``[N, 3, H, W]``
    with N, H, W symbolic: "batch", "height", "width"); ``any_size=False``: a fixed-size ``[N, 3, S, S]`` graph."""
    import onnx

    from resnet.onnx_card import set_onnx_card

    model, card = resnet.load_checkpoint(checkpoint)
    size = card.input_size
    torch.onnx.export(
        model,
        torch.zeros(1, 3, size, size),
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": DYNAMIC_INPUT if any_size else {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    proto = onnx.load(str(out))
    set_onnx_card(proto, card)
    onnx.save(proto, str(out))
    return out


class Server:
    """``python -m serve ...`` as a subprocess; ``start()`` waits for /readyz; ``stop()`` sends SIGTERM."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        given = list(args)
        key = given[given.index("--api-key") + 1] if "--api-key" in given else (env or {}).get("RESNET_SERVE_API_KEY")
        self.api_key: str | None = key

    def start(self, timeout: float = 90.0, warm: bool = True) -> Server:
        """Launch; return when /readyz is 200 and (``warm``) every batch shape has warmed up in the background."""
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serve", *self.args], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200 and (
                    not warm or self.metric("resnet_serve_batch_shapes", 'state="cold"') == 0
                ):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path and self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample in /metrics, e.g. ``metric("resnet_serve_batch_size_count")``."""
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        text = httpx.get(self.url + "/metrics", headers=headers, timeout=5).text
        key = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0


def reference_probs(image: bytes | Path, model: torch.nn.Module, card: ModelCard, crops: str = "ten") -> np.ndarray:
    """The offline pipeline users trust: Pillow + torchvision Resize/TenCrop/ToTensor/Normalize + the model."""
    img = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
    img = (ImageOps.exif_transpose(img) or img).convert("RGB")
    norm = T.Compose([T.ToTensor(), T.Normalize(card.mean, card.std)])
    resized = T.Resize(card.resize_size)(img)
    if crops == "ten":
        x = torch.stack([norm(c) for c in T.TenCrop(card.input_size)(resized)])
    else:
        x = norm(T.CenterCrop(card.input_size)(resized))[None]
    with torch.no_grad():
        return torch.softmax(model(x).double(), dim=1).mean(0).numpy()


def probs_from_answer(result: dict[str, Any], num_classes: int) -> np.ndarray:
    """A /classify result with topk = num_classes -> the full probability vector by class index."""
    p = np.zeros(num_classes)
    for entry in result["topk"]:
        p[entry["index"]] = entry["probability"]
    return p


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def until(condition: Any, timeout: float = 20.0, every: float = 0.02) -> Any:
    """Poll ``condition()`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


def png(size: tuple[int, int] = (40, 40), color: str = "red") -> bytes:
    return encode(Image.new("RGB", size, color), "PNG")


def raw_exchange(server: Server, data: bytes, read_s: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; what came back before the server closed it (or ``read_s`` passed)."""
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.settimeout(read_s)
        try:
            s.sendall(data)
        except OSError:
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def classify(server: Server, files: list[tuple[str, bytes]], **params) -> httpx.Response:
    params = {"topk": 10, **params}  # the digits model has 10 classes: all of them
    return httpx.post(server.url + "/classify", params=params, files=[("file", f) for f in files], timeout=60)


@contextlib.contextmanager
def healthz_latencies(server: Server) -> Iterator[list[float]]:
    """While the block runs, another thread GETs /healthz in a loop; yields the list of their latencies (seconds)."""
    latencies: list[float] = []
    done = threading.Event()

    def ping() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not done.is_set():
                t = time.perf_counter()
                c.get("/healthz")
                latencies.append(time.perf_counter() - t)

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        yield latencies
    finally:
        done.set()
        pinger.join()
