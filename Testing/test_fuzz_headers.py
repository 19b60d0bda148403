"""Fuzzed NRRD, NIfTI and MetaImage headers: ``read_volume`` either returns a volume of the declared shape with a
usable geometry, or refuses the file with a one-line :class:`InputError`, quickly and without allocating what a
lying header asks for.

Hypothesis builds NRRD files (attached and detached, raw/gzip/text/hex/bzip2 encodings, any sizes, spacings,
space directions, byte skips, data shorter or longer than declared) and mutates the header bytes of a valid
NIfTI-1 file written by SimpleITK. Each file is read in-process under an alarm and a cap on the address space,
so that a hang or an allocation of what the header claims fails the test instead of the machine. A few hostile
files also go through the real ``liverseg segment`` command, and the allocation check runs once more in a
subprocess with a 2 GB address-space limit.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from cli_fixtures import (
    REPO,
    SHAPE,
    SPACING,
    assert_one_line_error,
    cli_env,
    make_tiny_checkpoint,
    run_cli,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from LiverSegLib.data.phantoms import make_phantom
from LiverSegLib.errors import InputError
from LiverSegLib.io import read_volume

POSIX = sys.platform != "win32"
LINUX = sys.platform.startswith("linux")  # /proc/self/statm for the address-space cap
SECONDS_PER_READ = 20
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------------------------ the property


class _ReadTimeoutError(Exception):
    pass


@contextlib.contextmanager
def _guarded():
    """An alarm (a read must not hang) and a soft address-space cap 8 GB above what the process uses: a header's
    lie of 16 GB or more that reaches an allocation fails fast, as an allocation error, instead of filling the
    machine's memory (the headroom leaves room for ITK's threads on many-core machines)."""
    if not POSIX:
        yield
        return
    import resource

    def on_alarm(signum, frame):
        raise _ReadTimeoutError(f"read_volume took more than {SECONDS_PER_READ} s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if LINUX:
        with open("/proc/self/statm") as f:
            cap = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE") + (8 << 30)
        if cap < soft or soft == resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.alarm(SECONDS_PER_READ)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def _stderr_fd_captured(sink: list[bytes]):
    """What C++ code (ITK, VNL) writes on file descriptor 2 meanwhile, into ``sink``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read())


def check_read(path: Path, shape_zyx: tuple[int, ...] | None) -> str:
    """The fuzz property for one file: "read" or "refused"; anything else fails the test."""
    err: list[bytes] = []
    try:
        with _stderr_fd_captured(err), _guarded():
            volume = read_volume(path)
    except InputError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        # ITK's allocation error means a lying header got as far as allocating the image: the check must come first
        assert "allocate" not in message.lower(), message
        assert not err[0], f"ITK wrote on stderr: {err[0][:500]!r}"
        return "refused"
    assert not err[0], f"ITK wrote on stderr: {err[0][:500]!r}"
    if shape_zyx is not None:
        assert volume.array_zyx.shape == shape_zyx
    assert all(math.isfinite(s) and s > 0 for s in volume.spacing_xyz), volume.spacing_xyz
    assert np.isfinite(volume.direction).all() and np.isfinite(volume.origin_xyz).all()
    return "read"


# ------------------------------------------------------------------------------------------------------- NRRD

_NRRD_TYPES = {"short": 2, "unsigned char": 1, "uchar": 1, "float": 4, "double": 8, "int": 4, "int64": 8,
               "ushort": 2, "foo": 2, "block": 1}
# Most draws are valid so that both ends of the property are exercised; the rest are the lies and oddities.
_SIZE = st.sampled_from([1, 2, 3, 4, 5, 6] * 3 + [0, -3, 300, 2000, 65536, 2**31, 2**32 + 1, 10**12])
_REAL = st.sampled_from([1.0, 0.5, 2.5] * 3 + [-1.0, 0.0, NAN, INF, 1e-30, 1e30])


def _fmt(v: float) -> str:
    return repr(float(v)).replace("inf", "Inf")


@st.composite
def nrrd_files(draw):
    """(header text, voxel bytes as stored, detached, declared shape zyx or None, data-file name)."""
    dimension = draw(st.sampled_from([3] * 6 + [2, 4]))
    sizes = draw(st.lists(_SIZE, min_size=dimension, max_size=dimension))
    type_name = draw(st.sampled_from(["short"] * 4 + sorted(_NRRD_TYPES)))
    encoding = draw(st.sampled_from(["raw"] * 4 + ["gzip"] * 2 + ["gz", "ascii", "hex", "bzip2"]))
    nl = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    lines = ["NRRD0004", f"type: {type_name}", f"dimension: {dimension}",
             "sizes: " + " ".join(map(str, sizes)), f"encoding: {encoding}"]
    endian = draw(st.sampled_from(["little"] * 3 + ["big", None]))
    if endian:
        lines.append(f"endian: {endian}")
    geometry = draw(st.sampled_from(["none", "spacings", "directions"]))
    if geometry == "spacings":
        lines.append("spacings: " + " ".join(_fmt(v) for v in draw(st.lists(_REAL, min_size=dimension,
                                                                              max_size=dimension))))
    elif geometry == "directions":
        lines.append("space: left-posterior-superior")
        n_vectors = draw(st.sampled_from([dimension, dimension, dimension - 1]))
        vectors = []
        for axis in range(n_vectors):
            kind = draw(st.sampled_from(["axis"] * 4 + ["scaled", "random", "copy", "none"]))
            if kind == "none" or (axis >= 3 and kind != "random"):
                vectors.append("none")
                continue
            if kind == "copy" and vectors and vectors[-1] != "none":
                vectors.append(vectors[-1])  # degenerate: two parallel axes
                continue
            v = [0.0, 0.0, 0.0]
            v[axis % 3] = 1.0 if kind == "axis" else draw(_REAL)
            if kind == "random":
                v = draw(st.lists(_REAL, min_size=3, max_size=3))
            vectors.append("(" + ",".join(_fmt(x) for x in v) + ")")
        lines.append("space directions: " + " ".join(vectors))
        if draw(st.booleans()):
            lines.append("space origin: (" + ",".join(_fmt(x) for x in draw(st.lists(
                st.sampled_from([0.0, -12.5, 100.0] * 3 + [NAN, INF]), min_size=3, max_size=3))) + ")")
    skip = draw(st.sampled_from([None] * 5 + [0, -1, 7, 10**6]))
    if skip is not None:
        lines.append(f"byte skip: {skip}")
    detached = draw(st.booleans())
    data_name = "voxels.raw" + (".gz" if encoding in ("gzip", "gz") else "")
    if detached:
        lines.append(f"data file: {draw(st.sampled_from([data_name] * 4 + ['missing.raw']))}")

    # The voxels: as many as declared when that is small, else a lie (a few bytes for a huge size).
    voxels = math.prod(sizes) if all(s > 0 for s in sizes) else 0
    n_bytes = voxels * _NRRD_TYPES[type_name] if voxels <= 4096 else 64
    raw = bytes((7 * i) % 251 for i in range(n_bytes))
    length = draw(st.sampled_from(["exact"] * 5 + ["short", "long", "empty"]))
    if length == "short":
        raw = raw[: len(raw) // 2]
    elif length == "long":
        raw += bytes(100)
    elif length == "empty":
        raw = b""
    if encoding in ("gzip", "gz"):
        stored = gzip.compress(raw)
        stored = stored[: len(stored) // 2] if draw(st.booleans()) and length == "short" else stored
    elif encoding == "ascii":
        stored = " ".join(str(b) for b in raw).encode()
    elif encoding == "hex":
        stored = raw.hex().encode()
    elif encoding == "bzip2":
        stored = bz2.compress(raw)
    else:
        stored = raw
    if skip and skip > 0 and skip < 100 and draw(st.booleans()):
        stored = bytes(skip) + stored
    header = nl.join(lines) + nl + ("" if detached else nl)
    shape = tuple(reversed(sizes)) if dimension == 3 and all(s > 0 for s in sizes) else None
    return header, stored, detached, shape, data_name


def _write_nrrd(folder: Path, case) -> Path:
    header, stored, detached, _, data_name = case
    if detached:
        (folder / data_name).write_bytes(stored)
        path = folder / "ct.nhdr"
        path.write_bytes(header.encode("latin-1"))
    else:
        path = folder / "ct.nrrd"
        path.write_bytes(header.encode("latin-1") + stored)
    return path


@FUZZ
@given(case=nrrd_files())
def test_fuzzed_nrrd_is_read_or_refused_in_one_line(case):
    with tempfile.TemporaryDirectory() as tmp:
        check_read(_write_nrrd(Path(tmp), case), case[3])


# ------------------------------------------------------------------------------------------------------ NIfTI

# name -> (offset in the NIfTI-1 header, struct format, values to try)
_NIFTI_FIELDS = {
    "sizeof_hdr": (0, "<i", [348, 0, 540, struct.unpack("<i", struct.pack(">i", 348))[0]]),
    "dim": (40, "<4h", [(3, 4, 5, 6), (0, 4, 5, 6), (2, 4, 5, 1), (4, 4, 5, 6), (9, 4, 5, 6), (-1, 4, 5, 6),
                        (3, -4, 5, 6), (3, 0, 5, 6), (3, 2000, 2000, 2000), (3, 32767, 32767, 32767),
                        (3, 6, 5, 4), (3, 40, 5, 6), (3, 1, 1, 1), (3, 4, 0, 6), (3, 4, 5, -2)]),
    "dim4": (48, "<h", [0, 1, 2, -1]),
    "datatype": (70, "<h", [2, 4, 8, 16, 64, 256, 512, 768, 128, 32, 0, 999, 1792, 2304]),
    "bitpix": (72, "<h", [0, 7, 8, 16, 32, 64, -8]),
    "qfac": (76, "<f", [1.0, -1.0, 0.0, NAN]),
    "pixdim": (80, "<3f", [(1.0, 1.0, 1.0), (0.0, 1.0, 1.0), (NAN, 1.0, 1.0), (-2.0, 1.0, 1.0),
                           (INF, 1.0, 1.0), (1e-30, 1.0, 1.0), (1e30, 1e30, 1e30), (0.7, 0.7, 5.0)]),
    "vox_offset": (108, "<f", [352.0, 0.0, -100.0, 348.0, 353.0, 400.0, 1e6, NAN, INF, 1e30]),
    "scl": (112, "<2f", [(1.0, 0.0), (0.0, 0.0), (NAN, 0.0), (INF, 0.0), (2.0, -1024.0), (1.0, NAN)]),
    "codes": (252, "<2h", [(1, 1), (0, 0), (1, 0), (0, 2), (2, 4), (99, 0), (0, -1), (-1, 5)]),
    "quatern": (256, "<3f", [(0.0, 0.0, 0.0), (0.5, 0.5, 0.5), (1.0, 0.0, 0.0), (2.0, 2.0, 2.0), (NAN, 0.0, 0.0),
                             (0.0, INF, 0.0)]),
    "qoffset": (268, "<3f", [(0.0, 0.0, 0.0), (-100.0, 50.0, 3.5), (NAN, 0.0, 0.0), (INF, 0.0, 0.0)]),
    "srow": (280, "<12f", [(1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0), (1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0),
                           (0,) * 12, (NAN,) * 12, (INF, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0),
                           (1, 0, 0, NAN, 0, 1, 0, 0, 0, 0, 1, 0), (0, 2, 0, 5, -3, 0, 0, 5, 0, 0, 1.5, 5),
                           (1e38, 0, 0, 0, 0, 1e38, 0, 0, 0, 0, 1e38, 0), (1, 1e-9, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)]),
    "magic": (344, "4s", [b"n+1\0", b"ni1\0", b"xxxx", b"n+2\0"]),
}


@pytest.fixture(scope="module")
def nifti_base() -> bytes:
    """A valid 4x5x6 int16 NIfTI-1 with an oblique direction, as SimpleITK writes it (352-byte offset)."""
    image = sitk.GetImageFromArray(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) - 60)
    image.SetSpacing((1.5, 2.0, 3.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    c, s = math.cos(0.3), math.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    with tempfile.TemporaryDirectory() as tmp:
        sitk.WriteImage(image, str(Path(tmp) / "base.nii"), False)
        return (Path(tmp) / "base.nii").read_bytes()


@st.composite
def nifti_mutations(draw):
    names = draw(st.lists(st.sampled_from(sorted(_NIFTI_FIELDS)), min_size=1, max_size=4, unique=True))
    edits = [(name, draw(st.sampled_from(_NIFTI_FIELDS[name][2]))) for name in names]
    cut = draw(st.sampled_from(["none", "none", "none", "header", "mid", "minus1", "extra"]))
    return edits, cut, draw(st.sampled_from(["nii", "nii", "gz", "gz-cut"]))


def _mutated_nifti(base: bytes, edits, cut: str) -> bytes:
    data = bytearray(base)
    for name, value in edits:
        offset, fmt, _ = _NIFTI_FIELDS[name]
        struct.pack_into(fmt, data, offset, *(value if isinstance(value, tuple) else (value,)))
    return bytes({"none": data, "header": data[:348], "mid": data[: 352 + (len(data) - 352) // 2],
                  "minus1": data[:-1], "extra": data + bytes(100)}[cut])


def _nifti_shape(header: bytes) -> tuple[int, int, int]:
    """(dim3, dim2, dim1) as niftilib reads them: byte-swapped when dim[0] is outside 1..7."""
    dims = struct.unpack_from("<8h", header, 40)
    if not 1 <= dims[0] <= 7:
        dims = struct.unpack_from(">8h", header, 40)
    return dims[3], dims[2], dims[1]


@FUZZ
@given(mutation=nifti_mutations())
def test_fuzzed_nifti_header_is_read_or_refused_in_one_line(nifti_base, mutation):
    edits, cut, container = mutation
    data = _mutated_nifti(nifti_base, edits, cut)
    with tempfile.TemporaryDirectory() as tmp:
        if container == "nii":
            path = Path(tmp) / "ct.nii"
            path.write_bytes(data)
        else:
            packed = gzip.compress(data)
            path = Path(tmp) / "ct.nii.gz"
            path.write_bytes(packed if container == "gz" else packed[: len(packed) * 2 // 3])
        check_read(path, _nifti_shape(data))


def test_the_unmutated_fuzz_bases_are_read(tmp_path, nifti_base):
    """The fuzz starts from valid files: the property's 'read' branch is reachable."""
    (tmp_path / "ok.nii").write_bytes(nifti_base)
    assert check_read(tmp_path / "ok.nii", (6, 5, 4)) == "read"
    (tmp_path / "ok.nii.gz").write_bytes(gzip.compress(nifti_base))
    assert check_read(tmp_path / "ok.nii.gz", (6, 5, 4)) == "read"
    case = ("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 5 6\nencoding: gzip\nendian: little\n\n",
            gzip.compress(bytes(240)), False, (6, 5, 4), "voxels.raw.gz")
    assert check_read(_write_nrrd(tmp_path, case), (6, 5, 4)) == "read"


# --------------------------------------------------------------------- regressions found by the fuzz, pinned


def _nrrd(tmp: Path, name: str, header: str, data: bytes) -> Path:
    (tmp / name).write_bytes(header.encode() + data)
    return tmp / name


_HUGE = "NRRD0004\ntype: short\ndimension: 3\nsizes: 2000 2000 2000\nendian: little\n"
_NII_SFORM_NAN = [("codes", (0, 2)), ("srow", (1, 0, 0, NAN, 0, 1, 0, 0, 0, 0, 1, 0))]
HOSTILE = {
    # gzip and text encodings were not compared with the file: ITK allocated (and zeroed) 16 GB, then failed
    "gzip NRRD declaring 16 GB": (lambda t, b: _nrrd(t, "g.nrrd", _HUGE + "encoding: gzip\n\n",
                                                     gzip.compress(bytes(1000))), "compressed data can hold"),
    "ascii NRRD declaring 16 GB": (lambda t, b: _nrrd(t, "a.nrrd", _HUGE + "encoding: ascii\n\n", b"1 2 3\n" * 9),
                                   "text-encoded data can hold"),
    "hex NRRD declaring 16 GB": (lambda t, b: _nrrd(t, "h.nrrd", _HUGE + "encoding: hex\n\n", b"00ff" * 9),
                                 "text-encoded data can hold"),
    "raw NRRD with line skip declaring 16 GB": (
        lambda t, b: _nrrd(t, "l.nrrd", _HUGE + "encoding: raw\nline skip: 1\n\n", b"x\n" + bytes(99)),
        "is truncated"),
    "bzip2 NRRD declaring 16 GB": (lambda t, b: _nrrd(t, "b.nrrd", _HUGE + "encoding: bzip2\n\n",
                                                      bz2.compress(bytes(99))), "bzip2 encoding"),
    "detached gzip NRRD declaring 16 GB": (
        lambda t, b: ((t / "d.raw.gz").write_bytes(gzip.compress(bytes(99))),
                      _nrrd(t, "d.nhdr", _HUGE + "encoding: gzip\ndata file: d.raw.gz\n", b""))[1],
        "compressed data can hold"),
    "compressed MetaImage declaring 16 GB": (
        lambda t, b: _nrrd(t, "m.mha", "ObjectType = Image\nNDims = 3\nDimSize = 2000 2000 2000\n"
                           "ElementType = MET_SHORT\nCompressedData = True\nElementDataFile = LOCAL\n",
                           zlib.compress(bytes(99))), "compressed data can hold"),
    "MetaImage with HeaderSize declaring 16 GB": (
        lambda t, b: _nrrd(t, "s.mha", "ObjectType = Image\nNDims = 3\nDimSize = 2000 2000 2000\n"
                           "ElementType = MET_SHORT\nHeaderSize = -1\nElementDataFile = LOCAL\n", bytes(99)),
        "is truncated"),
    "nii.gz declaring 16 GB": (
        lambda t, b: ((t / "n.nii.gz").write_bytes(gzip.compress(_mutated_nifti(b, [("dim", (3, 2000, 2000, 2000))],
                                                                                 "none"))), t / "n.nii.gz")[1],
        "compressed data can hold"),
    # SimpleITK reports sizes in 32 bits: 2**32 + 1 read as 1, so the size checks passed and ITK allocated 2**32
    "NRRD size of 2**32 + 1": (lambda t, b: _nrrd(t, "w.nrrd", _HUGE.replace("2000 2000 2000", "4294967297 2 2")
                                                  + "encoding: raw\n\n", bytes(99)), "declares 4294967297x2x2"),
    "MetaImage size of 2**32 + 1": (
        lambda t, b: _nrrd(t, "w.mha", "ObjectType = Image\nNDims = 3\nDimSize = 4294967297 2 2\n"
                           "ElementType = MET_SHORT\nElementDataFile = LOCAL\n", bytes(99)), "declares 4294967297x2x2"),
    # a NaN sform was read into a volume with a NaN direction (and VNL printed 30 lines of matrices on stderr)
    "NIfTI sform of NaN": (
        lambda t, b: ((t / "q.nii").write_bytes(_mutated_nifti(b, [("codes", (0, 2)), ("srow", (NAN,) * 12)],
                                                               "none")), t / "q.nii")[1], "NaN or infinite"),
    "NIfTI sform with a NaN offset": (
        lambda t, b: ((t / "r.nii").write_bytes(_mutated_nifti(b, _NII_SFORM_NAN, "none")), t / "r.nii")[1],
        "NaN or infinite"),
    "NIfTI qform with NaN": (
        lambda t, b: ((t / "p.nii").write_bytes(_mutated_nifti(b, [("codes", (1, 0)), ("quatern", (NAN, 0.0, 0.0))],
                                                               "none")), t / "p.nii")[1], "NaN or infinite"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_lying_or_corrupt_header_is_refused_before_allocation(tmp_path, nifti_base, case):
    make, words = HOSTILE[case]
    path = make(tmp_path, nifti_base)
    with pytest.raises(InputError, match=words), _guarded():
        read_volume(path)
    assert check_read(path, None) == "refused"


def test_nrrd_with_crlf_line_ends_is_read(tmp_path):
    """NrrdIO reads CRLF headers; the data-size check used to look for a LF blank line only and refuse it."""
    data = np.arange(120, dtype=np.int16)
    header = "NRRD0004\r\ntype: short\r\ndimension: 3\r\nsizes: 4 5 6\r\nencoding: raw\r\nendian: little\r\n\r\n"
    volume = read_volume(_nrrd(tmp_path, "crlf.nrrd", header, data.tobytes()))
    np.testing.assert_array_equal(volume.array_zyx.ravel(), data)


def test_fractional_nrrd_size_still_gets_the_data_check(tmp_path):
    """A size NrrdIO reads ('2000.5' as 2000) but Python's int() does not must not switch the check off."""
    path = _nrrd(tmp_path, "f.nrrd", _HUGE.replace("2000 2000 2000", "2000.5 2000 2000") + "encoding: gzip\n\n",
                 gzip.compress(bytes(99)))
    assert "compressed data can hold" in _refusal(path)


def _refusal(path: Path) -> str:
    with pytest.raises(InputError) as info, _guarded():
        read_volume(path)
    return str(info.value)


@pytest.mark.skipif(not LINUX, reason="address-space limits as Linux applies them")
def test_huge_headers_are_refused_within_a_2gb_address_space(tmp_path, nifti_base):
    """In a fresh process limited to 2 GB of address space: every lying header is refused with our message (not
    an allocation failure) and the resident memory grows by less than 200 MB."""
    files = []
    for i, case in enumerate(HOSTILE):
        (tmp_path / str(i)).mkdir()
        files.append(HOSTILE[case][0](tmp_path / str(i), nifti_base))
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from LiverSegLib.io import read_volume\n"
        "from LiverSegLib.errors import InputError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for f in sys.argv[1:]:\n"
        "    try:\n"
        "        read_volume(f)\n"
        "        print('READ', f)\n"
        "    except InputError as e:\n"
        "        print('REFUSED', e)\n"
        "print('GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",
                                                      "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(files) + 1 and all(ln.startswith("REFUSED ") for ln in lines[:-1]), proc.stdout
    assert not any("allocate" in ln.lower() for ln in lines), proc.stdout
    assert int(lines[-1].split()[1]) < 200 * 1024, lines[-1]
    assert proc.stderr == ""


# ------------------------------------------------------------------------------------- through the real CLI


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return cli_env(tmp_path_factory.mktemp("home"))


def _truncated_nii(t: Path, base: bytes) -> Path:
    (t / "cut.nii").write_bytes(base[:400])
    return t / "cut.nii"


CLI_CASES = {
    "gzip NRRD declaring 16 GB": (HOSTILE["gzip NRRD declaring 16 GB"][0], "compressed data can hold"),
    "NRRD size of 2**32 + 1": (HOSTILE["NRRD size of 2**32 + 1"][0], "declares 4294967297x2x2"),
    "NIfTI sform of NaN": (HOSTILE["NIfTI sform of NaN"][0], "NaN or infinite"),
    "truncated NIfTI": (_truncated_nii, "is truncated"),
    "bzip2 NRRD": (HOSTILE["bzip2 NRRD declaring 16 GB"][0], "bzip2 encoding"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_a_hostile_header_in_one_line_and_writes_nothing(tmp_path, nifti_base, ckpt, env, case):
    make, words = CLI_CASES[case]
    source = make(tmp_path, nifti_base)
    proc = run_cli(source, "-o", tmp_path / "out", "--model-file", ckpt, "--device", "cpu", env=env, timeout=120)
    assert_one_line_error(proc, words, source.name)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_segments_a_crlf_nrrd(tmp_path, ckpt, env):
    """The valid end of the property through the CLI: an odd but valid header (CRLF NRRD) is segmented."""
    ct, _ = make_phantom(SHAPE, SPACING, seed=5)
    header = (f"NRRD0004\r\ntype: short\r\ndimension: 3\r\nsizes: {SHAPE[2]} {SHAPE[1]} {SHAPE[0]}\r\n"
              f"spacings: {SPACING[0]} {SPACING[1]} {SPACING[2]}\r\nencoding: raw\r\nendian: little\r\n\r\n")
    source = _nrrd(tmp_path, "crlf.nrrd", header, ct.array_zyx.astype("<i2").tobytes())
    proc = run_cli(source, "-o", tmp_path / "out", "--model-file", ckpt, "--device", "cpu", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").iterdir())
