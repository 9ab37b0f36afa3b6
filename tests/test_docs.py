"""The project documents itself: every relative link of README.md and docs/ resolves (file and
heading anchor), and no project file points to design notes outside the repository."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(md: pathlib.Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in md.read_text().splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            title = re.sub(r"[`*]", "", m.group(1)).strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_docs_pages_exist():
    names = {p.name for p in PAGES}
    assert {"index.md", "formats.md", "ops.md", "factorize.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to missing {target}"
        assert ROOT in dest.parents or dest == ROOT, f"{page.name}: {target} leaves the repository"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no heading for #{anchor} in {path}"


def test_no_pointers_to_design_notes_outside_the_repository():
    pattern = re.compile(r"DESIGN\.md|STYLE\.md|\.\./shared/|GPU-PROOF")
    bad = []
    for folder in ("factorkern", "triton_kernels", "tests", "bench", "examples", "docs"):
        for f in (ROOT / folder).rglob("*"):
            if f.suffix in (".py", ".md") and f != pathlib.Path(__file__).resolve():
                for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                    if pattern.search(line):
                        bad.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    for line in (ROOT / "README.md").read_text().splitlines():
        if pattern.search(line):
            bad.append(f"README.md: {line.strip()}")
    assert not bad, "\n".join(bad)
