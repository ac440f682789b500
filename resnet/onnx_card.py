"""The model card inside ONNX files (docs/DESIGN.md §2: ``metadata_props["model_card"]``), shared by export and serve."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .card import ModelCard
from .errors import CardError, UserError

CARD_KEY = "model_card"


def set_onnx_card(model: Any, card: ModelCard) -> None:
    """Store the card in an ``onnx.ModelProto``'s ``metadata_props`` (replacing any earlier one)."""
    keep = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()


def read_onnx_card(path: str | os.PathLike[str]) -> ModelCard:
    """The validated card of an ONNX file; ``CardError`` for a file that is not ours (no card)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnx.load(str(path), load_external_data=False)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # untrusted bytes: protobuf raises DecodeError, ValueError, RuntimeError ...
        raise CardError(f"{path} is not a readable ONNX file: truncated or corrupt ({type(e).__name__})") from None
    for prop in model.metadata_props:
        if prop.key == CARD_KEY:
            try:
                return ModelCard.from_json(prop.value)
            except CardError as e:
                raise CardError(f"{path}: {e}") from None
    raise CardError(f"{path} has no model card in its metadata: it was not exported by this project")
