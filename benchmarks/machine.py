"""A description of the machine a benchmark ran on, written beside its figures."""
import os
import platform

import torch

# /proc/cpuinfo flags that decide which CPU kernels run (VNNI int8 dot products, bf16, AMX tiles).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo() -> tuple:
    """(model name, set of flags) from /proc/cpuinfo; (None, empty set) where it cannot be read."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, flags


def machine() -> dict:
    name, flags = _cpuinfo()
    return {"cpu": name or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_results(out, result: dict, text: str) -> None:
    """``out``.json (``result``) and ``out``.md (``text``), where ``out`` (a path without suffix) is given."""
    if out:
        import json
        from pathlib import Path
        Path(out + ".json").write_text(json.dumps(result, indent=1))
        Path(out + ".md").write_text(text)


def report_table(out, title: str, columns: list, lines: list, result: dict) -> str:
    """A results table under the machine line and ``title``: printed, and written as ``out``.md beside ``result``
    (with the machine added) as ``out``.json."""
    text = (f"Machine: {machine()}\n\n{title}\n\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            + "\n".join(lines) + "\n")
    print(text)
    write_results(out, {"machine": machine(), **result}, text)
    return text
