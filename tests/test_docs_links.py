"""README.md and docs/*.md: every relative link leads to a file that exists, and to a heading there."""

import re

from tests.conftest import ROOT

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); images and bare URLs aside
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# Pages written alongside this one; until they land, a link to them is let through (and checked once they do).


def anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def pages():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_leads_somewhere():
    broken = []
    for page in pages():
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
                continue
            if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_checker_finds_links_and_headings():
    """The check above would pass on pages it failed to read; make sure it reads these."""
    readme = FENCE.sub("", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert "docs/CLI.md" in LINK.findall(readme)
    assert anchor("## The evolution's gate".lstrip("# ")) == "the-evolutions-gate"
    assert "the-evolutions-gate" in anchors(ROOT / "docs" / "CLI.md")
