"""``python -m clients.smoke DIR --url http://127.0.0.1:8000``: classify a labelled ImageFolder (``DIR/<label>/*``)
through a running server over HTTP and print the top-1/top-5 accuracy; the demo's last step.

Waits for /readyz first (``--wait``). Exit 0 on success, 1 when the server fails or accuracy is under
``--min-accuracy``, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from resnet import IMAGE_SUFFIXES, UsageError, UserError, run_cli
from resnet.runtime.crops import FIXED_CROPS


def labelled_images(root: Path) -> list[tuple[Path, str]]:
    """``root/<label>/<image>`` pairs, sorted."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder of <label>/<image> files")
    pairs = [(p, p.parent.name) for p in sorted(root.glob("*/*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not pairs:
        raise UsageError(f"{root} has no images in <label>/ sub-folders")
    return pairs


def wait_ready(client: httpx.Client, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        try:
            r = client.get("/readyz")
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise UserError(f"server at {client.base_url} not ready within {seconds:g} s")
        time.sleep(0.25)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.smoke", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="ImageFolder: one sub-folder per label, named as the model's labels")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (default: %(default)s)")
    p.add_argument("--crops", choices=tuple(FIXED_CROPS), default="ten", help="ten-crop or centre crop")
    p.add_argument("--per-request", type=int, default=16, help="images per /classify request (default: %(default)s)")
    p.add_argument("--api-key", default=None, help="API key, if the server needs one")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for /readyz (default: %(default)s)")
    p.add_argument("--min-accuracy", type=float, default=0.0, help="exit 1 when top-1 accuracy is below this")
    args = p.parse_args(argv)
    if args.per_request < 1:
        raise UsageError("--per-request must be >= 1")
    pairs = labelled_images(args.folder)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=120) as client:
        ready = wait_ready(client, args.wait)
        top1 = top5 = 0
        started = time.perf_counter()
        for i in range(0, len(pairs), args.per_request):
            chunk = pairs[i : i + args.per_request]
            files = [("file", (path.name, path.read_bytes())) for path, _ in chunk]
            r = client.post("/classify", params={"topk": 5, "crops": args.crops}, files=files)
            if r.status_code != 200:
                raise UserError(f"/classify answered {r.status_code}: {r.text[:200]}")
            for (_, label), result in zip(chunk, r.json()["results"]):
                labels = [t["label"] for t in result["topk"]]
                top1 += labels[0] == label
                top5 += label in labels
        took = time.perf_counter() - started
    n = len(pairs)
    print(
        f"{n} held-out images via {args.url}/classify ({ready.get('model')}, {ready.get('backend')}, "
        f"{args.crops}-crop): top-1 accuracy {top1 / n:.1%}, top-5 {top5 / n:.1%}, {n / took:.1f} images/s"
    )
    if top1 / n < args.min_accuracy:
        raise UserError(f"top-1 accuracy {top1 / n:.1%} is under --min-accuracy {args.min_accuracy:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, prog="python -m clients.smoke"))
