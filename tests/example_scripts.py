"""Running the scripts in examples/ as a user does, and reading the numbers they print."""
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(script, *args, cwd):
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def number(pattern, text):
    found = re.search(pattern, text)
    assert found, text[-2000:]
    return float(found.group(1))
