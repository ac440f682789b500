"""Read the two fields of a Triton ``config.pbtxt`` the model repository acts on: ``version_policy`` and
``max_batch_size``.

``config.pbtxt`` is Triton's ``ModelConfig`` protobuf in protobuf *text format*
(https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_configuration.md). Without the
message's descriptor (it ships in tritonclient's gRPC package, not a serving dependency) the text is parsed
generically: ``name: value`` scalars (strings, numbers, enum words), ``name { ... }`` / ``name: { ... }`` /
``name < ... >`` messages, ``name: [ a, b ]`` / ``name [ {..}, {..} ]`` lists, ``#`` comments, commas or semicolons
between fields. Every field maps to the *list* of its values (a repeated field is written many times or as a list).
A text this grammar does not accept raises ``PbtxtError`` with the line, and so does one nested deeper than
``MAX_DEPTH`` messages or lists, a string with a bad escape, or (``read_model_config``) a file over ``max_bytes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelConfig", "PbtxtError", "VersionPolicy", "parse_pbtxt", "read_model_config"]

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*                                  # space, comments
    |(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')   # quoted string
    |(?P<punct>[{}\[\]<>:,;])
    |(?P<word>[A-Za-z0-9_+.\-]+)                       # identifiers, numbers, enum values
    """,
    re.VERBOSE,
)
_CLOSE = {"{": "}", "<": ">"}
MAX_DEPTH = 32  # Triton's ModelConfig nests about 6 deep; 3,000 would exhaust Python's recursion
MAX_CONFIG_BYTES = 1 << 20  # a config.pbtxt larger than this is refused unread (Triton's are a few KB)


class PbtxtError(ValueError):
    """The text is not protobuf text format as far as this reader goes (message says where)."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos, line = [], 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PbtxtError(f"line {line}: unexpected character {text[pos]!r}")
        if m.lastgroup is not None:
            out.append((m.lastgroup, m.group(m.lastgroup), line))
        line += m.group(0).count("\n")
        pos = m.end()
    return out


def _scalar(kind: str, raw: str, line: int) -> Any:
    if kind == "str":
        try:
            return bytes(raw[1:-1], "utf-8").decode("unicode_escape")
        except (UnicodeDecodeError, ValueError) as e:
            raise PbtxtError(f"line {line}: bad escape in the string {raw[:40]!r} ({e.reason})") from None
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(raw, 0)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw  # an enum value such as TYPE_FP32 or KIND_GPU


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise PbtxtError(f"unexpected end of text{f', expected {want!r}' if want else ''}")
        if want is not None and tok[1] != want:
            raise PbtxtError(f"line {tok[2]}: expected {want!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def message(self, close: str | None) -> dict[str, list[Any]]:
        self.depth += 1
        try:
            return self._fields(close)
        finally:
            self.depth -= 1

    def _fields(self, close: str | None) -> dict[str, list[Any]]:
        if self.depth > MAX_DEPTH:
            tok = self.peek()
            raise PbtxtError(f"line {tok[2] if tok else '?'}: nested more than {MAX_DEPTH} deep")
        fields: dict[str, list[Any]] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise PbtxtError(f"unexpected end of text, expected {close!r}")
                return fields
            if tok[1] == close:
                self.i += 1
                return fields
            if tok[1] in (",", ";"):
                self.i += 1
                continue
            kind, name, line = self.take()
            if kind != "word" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise PbtxtError(f"line {line}: expected a field name, found {name!r}")
            fields.setdefault(name, []).extend(self.value())

    def value(self) -> list[Any]:
        """The value(s) after a field name: ``: scalar``, ``[: ] { msg }``, ``[: ] [ list ]``."""
        colon = self.peek() is not None and self.peek()[1] == ":"  # type: ignore[index]
        if colon:
            self.i += 1
        kind, raw, line = self.take()
        if raw in _CLOSE and kind == "punct":
            return [self.message(_CLOSE[raw])]
        if raw == "[" and kind == "punct":
            items: list[Any] = []
            while True:
                tok = self.peek()
                if tok is not None and tok[1] == "]":
                    self.i += 1
                    return items
                if items:
                    self.take(",")
                k, r, ln = self.take()
                if r in _CLOSE and k == "punct":
                    items.append(self.message(_CLOSE[r]))
                elif k in ("str", "word"):
                    items.append(_scalar(k, r, ln))
                else:
                    raise PbtxtError(f"line {ln}: unexpected {r!r} in a list")
        if not colon:
            raise PbtxtError(f"line {line}: expected ':' or a message before {raw!r}")
        if kind not in ("str", "word"):
            raise PbtxtError(f"line {line}: expected a value, found {raw!r}")
        value = _scalar(kind, raw, line)
        while kind == "str" and self.peek() is not None and self.peek()[0] == "str":  # type: ignore[index]
            value += _scalar("str", self.take()[1], line)  # adjacent strings concatenate
        return [value]


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format -> ``{field: [values]}``; messages are nested dicts of the same form."""
    return _Parser(text).message(None)


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's ``ModelVersionPolicy``: ``latest`` (the ``num`` highest versions), ``specific`` (``versions``) or
    ``all``. Without one Triton serves the latest version: ``VersionPolicy()``."""

    kind: str = "latest"
    num: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions of ``available`` this policy serves, highest first."""
        ordered = sorted(set(available), reverse=True)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[: self.num]

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num}"
        return "all" if self.kind == "all" else "specific " + ",".join(map(str, self.versions))


@dataclass(frozen=True)
class ModelConfig:
    """What the server reads from ``config.pbtxt``: the version policy and ``max_batch_size`` (0 = not given)."""

    policy: VersionPolicy = VersionPolicy()
    max_batch_size: int = 0


def _one(fields: dict[str, list[Any]], name: str, kind: type, where: str) -> Any:
    """The single value of field ``name`` (None when absent); ``PbtxtError`` when repeated or of another kind."""
    values = fields.get(name, [])
    if len(values) > 1:
        raise PbtxtError(f"{where}{name} is given {len(values)} times")
    if not values:
        return None
    value = values[0]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        what = "a message" if kind is dict else "an integer" if kind is int else kind.__name__
        raise PbtxtError(f"{where}{name} must be {what}, not {value!r}")
    return value


def model_config(text: str) -> ModelConfig:
    """The ``ModelConfig`` of a ``config.pbtxt`` text. ``PbtxtError`` when malformed or the policy makes no sense."""
    fields = parse_pbtxt(text)
    max_batch = _one(fields, "max_batch_size", int, "") or 0
    if max_batch < 0:
        raise PbtxtError(f"max_batch_size must be >= 0, not {max_batch}")
    vp = _one(fields, "version_policy", dict, "")
    if vp is None:
        return ModelConfig(VersionPolicy(), max_batch)
    kinds = [k for k in ("latest", "all", "specific") if k in vp]
    if len(kinds) != 1 or set(vp) - set(kinds):
        raise PbtxtError(f"version_policy must hold exactly one of latest, all, specific; it holds {sorted(vp)}")
    body = _one(vp, kinds[0], dict, "version_policy.")
    if kinds[0] == "all":
        return ModelConfig(VersionPolicy("all"), max_batch)
    if kinds[0] == "latest":
        num = _one(body, "num_versions", int, "version_policy.latest.")
        if num is None or num < 1:
            raise PbtxtError(f"version_policy.latest.num_versions must be >= 1, not {num}")
        return ModelConfig(VersionPolicy("latest", num), max_batch)
    versions = body.get("versions", [])
    if not versions or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in versions):
        raise PbtxtError(f"version_policy.specific.versions must be version numbers, not {versions}")
    return ModelConfig(VersionPolicy("specific", versions=tuple(sorted(set(versions)))), max_batch)


def read_model_config(path: Any, max_bytes: int = MAX_CONFIG_BYTES) -> ModelConfig:
    """``model_config`` of the file at ``path``; a missing file is the default (latest version, no batch bound); a
    file over ``max_bytes`` is a ``PbtxtError`` without being read."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        return ModelConfig()
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise PbtxtError(f"{p.name} is {size} bytes, over the {max_bytes} a model configuration may take")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PbtxtError(f"cannot read {p.name}: {e}") from None
    try:
        return model_config(text)
    except PbtxtError as e:
        raise PbtxtError(f"{p.name}: {e}") from None
