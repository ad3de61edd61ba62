"""Which library decompresses each codec, and the fallbacks to the standard library: to zlib when ISA-L
is not installed, to lzma when lzma-mt is not."""

from __future__ import annotations

import gzip
import importlib.util
import io
import lzma
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scutil import SC, SRC, deflate64_zip, sc

from sharedcache.errors import SharedCacheError
from sharedcache.loaders import codecs as codecs_module
from sharedcache.loaders import writer
from sharedcache.loaders.codecs import backends, decompressing

pytestmark = pytest.mark.timeout(60)



def test_version_verbose_names_the_libraries() -> None:
    result = sc("--version", "-v")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sc (shared-cache) ")
    shown = dict(line.split(": ", 1) for line in lines[1:])
    assert shown.pop("large archives") == writer.describe()  # its cases: test_writer_process.py, below
    assert shown == backends()
    try:
        import isal  # noqa: F401  # only asks whether it is there
    except ImportError:
        assert shown["gzip"].startswith("zlib ") and shown["gzip"].endswith("(isal not available)")
    else:
        assert shown["gzip"].startswith("ISA-L ")
    try:
        import lzma_mt  # noqa: F401  # only asks whether it is there
    except ImportError:
        assert shown["xz"] == "liblzma (Python's lzma; lzma-mt not available)"
    else:
        assert shown["xz"].startswith("liblzma 5.") and "(lzma-mt " in shown["xz"]
    try:
        import inflate64  # noqa: F401  # only asks whether it is there
    except ImportError:
        assert shown["deflate64"].startswith("not available")
    else:
        assert shown["deflate64"].startswith("inflate64 ")
    assert sc("--version").stdout.count("\n") == 1  # without -v, the version alone


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset is not installed (Debian: util-linux)")
def test_version_verbose_says_a_process_bound_to_one_cpu_unpacks_alone() -> None:
    result = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))), *SC, "--version", "-v"],
                            capture_output=True, text=True, timeout=50, check=False)
    assert result.returncode == 0, result.stderr
    assert "large archives: one process (1 usable CPU)\n" in result.stdout


def _flip(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 1
    return bytes(damaged)


#: codec: (the accelerating module, the file's suffix, how to compress, how to damage the result,
#: the decompressor word, what `sc --version -v` says without the module)
FALLBACKS: dict[str, tuple[str, str, Callable[[bytes], bytes], Callable[[bytes], bytes], str, str]] = {
    "gzip": ("isal", ".gz", gzip.compress, lambda data: _flip(data, -8),  # its CRC
             "gunzip", "gzip: zlib "),
    "xz": ("lzma_mt", ".xz", lzma.compress, lambda data: _flip(data, len(data) // 2),
           "unxz", "xz: liblzma (Python's lzma; lzma-mt not available)"),
}


def without(module: str, root: Path, populations: list[tuple[str, str, str]]) -> str:
    """What a Python where ``module`` cannot be imported prints: ``sc --version -v``, then for each
    population (source file in ``root``, word, destination) nothing, or "refused:" and why.  Its
    destinations and work directory are made in ``root``."""
    for name in {"work", *(dest for _, _, dest in populations)}:
        (root / name).mkdir()
    script = (
        "import sys\n"
        f"sys.modules[{module!r}] = None  # importing it now raises ImportError\n"
        "from sharedcache import cli\n"
        "from sharedcache.errors import CorruptDataError\n"
        "from sharedcache.loaders.pipeline import populate\n"
        "from sharedcache.loaders.registry import parse_recipe\n"
        "cli.main(['--version', '-v'])\n"
        "root = sys.argv[1]\n"
        f"for source, word, dest in {populations!r}:\n"
        "    try:\n"
        "        populate(parse_recipe([f'file:{root}/{source}', word]), f'{root}/{dest}', work=f'{root}/work')\n"
        "    except CorruptDataError as exc:\n"
        "        print('refused:', exc)\n")
    result = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": SRC}, timeout=50, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_without_inflate64_a_deflate64_member_is_refused_saying_why(tmp_path: Path) -> None:
    (tmp_path / "windows.zip").write_bytes(deflate64_zip({"big.bin": b"data" * 1000}))
    printed = without("inflate64", tmp_path, [("windows.zip", "zip", "dest")])
    assert "deflate64: not available (inflate64 not installed: such zip members are refused)\n" in printed
    assert (f"refused: cannot unzip 'big.bin' from {tmp_path}/windows.zip: it is compressed with Deflate64, "
            "which needs the inflate64 package (not installed)\n") in printed
    assert not any((tmp_path / "dest").iterdir())


@pytest.mark.parametrize("codec", sorted(FALLBACKS))
def test_without_the_faster_library_a_codec_falls_back_to_the_standard_one(tmp_path: Path, codec: str) -> None:
    """A Python where the faster library cannot be imported still decompresses, checks the data, and
    says so."""
    module, suffix, compress, damage, word, shown = FALLBACKS[codec]
    text = b"".join(b"line %d\n" % i for i in range(100_000))
    (tmp_path / f"good{suffix}").write_bytes(compress(text))
    (tmp_path / f"bad{suffix}").write_bytes(damage(compress(text)))
    printed = without(module, tmp_path, [(f"good{suffix}", word, "dest"), (f"bad{suffix}", word, "dest2")])
    assert shown in printed
    if codec == "gzip":
        assert "(isal not available)" in printed
    assert (tmp_path / "dest" / "good").read_bytes() == text
    assert f"refused: corrupt {codec} data from " in printed


def _xz_outcome(data: bytes) -> tuple[str, bytes | str]:
    """What ``decompressing()`` makes of ``data`` as xz: the bytes, or the error's class and text."""
    stream = decompressing("xz", io.BytesIO(data), "the test's data", None)
    out = bytearray()
    try:
        while piece := stream.read(1 << 16):
            out += piece
    except SharedCacheError as exc:
        return type(exc).__name__, str(exc)
    return "bytes", bytes(out)


#: Valid xz data to damage: one stream of compressible text, two streams one after the other (as
#: xz --block-list or a concatenation makes), a stream of several blocks, and an .lzma (alone) file,
#: which `unxz` reads as `xz -d` does.
_TEXT = b"".join(b"%d: the quick brown fox\n" % i for i in range(20_000))
_XZ_SAMPLES = [
    lzma.compress(_TEXT),
    lzma.compress(_TEXT[:1000]) + lzma.compress(_TEXT[1000:3000], check=lzma.CHECK_SHA256),
    lzma.compress(_TEXT, filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}], check=lzma.CHECK_CRC32)
    + lzma.compress(b"", check=lzma.CHECK_NONE),
    lzma.compress(_TEXT[:5000], format=lzma.FORMAT_ALONE),
]


@st.composite
def _damaged_xz(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_XZ_SAMPLES)))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data)


@pytest.mark.skipif(importlib.util.find_spec("lzma_mt") is None, reason="lzma-mt is not installed here")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_damaged_xz())
def test_lzma_mt_decodes_damaged_xz_exactly_as_the_standard_library(monkeypatch: pytest.MonkeyPatch,
                                                                      data: bytes) -> None:
    """The faster xz backend makes of whole, damaged and truncated data what Python's lzma makes of
    it: the same bytes, or the same refusal."""
    with monkeypatch.context() as without:
        without.setitem(sys.modules, "lzma_mt", None)
        codecs_module._accelerated.cache_clear()
        standard = _xz_outcome(data)
    codecs_module._accelerated.cache_clear()
    assert codecs_module._lzma_module().__name__ == "lzma_mt"
    assert _xz_outcome(data) == standard
