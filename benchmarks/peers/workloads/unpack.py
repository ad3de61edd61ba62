"""W9, W10 and W12: real archives against the GNU pipeline (and unzip), on tmpfs and on the disk.

W9 software tree: the standard library of the interpreter running the benchmark, as .tar.gz,
.tar.xz and .tar.zst (see :mod:`..archives`).  Contenders: ``sc --use`` with ``sha256:`` and with
``md5:``; the GNU pipeline ``curl URL | tee >(sha256sum) | tar -x[z|J|--zstd]f -``, alone and
followed by ``sync -f`` (the promise ``sc`` keeps: the tree is on stable storage when the
command returns); pooch (``sha256:``) and cached_path for the formats Python's tarfile reads.
Beside them, ``sc --use file:`` against the same pipeline with ``cat FILE`` for ``curl URL``:
neither side has an HTTP client to start, so the two pairs show what a miss over HTTP adds.
W10 many small files: ``--members`` files of 1-8 KB as .tar.gz (default 50,000; up to
1,000,000), the same contenders (the peers at the first size only: at a million members they
take minutes a run), with the peak RSS of every run, and at the first size W9's pair from the
file (the pair the issue that set W10's goal measured).  With two sizes, the time per member of
``sc --use`` at the largest against the smallest shows whether time grows linearly.
W12 many small files as a zip: the same files as .zip, against ``curl URL | tee >(sha256sum)
>FILE`` then ``unzip -q FILE`` (a zip needs random access: unzip cannot read a stream).

Each measures every contender ``--repeat`` times, interleaved, on each file system of ``--on``
(``--tmpfs`` and the disk, under ``--tmp``), each run cold into a fresh directory, removed
afterwards; ratios are to the GNU pipeline on the same archive and file system.  To keep a full
run within minutes, ``md5:`` and the peers run only with ``--every-contender``.
"""

from __future__ import annotations

from benchmarks.harness import MB

from ..archives import COMPRESSIONS
from ..bench import Bench
from ..report import Workload, ratio
from .sidebyside import Entry, entries, interleaved, rows

#: the contenders of W9 and W10 with the checksum each is given (the reference: the curl pipeline)
ARCHIVE_CONTENDERS = [("sc-cli", "sha256"), ("sc-cli-baseline", "sha256"), ("sc-cli", "md5"),
                      ("curl", "sha256"), ("curl-sync", "sha256"), ("pooch", "sha256"),
                      ("cached_path", "")]
REFERENCE = "curl pipeline sha256"
#: The pair that reads the archive from its file, with no HTTP client on either side (W9, and W10
#: at its first size): what the miss of an HTTP source adds shows beside it (not a goal)
FROM_FILE = [("sc-cli-file", "sha256"), ("cat", "sha256")]
FILE_REFERENCE = "cat pipeline sha256"
#: what the reference costs with sc's durability: the second ratio of every row
FLUSHED = "curl pipeline+sync sha256"
SC = "sc --use sha256"


def w9_software_tree(b: Bench) -> Workload:
    archives = {compression: b.archive(f"w9-{compression}") for compression in COMPRESSIONS}
    gz = archives["gz"]
    w = Workload("W9", f"software tree: the standard library ({gz.files:,} files, "
                 f"{gz.content_bytes / MB:.0f} MB) as .tar.gz, .tar.xz, .tar.zst", "s",
                 "GNU pipeline", params={"repeat": b.args.repeat, "archives": {
                     c: {"bytes": a.size, "files": a.files, "content_bytes": a.content_bytes}
                     for c, a in archives.items()}})
    chosen, from_file = chosen_contenders(b), entries(b, FROM_FILE)
    for filesystem in b.filesystems:
        for compression, archive in archives.items():
            attempts = interleaved(b, archive, chosen + from_file, filesystem, f"w9-{compression}")
            prefix = f"{filesystem} .tar.{compression} {archive.size / MB:.0f} MB: "
            made = rows(archive, chosen, attempts, REFERENCE, prefix, also=FLUSHED)
            w.rows += made + rows(archive, from_file, attempts, FILE_REFERENCE, prefix)
            w.check("W9", f"{filesystem} .tar.{compression}",
                    next((r.ratio for r in made if r.contender.endswith(": " + SC)), None))
    return w


def w10_small_files(b: Bench) -> Workload:
    return _many_files(b, "W10", "tar.gz")


def w12_small_files_zip(b: Bench) -> Workload:
    return _many_files(b, "W12", "zip")


def _many_files(b: Bench, workload: str, suffix: str) -> Workload:
    """W10 or W12: ``--members`` small files as ``suffix``, with the goals of ``workload``."""
    sizes = b.args.members
    w = Workload(workload, f"many small files: {', '.join(f'{n:,}' for n in sizes)} files of "
                 f"1-8 KB as .{suffix}", "s", "GNU pipeline" if suffix.startswith("tar") else "unzip",
                 params={"repeat": b.args.repeat, "members": sizes})
    for filesystem in b.filesystems:
        per_member = {}
        for n, members in enumerate(sizes):
            archive = b.archive(f"{workload.lower()}-{members}")
            w.params[f"archive_bytes_{members}"] = archive.size
            chosen = [e for e in chosen_contenders(b) if n == 0 or e.contender.kind != "peer"]
            from_file = entries(b, FROM_FILE) if n == 0 and suffix.startswith("tar") else []
            attempts = interleaved(b, archive, chosen + from_file, filesystem, f"{workload.lower()}-{members}",
                                   rss=True)
            prefix = f"{filesystem} {members:,} ({archive.size / MB:.0f} MB): "
            made = rows(archive, chosen, attempts, REFERENCE, prefix, rss=True, also=FLUSHED)
            w.rows += made + rows(archive, from_file, attempts, FILE_REFERENCE, prefix, rss=True)
            sc = next((r for r in made if r.contender.endswith(": " + SC)), None)
            w.check(workload, f"{filesystem}, {members:,} members", None if sc is None else sc.ratio)
            w.check(f"{workload}-rss", f"{filesystem}, {members:,} members",
                    None if sc is None else sc.data.get("peak_rss_mib"))
            per_member[members] = None if sc is None else sc.data.get("us_per_member")
        if len(sizes) > 1:
            w.check(f"{workload}-linear", f"{filesystem}, {max(sizes):,} against {min(sizes):,}",
                    ratio(per_member[max(sizes)], per_member[min(sizes)]))
        else:
            w.check(f"{workload}-linear", f"{filesystem} (one size)", None)
    return w


def chosen_contenders(b: Bench) -> list[Entry]:
    """:data:`ARCHIVE_CONTENDERS`, without ``md5:`` and the peers unless ``--every-contender``."""
    return [e for e in entries(b, ARCHIVE_CONTENDERS) if b.args.every_contender
            or (e.contender.kind != "peer" and e.algorithm != "md5")]
