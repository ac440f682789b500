"""The README and the docs/ pages: short README with the two commands, links and images that resolve, tables that
match the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks (links and headings there are not links and headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in re.findall(r"^#+ (.+)$", prose(page.read_text()), flags=re.M)}


def test_anchor_follows_githubs_rule() -> None:
    assert (
        anchor("Precision: measured here, not assumed (`--precision`)")
        == "precision-measured-here-not-assumed---precision"
    )
    assert anchor("KServe v2 / Open Inference Protocol") == "kserve-v2--open-inference-protocol"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_image_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, broken


def test_readme_is_short_and_states_the_two_commands_and_the_test_command() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 200
    assert "make demo" in text and "make test" in text
    # the shuffled-order command CI and users run; pyproject's addopts comment names the same one
    command = '.venv/bin/python -m pytest -o addopts="-ra" -p randomly'
    assert command in text
    assert 'pytest -o addopts="-ra" -p randomly' in (REPO / "pyproject.toml").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test:.*\n(\t.*\n)*\t\$\(PY\) -m pytest", makefile, flags=re.M)


def test_readme_links_every_stage_page() -> None:
    linked = {t.partition("#")[0] for t in LINK.findall((REPO / "README.md").read_text())}
    stage_pages = {f"docs/{p.name}" for p in PAGES[1:]}
    assert stage_pages <= linked, sorted(stage_pages - linked)


def test_serving_page_settings_table_is_the_generated_one() -> None:
    from serve.settings import settings_table

    table = settings_table()
    assert table in (REPO / "docs" / "serving.md").read_text(), (
        "docs/serving.md's settings table is stale: replace it with the output of "
        'python -c "from serve.settings import settings_table; print(settings_table())"'
    )
