"""Write your own graph pass with qcompiler's pattern API, then quantize the result as usual.

    python examples/custom_pass.py

The deployment target runs GELU in its tanh approximation, so the pass rewrites every
exact ``gelu(x)`` of the exported graph into ``gelu(x, approximate="tanh")``. A pattern is
an example function in ATen ops; ``where`` picks the matches to rewrite; the
replacement is plain PyTorch code that runs on graph values.
"""
import torch
import torch.nn.functional as F

import qcompiler as qc
from qcompiler.passes import find, rewrite

aten = torch.ops.aten


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64), torch.nn.Linear(64, 64)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def exact_gelu(x):  # the pattern: its parameters match any value
    return aten.gelu.default(x)


def tanh_gelu(m, x):  # the replacement: runs on torch.fx Proxies, so each op becomes a node
    return aten.gelu.default(x, approximate="tanh")


def feeds_a_linear(m):  # rewrite only where a linear reads the GELU (here: both)
    return any(user.target == aten.linear.default for user in m.anchor.users)


def main():
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(4, 64)
    gm = qc.capture(model, (x,)).module()
    print("exact GELUs before:", len(find(gm, exact_gelu)))
    rewritten = rewrite(gm, exact_gelu, tanh_gelu, where=feeds_a_linear)
    print("rewritten:", len(rewritten), "| exact GELUs after:", len(find(gm, exact_gelu)))
    assert (gm(x) - model(x)).abs().max() < 1e-2  # the approximation is within 1e-3 of GELU

    # The rewritten graph is a module like any other: quantize it as usual.
    program = qc.quantize(gm, (x,), qc.Int8WeightOnlyConfig())
    print(qc.report(program))
    gelus = [n.kwargs.get("approximate") for n in program.graph.nodes if n.target == aten.gelu.default]
    print("GELUs in the quantized program:", gelus)


if __name__ == "__main__":
    main()
