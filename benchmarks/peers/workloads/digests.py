"""W11 digests: ``sc --use`` on W1's archive with no checksum and with ``md5:``, ``sha256:`` and
``sha512:``, on each file system, ``--repeat`` runs interleaved; ratios are to the run without a
checksum.  Each algorithm's speed alone (``hashlib`` on the archive in the page cache, in this
process) is in the notes, for scale.  With ``--baseline`` the baseline's ``sc --use`` runs the
same four, interleaved with the rest, and every row of either notes its ratio to the baseline's
run without a checksum."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from benchmarks.harness import MB

from ..bench import Bench
from ..report import Workload
from .sidebyside import entries, interleaved, rows

ALGORITHMS = ("md5", "sha256", "sha512")


def w11_digests(b: Bench) -> Workload:
    archive = b.archive("w1")
    alone = {algorithm: _hash_speed(archive.path, algorithm) for algorithm in ALGORITHMS}
    w = Workload("W11", f"digests: sc --use on W1's {archive.size / MB:.0f} MB tar.gz with each "
                 "checksum", "s", "no checksum",
                 params={"repeat": b.args.repeat, "archive_bytes": archive.size,
                         "hashlib_mb_per_s": alone})
    chosen = entries(b, [(key, algorithm) for key in ("sc-cli", "sc-cli-baseline")
                         for algorithm in ("", *ALGORITHMS)])
    for filesystem in b.filesystems:
        attempts = interleaved(b, archive, chosen, filesystem, "w11")
        made = rows(archive, chosen, attempts, "sc --use, no checksum", f"{filesystem}: ",
                    per_member=False, also="sc --use (baseline), no checksum")
        for row, entry in zip(made, chosen, strict=True):
            if entry.algorithm:
                row.notes += f"; hashlib alone {alone[entry.algorithm]:.0f} MB/s"
                if entry.contender.kind == "project":
                    w.check("W11", f"{filesystem} {entry.algorithm}", row.ratio)
        w.rows += made
    return w


def _hash_speed(path: Path, algorithm: str) -> float:
    """MB/s of ``algorithm`` over the file at ``path``, read once before (so from the page
    cache), in chunks (holding the whole file would raise the RSS floor of later children)."""
    with open(path, "rb") as f:
        while f.read(2**20):
            pass
        f.seek(0)
        start = time.perf_counter()
        hashlib.file_digest(f, algorithm)
        return f.tell() / MB / (time.perf_counter() - start)
