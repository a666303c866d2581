"""Comments point to measurements in docs/ by section ("docs/measurements.md#stats-row-batch"): every such
pointer in the package names a page and a section that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTER = re.compile(r"docs/([\w.-]+\.md)#([\w-]+)")


def anchors(page: Path) -> set[str]:
    """The section anchors of a markdown page, as GitHub makes them from its headings."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_docs_pointer_in_the_package_names_an_existing_section():
    pointers = {(path.relative_to(ROOT), page, section)
                for path in sorted((ROOT / "src").rglob("*.py"))
                for page, section in POINTER.findall(path.read_text(encoding="utf-8"))}
    assert pointers, "no pointer found: the pattern no longer matches how comments cite docs/"
    missing = [f"{where}: docs/{page}#{section}" for where, page, section in sorted(pointers)
               if not (ROOT / "docs" / page).exists() or section not in anchors(ROOT / "docs" / page)]
    assert not missing, missing
