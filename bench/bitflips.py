"""How many bit-flipped copies of a checkpoint load, and whether what loads is what was saved.

``python bench/bitflips.py [--count 500] [--arch cifar_resnet8]``: saves a fresh checkpoint, flips one random bit
of a copy ``count`` times, loads each with ``resnet.load_checkpoint`` and counts: refused by the weights digest,
refused otherwise, loaded identical (weights and card), loaded different (silent corruption: should be 0).
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import resnet


def bitflips(count: int, arch: str, seed: int = 1) -> dict[str, int]:
    logging.getLogger("resnet.digest").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = resnet.create_model(arch, num_classes=3)
        card = resnet.make_card(arch, name="bitflips", labels=["a", "b", "c"])
        data = resnet.save_checkpoint(Path(tmp) / "model.pt", model, card).read_bytes()
        saved = model.state_dict()
        rng, out = np.random.default_rng(seed), collections.Counter()
        mutant = Path(tmp) / "flipped.pt"
        for _ in range(count):
            flipped = bytearray(data)
            flipped[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
            mutant.write_bytes(bytes(flipped))
            try:
                loaded, loaded_card = resnet.load_checkpoint(mutant)
            except resnet.UserError as e:
                out["refused by the digest" if "sha256" in str(e) else "refused otherwise"] += 1
                continue
            same = loaded_card == card and all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
            out["loaded identical" if same else "loaded DIFFERENT"] += 1
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=500, help="bit-flipped copies to load (default %(default)s)")
    p.add_argument("--arch", default="cifar_resnet8", help="network to save (default %(default)s)")
    args = p.parse_args(argv)
    print(bitflips(args.count, args.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
