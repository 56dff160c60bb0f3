"""Hypothesis strategies shared by the primitive tests."""
import torch
from hypothesis import strategies as st

from qcompiler.runtime import INT_TYPE_NAMES, int_type
from qcompiler.runtime.affine import resolve_zero_point_dtype

ZP_DTYPE_CHOICES = [None, torch.int8, torch.uint8, torch.int16, torch.int32,
                    torch.bfloat16, torch.float16, torch.float32]


def _valid(dtype, mapping, domain, zp):
    try:
        resolve_zero_point_dtype(int_type(dtype), mapping, domain, zp, torch.float32)
        return True
    except ValueError:
        return False


# every valid (dtype, mapping, zero-point domain, zero-point dtype) combination
SCHEMES = [(d, m, dom, zp) for d in INT_TYPE_NAMES for m in ("symmetric", "asymmetric")
           for dom in ("int", "float", "none") for zp in ZP_DTYPE_CHOICES if _valid(d, m, dom, zp)]


@st.composite
def tensors_and_blocks(draw, max_rows=6):
    """A float tensor (2-D or 3-D), a block size for one granularity, and the granularity's name."""
    group = draw(st.sampled_from([1, 2, 4, 8]))
    shape = [draw(st.integers(1, max_rows)), group * draw(st.integers(1, 4))]
    if draw(st.booleans()):
        shape.insert(0, draw(st.integers(1, 3)))
    gran = draw(st.sampled_from(["tensor", "row", "group"]))
    lead = [1] * (len(shape) - 1)
    block = {"tensor": [-1] * len(shape), "row": lead + [-1], "group": lead + [group]}[gran]
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["normal", "offset", "constant", "sparse", "tiny"]))
    x = torch.randn(shape, generator=g)
    if kind == "offset":
        x = x * draw(st.sampled_from([1e-2, 1.0, 30.0])) + draw(st.sampled_from([-5.0, 3.0]))
    elif kind == "constant":
        x = torch.full(shape, draw(st.sampled_from([0.0, 1.5, -2.0])))
    elif kind == "sparse":
        x = torch.where(torch.rand(shape, generator=g) < 0.5, 0.0, x)
    elif kind == "tiny":
        x = x * 1e-6
    return x, block, gran
