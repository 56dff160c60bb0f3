"""Pack and unpack b-bit integers (b = 1..8) into uint8 along the last dimension.

Layout: a little-endian bit stream per row. Value ``j`` of a row occupies bits
``j*b .. j*b + b - 1`` of the row's stream, and stream bit ``i`` is bit ``i % 8`` of
byte ``i // 8``. For b = 4 that is two values a byte, the first in the low
nibble; for b = 8 packing is the identity. A row of n values takes
``ceil(n*b/8)`` bytes. Signed values are stored as b-bit two's complement and
sign-extended on unpacking.
"""
import torch

from .dtypes import check_bits
from .errors import fail


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` values of ``bits`` bits take along the last dimension."""
    return (n * bits + 7) // 8


def _check_pack(x: torch.Tensor, bits: int) -> None:
    check_bits(bits)
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int8, torch.uint8):
        raise fail("x", "an int8 or uint8 tensor", getattr(x, "dtype", type(x).__name__))
    if x.ndim == 0:
        raise fail("x", "a tensor of at least one dimension", tuple(x.shape))


def _check_range(x: torch.Tensor, bits: int) -> None:
    if x.numel() == 0:
        return
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if x.dtype == torch.int8 else (0, (1 << bits) - 1)
    mn, mx = int(x.min()), int(x.max())
    if mn < lo or mx > hi:
        raise fail("x", f"values in the {bits}-bit range [{lo}, {hi}] for {x.dtype}", f"values in [{mn}, {mx}]")


def _to_bits(v: torch.Tensor, width: int) -> torch.Tensor:
    """uint8 (..., m) -> (..., m, width) bits, least significant first."""
    return (v.unsqueeze(-1) >> torch.arange(width, dtype=torch.uint8, device=v.device)) & 1


def _from_bits(b: torch.Tensor) -> torch.Tensor:
    """(..., m, width) bits, least significant first -> uint8 (..., m)."""
    weights = torch.arange(b.shape[-1], dtype=torch.uint8, device=b.device)
    return (b << weights).sum(-1, dtype=torch.uint8)


@torch.library.custom_op("qcompiler::pack_int", mutates_args=())
def _pack_op(x: torch.Tensor, bits: int) -> torch.Tensor:
    _check_pack(x, bits)
    _check_range(x, bits)
    v = (x.to(torch.int16) & ((1 << bits) - 1)).to(torch.uint8)
    if bits == 8:
        return v.contiguous()
    n, lead = v.shape[-1], v.shape[:-1]
    pad = (-n) % 8
    if pad:
        v = torch.cat([v, v.new_zeros(*lead, pad)], dim=-1)
    if 8 % bits == 0:  # whole values per byte: shift and add
        per = 8 // bits
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=v.device)
        out = (v.reshape(*lead, -1, per) << shifts).sum(-1, dtype=torch.uint8)
    else:  # general bit stream
        out = _from_bits(_to_bits(v, bits).reshape(*lead, -1, 8))
    return out[..., : packed_size(n, bits)].contiguous()


@_pack_op.register_fake
def _(x, bits):
    _check_pack(x, bits)
    return x.new_empty(*x.shape[:-1], packed_size(x.shape[-1], bits), dtype=torch.uint8)


def _check_unpack(packed: torch.Tensor, bits: int, n: int) -> None:
    check_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim == 0:
        raise fail("packed", "a uint8 tensor of at least one dimension",
                   getattr(packed, "dtype", type(packed).__name__))
    if packed.shape[-1] != packed_size(n, bits):
        raise fail("n", f"a count whose {bits}-bit packing takes {packed.shape[-1]} bytes", n)


@torch.library.custom_op("qcompiler::unpack_int", mutates_args=())
def _unpack_op(packed: torch.Tensor, bits: int, n: int, signed: bool) -> torch.Tensor:
    _check_unpack(packed, bits, n)
    lead = packed.shape[:-1]
    if bits == 8:
        v = packed.clone()
    elif 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        v = ((packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(*lead, -1)[..., :n]
    else:
        full = -(-n // 8) * bits  # whole 8-value groups
        p = torch.cat([packed, packed.new_zeros(*lead, full - packed.shape[-1])], dim=-1)
        v = _from_bits(_to_bits(p, 8).reshape(*lead, -1, bits))[..., :n]
    if not signed:
        return v.contiguous()
    v = v.to(torch.int16)
    return torch.where(v >= (1 << (bits - 1)), v - (1 << bits), v).to(torch.int8)


@_unpack_op.register_fake
def _(packed, bits, n, signed):
    _check_unpack(packed, bits, n)
    return packed.new_empty(*packed.shape[:-1], n, dtype=torch.int8 if signed else torch.uint8)


def pack_int(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack b-bit integers (int8 for signed, uint8 for unsigned values) into uint8.

    Packs along the last dimension: ``(..., n)`` becomes ``(..., ceil(n*bits/8))``.
    Raises ValueError if a value does not fit in ``bits`` bits.
    """
    return _pack_op(x, bits)


def unpack_int(packed: torch.Tensor, bits: int, n: int, signed: bool = False) -> torch.Tensor:
    """Inverse of :func:`pack_int`: ``n`` values a row, int8 if ``signed`` else uint8."""
    return _unpack_op(packed, bits, n, signed)
