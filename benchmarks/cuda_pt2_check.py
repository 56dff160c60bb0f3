"""Which CUDA .pt2 AOTInductor's loader crashes on, and why (run on a GPU; one process a load).

    python3 benchmarks/cuda_pt2_check.py [--dir /tmp/cuda-pt2]

The first GPU session (2026-12-06, H100, torch 2.11) saw qcompiler's CUDA package segfault inside
``AOTIModelPackageLoader``. This packages one small lowered model with qcompiler and with torch's own
``aoti_compile_and_package``, re-zips each a few ways (our archive under the final name's folder, without
qcompiler's members; torch's rewritten by our writer), and loads every file with torch's
``aoti_load_package`` and with ``qcompiler.load``, each in a fresh process, printing its exit status: the
differences between a file that loads and one that crashes say where the fault is.
"""
import argparse
import faulthandler
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import torch


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 64)).eval().to("cuda", torch.bfloat16)
    return model, torch.randn(3, 256, device="cuda", dtype=torch.bfloat16)


def _rezip(src: Path, dst: Path, root=None, drop=()) -> None:
    from qcompiler.runtime.artifact import _store
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            first, rest = info.filename.split("/", 1)
            if not rest.startswith(tuple(drop)):
                data = z.read(info)
                _store(out, f"{root or first}/{rest}", io.BytesIO(data), len(data))


def make(folder: Path) -> list:
    import qcompiler as qc
    model, x = _model()
    dims = ({0: torch.export.Dim("m", min=1, max=2048)},)
    low = qc.lower(qc.quantize(model, (x,), qc.config_from_string("int8wo"), dynamic_shapes=dims), "cuda")
    ours, theirs = folder / "ours.pt2", folder / "torch.pt2"
    qc.package(low, ours)
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(low, package_path=str(theirs))
    _rezip(ours, folder / "ours_without_qcompiler_members.pt2", drop=("qcompiler/",))
    _rezip(ours, folder / "ours_root_dotted.pt2", root=".ours.tmp123")
    _rezip(theirs, folder / "torch_rezipped_by_qcompiler.pt2")
    _rezip(theirs, folder / "torch_root_dotted.pt2", root=".torch.tmp123")
    for path in (ours, theirs):
        print(path.name, [n.split("/", 1)[1] for n in zipfile.ZipFile(path).namelist() if "/model/" not in n])
    return sorted(folder.glob("*.pt2"))


def load(path: str, how: str) -> None:
    faulthandler.enable()
    model, x = _model()
    if how == "torch":
        run = torch._inductor.aoti_load_package(path)
    else:
        import qcompiler as qc
        run = qc.load(path)
    y = run(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    ref = model(x).float()
    print(f"ran: relative error {float((y.float() - ref).norm() / ref.norm()):.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default="/tmp/cuda-pt2")
    p.add_argument("--load", nargs=2, metavar=("PATH", "HOW"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        return load(*args.load)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    for path in make(folder):
        for how in ("torch", "qcompiler"):
            r = subprocess.run([sys.executable, __file__, "--load", str(path), how], capture_output=True, text=True,
                               timeout=120)
            tail = [line for line in (r.stdout + r.stderr).splitlines() if line.strip() and "Warning" not in line]
            print(f"{path.name:<36} {how:<10} exit {r.returncode}: {tail[-1][:160] if tail else ''}", flush=True)


if __name__ == "__main__":
    main()
