"""How a tensor is split into blocks of rows that share one codebook."""
from typing import Optional

import torch

from .errors import fail


def codebook_blocks(shape, block_rows: Optional[int]) -> int:
    """Number of codebooks for a tensor of ``shape``: 1, or one per ``block_rows`` rows."""
    if block_rows is None:
        return 1
    rows = shape[0] if len(shape) else 1
    if not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1 or rows % block_rows:
        raise fail("block_rows", f"None or a positive integer dividing the {rows} rows of x", block_rows)
    return rows // block_rows


def rows_of(x: torch.Tensor, nblocks: int) -> torch.Tensor:
    """View ``x`` as ``(nblocks, elements per block)``."""
    return x.reshape(nblocks, -1)
