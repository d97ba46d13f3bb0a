"""The documents a newcomer reads: links that resolve, guides short enough to read, and text
about the project rather than about how the work went."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: one guide per job (architecture.md is the reference of layers and data flow, not a guide)
GUIDES = [p for p in (ROOT / "docs").glob("*.md") if p.name != "architecture.md"]
#: a markdown link's target, without a scheme or a fragment-only target
LINK = re.compile(r"\]\(((?![a-z]+:|#)[^)\s]+)\)")
#: where project text narrates the work instead of describing the project
NARRATION = re.compile(
    r"\b(?:(?:fir|seco|thi|four|fif|six|seven|eigh|nin|ten|eleven|twelf|thirteen|fourteen|"
    r"fifteen)(?:st|nd|rd|th)|\d+(?:st|nd|rd|th)|this|the|last|next|previous) session\b|"
    r"\bissue \d+|\bthe issue(?:'s)?\b|\bissue asks\b",
    re.IGNORECASE,
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    missing = [
        target
        for target in LINK.findall(page.read_text())
        if not (page.parent / target.split("#")[0]).exists()
    ]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_a_guide_reads_in_five_minutes(guide):
    assert len(guide.read_bytes()) <= 10_500, f"{guide.name}: move measurements to docs/results/"


@pytest.mark.parametrize("config", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_a_config_opens_with_a_short_header(config):
    """What the config is for, its measured result and the page with the evidence: three lines at
    most; the history of how it was reached belongs to the results pages and git."""
    lines = config.read_text().splitlines()
    header = next((n for n, line in enumerate(lines) if not line.startswith("#")), len(lines))
    assert 1 <= header <= 3, f"{config.relative_to(ROOT)}: a header of {header} comment lines"


def _project_text():
    for folder in ("docs", "configs", "benchmarks", "tests", "fedssl", "launch"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".md", ".py", ".yaml", ".json"} and path.name != "test_docs.py":
                yield path
    yield ROOT / "README.md"


def test_no_document_narrates_the_work():
    found = []
    for path in _project_text():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if NARRATION.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not found, "narration of the work (git history holds it):\n" + "\n".join(found)


def test_the_stage_two_results_page_is_what_its_json_renders():
    """docs/results/multitask.md is written by ``launch/compare.py`` from its JSON, whose
    ``headline`` and ``notes`` hold the page's hand-written parts: an edit of the page alone
    would be lost the next time it is rendered."""
    import json

    from fedssl.experiments.table2 import render

    page = ROOT / "docs" / "results" / "multitask.md"
    res = json.loads(page.with_suffix(".json").read_text())
    assert render(res) == page.read_text()
    assert render(res).index("## Where the targets stand") < render(res).index("## Table 2")


@pytest.mark.parametrize("launcher", sorted((ROOT / "launch").glob("*.py")), ids=lambda p: p.name)
def test_every_launcher_has_a_guide(launcher):
    name = f"launch/{launcher.name}"
    assert any(name in g.read_text() for g in GUIDES), f"no guide in docs/ explains {name}"
