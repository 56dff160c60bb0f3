"""Pack/unpack: bit-exact round trips for every width, the documented layout, range checks."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import qcompiler as qc


@given(bits=st.integers(1, 8), signed=st.booleans(), lead=st.lists(st.integers(1, 4), max_size=2),
       n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_round_trip_is_bit_exact(bits, signed, lead, n, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    x = torch.randint(lo, hi, (*lead, n), generator=g).to(torch.int8 if signed else torch.uint8)
    p = qc.pack_int(x, bits)
    assert p.dtype == torch.uint8 and p.shape == (*lead, (n * bits + 7) // 8)
    assert torch.equal(qc.unpack_int(p, bits, n, signed), x)


@pytest.mark.parametrize("bits,values,expected", [
    (4, [1, 2, 15], [0x21, 0x0F]),            # first value in the low nibble
    (2, [3, 0, 1, 2, 1], [0b10010011, 0b01]),
    (1, [1, 0, 1, 1, 0, 0, 0, 0, 1], [0b1101, 1]),
    (3, [7, 1, 2], [0b10001111, 0b0]),        # 111 | 001 | 010: bits cross the byte
    (8, [200, 3], [200, 3]),
])
def test_layout_is_a_little_endian_bit_stream(bits, values, expected):
    assert qc.pack_int(torch.tensor(values, dtype=torch.uint8), bits).tolist() == expected


def test_signed_values_are_twos_complement():
    x = torch.tensor([-8, 7, -1, 0], dtype=torch.int8)
    assert qc.pack_int(x, 4).tolist() == [0x78, 0x0F]
    assert qc.unpack_int(qc.pack_int(x, 4), 4, 4, signed=True).tolist() == [-8, 7, -1, 0]


def test_values_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"x must be values in the 4-bit range \[0, 15\]"):
        qc.pack_int(torch.tensor([16], dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match=r"x must be values in the 3-bit range \[-4, 3\]"):
        qc.pack_int(torch.tensor([-5], dtype=torch.int8), 3)


def test_unpack_checks_the_count_against_the_bytes():
    p = qc.pack_int(torch.zeros(2, 10, dtype=torch.uint8), 3)  # 30 bits -> 4 bytes
    with pytest.raises(ValueError, match="n must be a count whose 3-bit packing takes 4 bytes"):
        qc.unpack_int(p, 3, 20)
