"""How many bit-flipped copies of a checkpoint and of its ONNX export load, and whether what loads is what was saved.

``python bench/bitflips.py [--count 500] [--card 300] [--arch cifar_resnet8]``: saves a fresh checkpoint and exports
it to ONNX, flips one random bit of a copy ``count`` times at any offset and ``card`` times inside the card's bytes,
loads each as the server does (checkpoint: ``resnet.load_checkpoint``; ONNX: ``check_onnx_file``, an ONNX Runtime
session and ``onnx_session_card``) and counts: refused by a digest, refused otherwise (one line), loaded identical
(weights and card), loaded DIFFERENT (silent corruption: should be 0), traceback (should be 0).
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import resnet


def _outcome(load: Callable[[Path], tuple[Any, Any]], path: Path, same: Callable[[Any, Any], bool]) -> str:
    try:
        loaded = load(path)
    except resnet.UserError as e:
        return "refused by a digest" if "sha256" in str(e) or "is corrupt" in str(e) else "refused otherwise"
    except Exception as e:  # what a user would see as a traceback
        return f"TRACEBACK ({type(e).__name__})"
    return "loaded identical" if same(*loaded) else "loaded DIFFERENT"


def _flips(data: bytes, where: tuple[int, int], count: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for _ in range(count):
        flipped = bytearray(data)
        flipped[int(rng.integers(*where))] ^= 1 << int(rng.integers(8))
        out.append(bytes(flipped))
    return out


def _onnx_loader(probe: np.ndarray) -> Callable[[Path], tuple[Any, Any]]:
    import onnxruntime as ort

    from resnet.onnx_card import check_onnx_file
    from resnet.runtime.ort import onnx_session_card

    def load(path: Path) -> tuple[Any, Any]:
        check_onnx_file(path)
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime refuses a broken graph: the server reports it in one line
            raise resnet.UserError(f"{path}: {type(e).__name__}") from None
        card = onnx_session_card(session, path)
        return session.run(None, {session.get_inputs()[0].name: probe})[0], card

    return load


def bitflips(count: int, card_count: int, arch: str, seed: int = 1) -> dict[str, dict[str, int]]:
    """Outcome counts per kind of flip: checkpoint and ONNX at random offsets, and inside each one's card."""
    from export.onnx import export_model, save_proto

    logging.getLogger("resnet.digest").setLevel(logging.ERROR)
    rng, results = np.random.default_rng(seed), {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = resnet.create_model(arch, num_classes=3).eval()
        card = resnet.make_card(arch, name="bitflips", labels=["dog", "cat", "bird"])
        pt = resnet.save_checkpoint(Path(tmp) / "model.pt", model, card)
        proto, _ = export_model(model, card, exporter="torchscript")
        onnx_path = Path(tmp) / "model.onnx"
        save_proto(proto, onnx_path)
        saved = model.state_dict()
        probe = np.random.default_rng(0).standard_normal((1, 3, card.input_size, card.input_size)).astype(np.float32)
        onnx_load = _onnx_loader(probe)
        expected = onnx_load(onnx_path)[0]

        def same_pt(m: Any, c: Any) -> bool:
            return c == card and all(torch.equal(m.state_dict()[k], v) for k, v in saved.items())

        def same_onnx(out: Any, c: Any) -> bool:
            return c == card and np.array_equal(out, expected)

        for kind, path, load, same in (
            ("checkpoint", pt, resnet.load_checkpoint, same_pt),
            ("onnx", onnx_path, onnx_load, same_onnx),
        ):
            data = path.read_bytes()
            if kind == "onnx":  # the card's JSON in metadata_props
                at = data.find(b'{"name":"bitflips"')
                card_span = (at, data.find(b"}}", at) + 2)
            else:  # the card's dict in the pickle, between its key and the state dict's
                at = data.find(b"model_card")
                card_span = (at + len("model_card"), data.find(b"state_dict", at))
            mutant = Path(tmp) / f"flipped{path.suffix}"
            for label, where, n in (("random", (0, len(data)), count), ("card", card_span, card_count)):
                out: collections.Counter[str] = collections.Counter()
                for flipped in _flips(data, where, n, rng):
                    mutant.write_bytes(flipped)
                    out[_outcome(load, mutant, same)] += 1
                results[f"{kind} {label} ({n})"] = dict(out)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=500, help="bit flips at random offsets per artifact (%(default)s)")
    p.add_argument("--card", type=int, default=300, help="bit flips inside each artifact's card (%(default)s)")
    p.add_argument("--arch", default="cifar_resnet8", help="network to save (default %(default)s)")
    args = p.parse_args(argv)
    for kind, counts in bitflips(args.count, args.card, args.arch).items():
        print(f"{kind}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
