"""`Client`: a small synchronous Python API for the server's `POST /classify` (docs/DESIGN.md §4), built on httpx.

    from clients import Client
    with Client("http://127.0.0.1:8000") as c:
        result = c.classify("cat.jpg", topk=5, crops="ten")
        print(result.top[0].label, result.top[0].probability)

Every failure a user can cause or meet (server down, 401, 413, 415, timeout, ...) raises `ClientError`, a
`resnet.UserError` whose message is one plain line, so a CLI prints it without a traceback.
"""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from resnet import IMAGE_SUFFIXES, UsageError, UserError
from resnet.runtime.crops import CROP_NAMES, crop_protocol

DEFAULT_URL = "http://127.0.0.1:8000"
CROPS = CROP_NAMES  # ten, center, multiscale (resnet.runtime.crops; the server must offer multiscale)

# What each status means to the person at the keyboard (the server's own message is appended).
STATUS_HINTS = {
    400: "the server could not decode the image",
    401: "the server needs a valid API key (pass --api-key)",
    404: "no /classify endpoint at this URL (is it our server?)",
    413: "the image is too large for the server",
    415: "not an image type the server accepts",
    422: "the server rejected the request parameters",
    429: "the server is rate limiting",
    503: "the server is busy or draining (it asked us to retry later)",
    504: "the server did not finish the image before its deadline",
}


class ClientError(UserError):
    """A request that failed; ``status`` is the HTTP status (None when no answer came) and ``code`` the server's."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ServerUnreachable(ClientError):
    """No connection could be made: every further request would fail the same way."""


@dataclass(frozen=True)
class Prediction:
    """One of the top-k classes."""

    index: int
    label: str
    probability: float


@dataclass
class Classification:
    """The server's answer for one image, with what the server said about itself."""

    top: list[Prediction]
    model: str | None = None
    backend: str | None = None
    version: str | None = None  # the model version that answered (a server with a model repository)
    timings: dict[str, float] = field(default_factory=dict)
    crops: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    sides: list[int] | None = None  # multiscale: the shorter sides the image was tested at

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``--json`` prints)."""
        return (
            {
                "top": [{"index": p.index, "label": p.label, "probability": p.probability} for p in self.top],
                "model": self.model,
                "backend": self.backend,
                "crops": self.crops,
                "timings": self.timings,
            }
            | ({"sides": self.sides} if self.sides is not None else {})
            | ({"version": self.version} if self.version is not None else {})
        )


def sniff_content_type(data: bytes) -> str | None:
    """The image media type from the first bytes, or None when they are not a format we know."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def content_type_for(name: str, data: bytes) -> str:
    """The media type to send: from the file name's suffix, else from the bytes, else octet-stream."""
    guessed, _ = mimetypes.guess_type(name)
    return guessed or sniff_content_type(data) or "application/octet-stream"


def find_images(inputs: list[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (recursively, image suffixes only) into a sorted list of files.

    A file named explicitly is kept whatever its suffix (the server decides whether it is an image);
    a name that does not exist raises `UsageError`.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {path}")
    return found


def error_from_response(response: httpx.Response) -> ClientError:
    """A `ClientError` with one readable line for an error answer (our JSON error model or anything else)."""
    status = response.status_code
    code = message = None
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code, message = err.get("code"), err.get("message")
        elif isinstance(body, dict) and "detail" in body:
            message = str(body["detail"])
    except ValueError:
        message = response.text.strip().splitlines()[0][:200] if response.text.strip() else None
    hint = STATUS_HINTS.get(status, "the server failed" if status >= 500 else "the request was refused")
    text = f"HTTP {status}: {hint}" + (f" ({message})" if message else "")
    return ClientError(text, status=status, code=code)


def parse_retry_after(value: str | None, default: float = 1.0) -> float:
    """Seconds from a ``Retry-After`` header (delta-seconds form; an HTTP date or garbage gives ``default``)."""
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def parse_result(body: dict[str, Any], index: int = 0) -> Classification:
    """The ``index``-th image's `Classification` from a /classify answer."""
    results = body.get("results")
    if not isinstance(results, list) or len(results) <= index:
        raise ClientError("the server's answer has no result for the image (is it our server?)")
    item = results[index]
    top = (item.get("topk") or item.get("top")) if isinstance(item, dict) else item
    if not isinstance(top, list):
        raise ClientError("the server's answer has no top-k list (is it our server?)")
    preds = [Prediction(int(p["index"]), str(p["label"]), float(p["probability"])) for p in top]
    timings = body.get("timings") or (item.get("timings") if isinstance(item, dict) else None) or {}
    return Classification(
        top=preds,
        model=body.get("model"),
        version=body.get("version"),
        backend=body.get("backend"),
        timings=dict(timings),
        crops=body.get("crops"),
        raw=body,
        sides=body.get("sides"),
    )


class Client:
    """A connection to one server. ``retries`` bounds how often a 503 is retried (each wait honours the server's
    ``Retry-After`` but never exceeds ``max_retry_wait`` seconds); ``timeout`` is per request, in seconds."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        max_retry_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = check_url(url)
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def classify(
        self,
        image: str | os.PathLike[str] | bytes,
        topk: int = 5,
        crops: str = "ten",
        name: str | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
    ) -> Classification:
        """Classify one image given as a path or its bytes, by the server's default model or ``model_name`` (and
        ``model_version``) of its model repository; raises `ClientError` on any failure."""
        try:
            crops = crop_protocol(crops).name
        except ValueError as e:
            raise UsageError(str(e)) from None
        if topk < 1:
            raise UsageError(f"topk must be at least 1, not {topk}")
        if isinstance(image, (bytes, bytearray)):
            data, name = bytes(image), name or "image"
        else:
            path = Path(image)
            try:
                data = path.read_bytes()
            except OSError as e:
                raise ClientError(f"cannot read {path}: {e.strerror or e}") from None
            name = name or path.name
        files = {"file": (name, data, content_type_for(name, data))}
        params: dict[str, Any] = {"topk": topk, "crops": crops}
        if model_name:
            params["model"] = model_name
        if model_version:
            params["version"] = model_version
        response = self._request("POST", "/classify", params=params, files=files)
        return parse_result(response.json())

    def healthz(self) -> bool:
        """True when the process answers /healthz with 200."""
        return self._request("GET", "/healthz", check=False).status_code == 200

    def readyz(self) -> bool:
        """True when the model is loaded and warmed up."""
        return self._request("GET", "/readyz", check=False, retry=False).status_code == 200

    def metrics_text(self) -> str:
        """The server's Prometheus exposition text."""
        return self._request("GET", "/metrics").text

    def _request(self, method: str, path: str, check: bool = True, retry: bool = True, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.ConnectError:
                raise ServerUnreachable(
                    f"cannot connect to {self.url} (connection refused: is the server running?)"
                ) from None
            except httpx.TimeoutException:
                timeout = self._http.timeout.read
                raise ClientError(f"no answer from {self.url} within {timeout:g} s (raise --timeout?)") from None
            except httpx.TransportError as e:
                raise ClientError(f"request to {self.url} failed: {e or type(e).__name__}") from None
            if response.status_code == 503 and retry and attempt < self.retries:
                attempt += 1
                self._sleep(min(parse_retry_after(response.headers.get("retry-after")), self.max_retry_wait))
                continue
            if check and response.status_code >= 400:
                raise error_from_response(response)
            return response


def check_url(url: str) -> str:
    """The base URL without a trailing slash; `UsageError` unless it is http(s)://host[:port][/prefix]."""
    try:
        parsed = httpx.URL(url) if "://" in url else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"--url must look like http://127.0.0.1:8000, not {url!r}")
    return url.rstrip("/")
