"""Every Python snippet in the README and docs/ runs as pasted (#10 item 20, #11).

Each ```python block of README.md and of docs/*.md (the reference) is run on its own, in a
fresh empty folder, as a user pasting it into a new interpreter would.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{doc.name}:{line}", m.group(1)))
    return out


def test_the_readme_and_docs_have_python_snippets() -> None:
    where = {w.split(":")[0] for w, _ in python_blocks()}
    assert len(python_blocks()) >= 5 and {"README.md", "python-api.md"} <= where


@pytest.mark.parametrize("where, code", python_blocks(), ids=[w for w, _ in python_blocks()])
def test_python_snippet_runs_as_pasted(where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__main__"})  # noqa: S102 - the project's own README
