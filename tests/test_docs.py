"""The Python examples in the README and docs/ run as written."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "writing-passes.md"]


def blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path,index", [(p, i) for p in DOCS for i in range(len(blocks(p)))],
                         ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_example_runs(path, index):
    exec(compile(blocks(path)[index], f"{path.name}[{index}]", "exec"), {"__name__": "__doc_example__"})
