"""The model card inside ONNX files (docs/DESIGN.md §2: ``metadata_props["model_card"]``), shared by export and serve,
and beside it the graph's and the card's digests (``metadata_props["weights_sha256"]``, ``["card_sha256"]``,
``resnet.digest``), checked by every read.

The digest is the SHA-256 of the serialised ``GraphProto`` (its initializers, i.e. the weights, its nodes and I/O):
``set_onnx_card`` computes it from the in-memory graph, ``check_onnx_file`` from the graph's bytes as stored in the
file, found by walking the top level of the protobuf wire format (no ``onnx`` package needed: the ``[serve]``
install has none). The card's digest is over the card's JSON bytes as stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import digest
from .card import ModelCard
from .errors import CardError, CheckpointError, UserError

CARD_KEY = "model_card"
_GRAPH_FIELD = 7  # onnx.proto: ModelProto.graph
_METADATA_FIELD = 14  # ModelProto.metadata_props: StringStringEntryProto {key = 1; value = 2}


def graph_sha256(model: Any) -> str:
    """SHA-256 of an ``onnx.ModelProto``'s graph as serialised. Weights in external data files are covered only by
    their references (our artifacts keep them inside)."""
    return digest.bytes_sha256(model.graph.SerializeToString())


def set_onnx_card(model: Any, card: ModelCard) -> None:
    """Store the card, its digest and the graph's digest in an ``onnx.ModelProto``'s ``metadata_props`` (replacing
    earlier ones). Call it last, once the graph is final: every graph we write (FP32, FP16, INT8) is sealed here."""
    keep = [p for p in model.metadata_props if p.key not in (CARD_KEY, digest.DIGEST_KEY, digest.CARD_DIGEST_KEY)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    text = card.to_json()
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, text
    entry = model.metadata_props.add()
    entry.key, entry.value = digest.CARD_DIGEST_KEY, digest.card_sha256(text)
    entry = model.metadata_props.add()
    entry.key, entry.value = digest.DIGEST_KEY, graph_sha256(model)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a varint runs past the end")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> list[tuple[int, memoryview]]:
    """The length-delimited fields at the top level of a protobuf message: ``(field number, payload)``."""
    view = memoryview(data)
    out: list[tuple[int, memoryview]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        wire = key & 7
        if wire == 0:
            at = _varint(data, at)[1]
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        elif wire == 2:
            size, at = _varint(data, at)
            out.append((key >> 3, view[at : at + size]))
            at += size
        else:
            raise ValueError(f"wire type {wire}")
        if at > len(data):
            raise ValueError("a field runs past the end")
    return out


def _stored(data: bytes) -> tuple[dict[str, bytes], list[memoryview]]:
    """The metadata_props (values as stored bytes) and the graph field(s) of a serialised ModelProto."""
    props: dict[str, bytes] = {}
    graphs: list[memoryview] = []
    for number, payload in _fields(data):
        if number == _GRAPH_FIELD:
            graphs.append(payload)
        elif number == _METADATA_FIELD:
            entry = dict(_fields(bytes(payload)))
            props[bytes(entry.get(1, b"")).decode("utf-8", "replace")] = bytes(entry.get(2, b""))
    return props, graphs


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def check_onnx_bytes(data: bytes, path: str | os.PathLike[str]) -> None:
    """Refuse (``CheckpointError``) a serialised ONNX model whose graph or card does not hash to its recorded
    digest; log one line for one written before digests were recorded. ``CardError`` for bytes that are not
    protobuf."""
    try:
        props, graphs = _stored(data)
    except ValueError as e:
        raise CardError(f"{path} is not a readable ONNX file: truncated or corrupt ({e})") from None
    card = digest.recorded(_text(props.get(digest.CARD_DIGEST_KEY)), path, "model card")
    if CARD_KEY in props:
        digest.check(path, card, digest.card_sha256(props[CARD_KEY]) if card else "", what="model card")
    recorded = digest.recorded(_text(props.get(digest.DIGEST_KEY)), path)
    if recorded is not None and len(graphs) != 1:
        raise CheckpointError(f"{path} is corrupt: it holds {len(graphs)} graphs")
    digest.check(path, recorded, digest.bytes_sha256(graphs[0]) if recorded else "", what="graph")


def check_onnx_file(path: str | os.PathLike[str]) -> None:
    """``check_onnx_bytes`` on a file (what the server calls before ONNX Runtime opens it; no ``onnx`` needed)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    check_onnx_bytes(data, path)


def read_onnx_card(path: str | os.PathLike[str]) -> ModelCard:
    """The validated card of an ONNX file, read from the protobuf wire format (no ``onnx`` package: the
    ``[serve-gpu]`` image has none and must still admit what it serves); ``CardError`` for a file that is not ours
    (no card) or not protobuf, ``CheckpointError`` for one whose graph or card does not hash to its recorded digest."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        props, graphs = _stored(data)
    except ValueError as e:
        raise CardError(f"{path} is not a readable ONNX file: truncated or corrupt ({e})") from None
    if CARD_KEY not in props or not graphs:
        raise CardError(f"{path} has no model card in its metadata: it was not exported by this project")
    check_onnx_bytes(data, path)  # a changed card is refused as corrupt before it is read
    try:
        text = props[CARD_KEY].decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is corrupt: its model card is not UTF-8") from None
    try:
        return ModelCard.from_json(text)
    except CardError as e:
        raise CardError(f"{path}: {e}") from None
