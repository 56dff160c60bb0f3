"""A module that registers a pytree type when imported (for the tests of what loading a package may import)."""
from typing import NamedTuple

import torch


class Pair(NamedTuple):
    first: torch.Tensor
    second: torch.Tensor


torch.utils._pytree.register_pytree_node(Pair, lambda p: (list(p), None), lambda values, _: Pair(*values),
                                         serialized_type_name="registers_a_pytree_type.Pair")
