"""A damaged .pt2 never runs silently wrong: every member is checked against the digests recorded at packaging.

The fuzz cases (a few hundred, on a 2 MB package) cover what a disk, a copy or a download does to a file:
truncations, flipped bytes inside the model's .so, its weights, the metadata and the digest list, members
removed, swapped, added or doubled, and an oversized metadata member. Each is refused by ``qc.verify`` and
``qc.load`` in this process, naming the file."""
import random
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import qcompiler as qc
from qcompiler.cli import main
from qcompiler.runtime import digests

SEED = 20261205


def _data_ranges(path: Path) -> dict:
    """Member name (under the root) -> (first byte, end) of its stored data in the file."""
    ranges = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        root = z.namelist()[0].split("/", 1)[0]
        for info in z.infolist():
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            start = info.header_offset + 30 + name_len + extra_len
            ranges[info.filename[len(root) + 1:]] = (start, start + info.compress_size)
    return ranges


def _flipped(src: Path, dst: Path, offset: int, bit: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 1 << bit
    dst.write_bytes(bytes(data))
    return dst


def _rewritten(src: Path, dst: Path, change) -> Path:
    """A copy of the archive at ``src`` with its members passed through ``change(list of (name, bytes))``."""
    with zipfile.ZipFile(src) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(dst, "w") as out:
        for name, data in change(members):
            out.writestr(name, data)
    return dst


def _refused(path: Path, load: bool) -> str:
    with pytest.raises(ValueError) as caught:
        qc.verify(path)
    assert str(path.resolve()) in str(caught.value)
    if load:
        with pytest.raises(ValueError):
            qc.load(path)
    return str(caught.value)


def _member(name: str, members: list) -> str:
    return next(n for n, _ in members if n.endswith(name))


@pytest.fixture(scope="module")
def intact(every_kernel, tmp_path_factory):
    path, _ = every_kernel
    copy = tmp_path_factory.mktemp("intact") / "model.pt2"
    shutil.copy(path, copy)
    return copy


def test_an_intact_package_verifies_and_names_its_members(intact, capsys):
    checked = qc.verify(intact)
    with zipfile.ZipFile(intact) as z:
        assert checked.members == len(z.namelist()) - 1 and checked.bytes > 1_000_000
        listed = z.read(f"{checked.root}/{digests.DIGESTS}").decode().splitlines()
    assert [line.split("  ")[1] for line in listed] == sorted(n for n in _data_ranges(intact) if n != digests.DIGESTS)
    assert main(["verify", str(intact)]) == 0
    assert "ok (" in capsys.readouterr().out


def test_truncated_files_are_refused(intact, tmp_path):
    size = intact.stat().st_size
    rng = random.Random(SEED)
    for i, length in enumerate([0, 1, 100, size // 2, size - 22, size - 1] + rng.sample(range(size), 54)):
        bad = tmp_path / f"t{i}.pt2"
        bad.write_bytes(intact.read_bytes()[:length])
        _refused(bad, load=i % 10 == 0)


@pytest.mark.parametrize("member", [".wrapper.so", "_weights.blob", "metadata.json", digests.DIGESTS, ".wrapper.cpp"])
def test_flipped_bytes_inside_a_member_are_refused(intact, tmp_path, member):
    """The .so holds the model's code (and our kernels), the blob its weights."""
    ranges = _data_ranges(intact)
    name = next(n for n in ranges if n.endswith(member))
    start, end = ranges[name]
    rng = random.Random(f"{SEED}{member}")
    offsets = sorted(rng.sample(range(start, end), min(60, end - start)))
    for i, offset in enumerate(offsets):
        message = _refused(_flipped(intact, tmp_path / f"f{i}.pt2", offset, rng.randrange(8)), load=i % 15 == 0)
        assert "damaged" in message or "not an intact" in message, message


def test_removed_swapped_added_and_doubled_members_are_refused(intact, tmp_path):
    with zipfile.ZipFile(intact) as z:
        names = z.namelist()
    for i, gone in enumerate(names):
        message = _refused(_rewritten(intact, tmp_path / f"r{i}.pt2", lambda ms, g=gone: [m for m in ms if m[0] != g]),
                           load=gone.endswith(digests.DIGESTS))
        assert gone.split("/", 1)[1] in message or "no qcompiler/members.sha256" in message
    with zipfile.ZipFile(intact) as z:
        contents = [z.read(n) for n in names]
    pairs = [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))
             if contents[a] != contents[b]]  # swapping equal members changes nothing
    for i, (a, b) in enumerate(random.Random(SEED).sample(pairs, 12)):
        def swap(ms, a=a, b=b):
            ms = list(ms)
            ms[a], ms[b] = (ms[a][0], ms[b][1]), (ms[b][0], ms[a][1])
            return ms
        _refused(_rewritten(intact, tmp_path / f"s{i}.pt2", swap), load=i == 0)
    root = names[0].split("/", 1)[0]
    added = _rewritten(intact, tmp_path / "added.pt2", lambda ms: ms + [(f"{root}/data/extra.bin", b"x")])
    assert "data/extra.bin was not there at packaging" in _refused(added, load=True)
    with pytest.warns(UserWarning, match="Duplicate name"):
        doubled = _rewritten(intact, tmp_path / "doubled.pt2", lambda ms: ms + [ms[0]])
    assert "in the archive twice" in _refused(doubled, load=True)


def test_an_oversized_metadata_member_is_refused_before_it_is_read(intact, tmp_path):
    """Even with digests recomputed to match, a metadata member larger than any metadata is refused by size."""
    def oversized(ms):
        meta = _member("qcompiler/metadata.json", ms)
        return [(n, b" " * (digests.MAX_METADATA_BYTES + 1) if n == meta else d) for n, d in ms
                if not n.endswith(digests.DIGESTS)]
    bad = _rewritten(intact, tmp_path / "big.pt2", oversized)
    digests.write_digests(bad)
    assert "metadata.json holds 67,108,865 bytes" in _refused(bad, load=True)


def test_a_package_without_digests_loads_with_a_warning_only_if_its_metadata_expects_none(intact, tmp_path, caplog):
    without = _rewritten(intact, tmp_path / "without.pt2", lambda ms: [m for m in ms if not m[0].endswith("sha256")])
    assert "members.sha256, which it was packaged with, is missing" in str(pytest.raises(ValueError, qc.load, without)
                                                                           .value)
    def older(ms):  # as packaged before qcompiler recorded digests
        meta = _member("qcompiler/metadata.json", ms)
        return [(n, d.replace(b'"digests": "qcompiler/members.sha256",', b"") if n == meta else d) for n, d in ms
                if not n.endswith("sha256")]
    old = _rewritten(intact, tmp_path / "old.pt2", older)
    assert "digests" not in qc.open_artifact(old, load=False).metadata
    run = qc.load(old)
    assert "records no digests of its members" in caplog.text
    x = torch.randn(3, 128)
    assert torch.equal(run(x), qc.load(intact)(x))
    with pytest.raises(ValueError, match="it has no qcompiler/members.sha256 member"):
        qc.verify(old)
