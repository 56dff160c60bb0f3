"""Files that several test files need, made once a session however many pytest-xdist workers run.

Each worker has its own session (so its own session-scoped fixtures): a packaged fixture used by two test files
that `--dist loadfile` sends to two workers was packaged twice (10-30 s each). ``made_once`` makes the files in a
folder all workers share, under a file lock: the first worker to ask makes them, the others wait and read them.
"""
import os
import shutil
from pathlib import Path
from typing import Callable

from filelock import FileLock


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name`` after ``make(folder)`` has filled it, once for the whole run (a failed ``make`` leaves
    nothing behind, so the next worker to ask tries again and fails the same way)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    shared = root / "made-once"
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                make(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.touch()
    return folder
