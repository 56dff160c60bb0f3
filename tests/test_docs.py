"""The Python examples in the README and docs/ run as written (a file's blocks in order, one namespace)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if "```python" in p.read_text())]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_examples_run(path):
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{path.name} has no python examples"
    namespace = {"__name__": "__doc_example__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{path.name}[{i}]", "exec"), namespace)
