"""Ten-crop preprocessing speed on a 2-megapixel JPEG: ours (exact and draft) vs torchvision's transforms.

    python -m bench.preprocess_bench [--repeats 30]

All three run side by side in one process; the ratio is what to compare across machines.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

import resnet
from resnet.samples import sample_photo_paths


def two_megapixel_jpeg() -> bytes:
    """A real photo (scikit-image's Hubble deep field) scaled to 1632x1224 = 2.0 MP and saved as JPEG q=92."""
    src = next(p for p in sample_photo_paths() if p.name == "hubble_deep_field.jpg")
    img = Image.open(src).convert("RGB").resize((1632, 1224), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per method (median reported)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = two_megapixel_jpeg()
    card = resnet.make_card("resnet50")
    tv = T.Compose(
        [
            T.Resize(256),
            T.TenCrop(224),
            T.Lambda(lambda cs: torch.stack([T.Normalize(card.mean, card.std)(T.ToTensor()(c)) for c in cs])),
        ]
    )
    exact = resnet.preprocess(data, card, "ten", draft=False)
    fast = resnet.preprocess(data, card, "ten", draft=True)
    ref = tv(Image.open(io.BytesIO(data)).convert("RGB")).numpy()
    diff = np.abs(fast - exact)
    rows = [
        (
            "torchvision Resize+TenCrop+Normalize",
            median_ms(lambda: tv(Image.open(io.BytesIO(data)).convert("RGB")), args.repeats),
        ),
        (
            "resnet.preprocess exact (draft=False)",
            median_ms(lambda: resnet.preprocess(data, card, "ten", draft=False), args.repeats),
        ),
        ("resnet.preprocess draft (default)", median_ms(lambda: resnet.preprocess(data, card, "ten"), args.repeats)),
    ]
    print(f"2.0 MP JPEG ({len(data) / 1e6:.2f} MB) -> 10 x 3 x 224 x 224, median of {args.repeats}, 1 thread")
    for name, ms in rows:
        print(f"  {name:<40} {ms:7.1f} ms   {rows[0][1] / ms:4.2f}x vs torchvision")
    print(f"  exact vs torchvision: max abs diff {np.abs(exact - ref).max():.2e}")
    print(
        f"  draft vs exact: mean abs {diff.mean():.4f}, p99 {np.quantile(diff, 0.99):.4f}, max {diff.max():.4f} (normalised units)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
