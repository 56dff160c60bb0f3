"""The package's shape: every module is reachable by its dotted name, never shadowed by a function."""
import functools
import importlib
import pkgutil

import qcompiler


def test_every_module_is_the_attribute_of_its_dotted_name():
    names = [m.name for m in pkgutil.walk_packages(qcompiler.__path__, "qcompiler.")]
    assert "qcompiler.stages.package" in names and "qcompiler.tuning.measure" in names
    shadowed = []
    for name in names:
        module = importlib.import_module(name)
        if functools.reduce(getattr, name.split(".")[1:], qcompiler) is not module:
            shadowed.append(name)
    assert shadowed == []


def test_the_stage_functions_stay_at_the_top():
    for name in ("capture", "prepare", "calibrate", "convert", "lower", "package", "load", "quantize", "report",
                 "capture_lm", "generate", "autoquant"):
        assert callable(getattr(qcompiler, name)), name
