"""Which library decompresses each codec, and the fallback to zlib when ISA-L is not installed."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scutil import SC, SRC, sc

from sharedcache.loaders import writer
from sharedcache.loaders.codecs import backends

pytestmark = pytest.mark.timeout(60)



def test_version_verbose_names_the_libraries() -> None:
    result = sc("--version", "-v")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sc (shared-cache) ")
    shown = dict(line.split(": ", 1) for line in lines[1:])
    assert shown.pop("large tar archives") == writer.describe()  # its cases: test_writer_process.py, below
    assert shown == backends()
    try:
        import isal  # noqa: F401  # only asks whether it is there
    except ImportError:
        assert shown["gzip"].startswith("zlib ") and shown["gzip"].endswith("(isal not available)")
    else:
        assert shown["gzip"].startswith("ISA-L ")
    assert sc("--version").stdout.count("\n") == 1  # without -v, the version alone


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset is not installed (Debian: util-linux)")
def test_version_verbose_says_a_process_bound_to_one_cpu_unpacks_alone() -> None:
    result = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))), *SC, "--version", "-v"],
                            capture_output=True, text=True, timeout=50, check=False)
    assert result.returncode == 0, result.stderr
    assert "large tar archives: one process (1 usable CPU)\n" in result.stdout


def test_without_isal_gzip_falls_back_to_zlib(tmp_path: Path) -> None:
    """A Python where isal cannot be imported still inflates gzip, checks its trailer, and says so."""
    text = b"".join(b"line %d\n" % i for i in range(100_000))
    (tmp_path / "good.gz").write_bytes(gzip.compress(text))
    damaged = bytearray(gzip.compress(text))
    damaged[-8] ^= 1  # the CRC
    (tmp_path / "bad.gz").write_bytes(bytes(damaged))
    script = (
        "import sys\n"
        "sys.modules['isal'] = None  # import isal now raises ImportError\n"
        "from sharedcache import cli\n"
        "from sharedcache.errors import CorruptDataError\n"
        "from sharedcache.loaders.pipeline import populate\n"
        "from sharedcache.loaders.registry import parse_recipe\n"
        "cli.main(['--version', '-v'])\n"
        "root = sys.argv[1]\n"
        "populate(parse_recipe([f'file:{root}/good.gz', 'gunzip']), f'{root}/dest', work=f'{root}/work')\n"
        "try:\n"
        "    populate(parse_recipe([f'file:{root}/bad.gz', 'gunzip']), f'{root}/dest2', work=f'{root}/work')\n"
        "except CorruptDataError as exc:\n"
        "    print('refused:', exc)\n")
    for name in ("dest", "dest2", "work"):
        (tmp_path / name).mkdir()
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": SRC}, timeout=50, check=False)
    assert result.returncode == 0, result.stderr
    assert "gzip: zlib " in result.stdout and "(isal not available)" in result.stdout
    assert (tmp_path / "dest" / "good").read_bytes() == text
    assert "refused: corrupt gzip data from " in result.stdout
