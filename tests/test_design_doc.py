"""docs/DESIGN.md is the contract: its tables must match the code they describe."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from resnet.card import ModelCard
from resnet.errors import MissingComponentError, ParityError, UsageError, UserError

OUTSIDE = "../" + "shared"  # split, so that this file does not match itself
DESIGN = Path(__file__).resolve().parent.parent / "docs" / "DESIGN.md"


def _section(title_prefix: str) -> str:
    text = DESIGN.read_text()
    start = text.index(f"## {title_prefix}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_card_table_lists_exactly_the_model_card_fields() -> None:
    rows = re.findall(r"^\| `(\w+)` \|", _section("1. The model card"), flags=re.M)
    assert rows == [f.name for f in dataclasses.fields(ModelCard)]


def test_exit_code_table_matches_the_error_classes() -> None:
    table = _section("5. Command-line conventions")
    codes = {int(c): line for c, line in re.findall(r"^\| (\d+) \|(.*)$", table, flags=re.M)}
    for cls in (UserError, UsageError, ParityError, MissingComponentError):
        assert cls.__name__ in codes[cls.exit_code], f"{cls.__name__} (exit {cls.exit_code}) is not in its row"


def test_nothing_points_outside_the_repository() -> None:
    root = DESIGN.parent.parent
    files = [root / "README.md", *root.glob("*/*.py"), *root.glob("docs/*.md")]
    offenders = [str(p.relative_to(root)) for p in files if OUTSIDE in p.read_text(errors="replace")]
    assert not offenders


def test_gate_preset_table_matches_the_code() -> None:
    from export.gate import PRESETS

    rows = re.findall(r"^\| `(\w+)` \| ([\d.]+) % \| ([\d.]+) \| ([\d.]+) points \|$", DESIGN.read_text(), flags=re.M)
    table = {name: (float(a), float(c), float(t)) for name, a, c, t in rows}
    code = {k: (v.min_top1_agreement, v.min_cosine, v.max_top1_change) for k, v in PRESETS.items()}
    assert table == code
