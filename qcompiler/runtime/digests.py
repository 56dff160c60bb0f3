"""Digests of a ``.pt2``'s members: written at packaging, checked before anything in the file is used.

A package is a zip archive whose members sit under one root folder. Packaging appends
``<root>/qcompiler/members.sha256``: one line per other member, ``<sha256 hex>  <name under the root>``,
sorted (the format of ``sha256sum``, which the C++ runner in ``examples/cpp`` reads too). :func:`verify`
refuses, naming the file and the member, a file that is not a zip archive, lacks the digest member,
has a member missing, added or damaged, or a digest or metadata member too large to be one. It reads
each member once, in chunks, and maps or loads nothing: torch's own ``aoti_load_package`` checks none of
this, and runs a damaged file that still unpacks.
"""
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Union

DIGESTS = "qcompiler/members.sha256"
MAX_DIGESTS_BYTES = 16 << 20  # far above any real list (a line per member); refuse before reading more
MAX_METADATA_BYTES = 64 << 20
CHUNK = 1 << 20


@dataclass(frozen=True)
class Verified:
    """What :func:`verify` checked: the archive's root folder, and how many members and bytes it hashed."""

    root: str
    members: int
    bytes: int


def _hash(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    h = hashlib.sha256()
    with z.open(info) as f:  # zipfile checks the member's CRC-32 as it reaches its end
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _root(names) -> str:
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise ValueError("its members are not all under one root folder")
    return roots.pop()


def digest_lines(path: Union[str, Path]) -> bytes:
    """The digest member's text for the archive at ``path`` as it is now (every member but the digest member)."""
    with zipfile.ZipFile(path) as z:
        root = _root(z.namelist())
        named = sorted((i.filename[len(root) + 1:], i) for i in z.infolist() if i.filename != f"{root}/{DIGESTS}")
        return "".join(f"{_hash(z, info)}  {name}\n" for name, info in named).encode()


def write_digests(path: Union[str, Path]) -> None:
    """Append the digest member to the archive at ``path`` (written last: it covers every other member)."""
    text = digest_lines(path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(f"{_root(z.namelist())}/{DIGESTS}", text)


def _parse(text: bytes) -> Dict[str, str]:
    recorded: Dict[str, str] = {}
    for number, line in enumerate(text.decode("ascii").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name \
                or name in recorded:
            raise ValueError(f"line {number} is not '<sha256>  <member>' or names a member twice")
        recorded[name] = digest
    return recorded


def _refuse(path: Path, why: str) -> ValueError:
    return ValueError(f"qcompiler: cannot load {path}: {why}")


def verify(path: Union[str, Path]) -> Verified:
    """Check every member of the ``.pt2`` at ``path`` against the digests recorded when it was packaged.

    FileNotFoundError if there is no file; ValueError naming the file, and the member where one is at fault,
    for anything else that is wrong."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"qcompiler: cannot load {path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            return _verify_archive(path, z)
    except zipfile.BadZipFile as e:  # not a zip, truncated, a CRC or header that does not match
        raise _refuse(path, f"not an intact .pt2 archive ({e})") from e
    except (EOFError, OSError, UnicodeDecodeError, NotImplementedError, OverflowError) as e:
        raise _refuse(path, f"not an intact .pt2 archive ({type(e).__name__}: {e})") from e


def _verify_archive(path: Path, z: zipfile.ZipFile) -> Verified:
    infos = z.infolist()
    names = [i.filename for i in infos]
    try:
        root = _root(names)
    except ValueError as e:
        raise _refuse(path, str(e)) from e
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise _refuse(path, f"member {twice[0]} is in the archive twice")
    by_name = {i.filename[len(root) + 1:]: i for i in infos}
    digests = by_name.pop(DIGESTS, None)
    if digests is None:
        raise _refuse(path, f"it has no {DIGESTS} member: it was not written by this qcompiler, or that member "
                            "was removed (qcompiler verify checks a file; re-package it)")
    if digests.file_size > MAX_DIGESTS_BYTES:
        raise _refuse(path, f"member {DIGESTS} holds {digests.file_size:,} bytes, more than a digest list can")
    meta = by_name.get("qcompiler/metadata.json")
    if meta is not None and meta.file_size > MAX_METADATA_BYTES:
        raise _refuse(path, f"member qcompiler/metadata.json holds {meta.file_size:,} bytes, more than metadata can")
    try:
        recorded = _parse(z.read(digests))
    except (ValueError, UnicodeDecodeError) as e:
        raise _refuse(path, f"member {DIGESTS} is damaged ({e})") from e
    missing = sorted(set(recorded) - set(by_name))
    if missing:
        raise _refuse(path, f"member {missing[0]} is missing (recorded at packaging)")
    extra = sorted(set(by_name) - set(recorded))
    if extra:
        raise _refuse(path, f"member {extra[0]} was not there at packaging")
    total = 0
    for name, info in sorted(by_name.items()):
        try:
            digest = _hash(z, info)
        except zipfile.BadZipFile as e:
            raise _refuse(path, f"member {name} is damaged ({e})") from e
        if digest != recorded[name]:
            raise _refuse(path, f"member {name} is damaged (its SHA-256 differs from the one recorded at packaging)")
        total += info.file_size
    return Verified(root, len(by_name), total)
