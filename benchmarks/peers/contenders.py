"""The contenders: each is a command that fetches one archive, verifies its checksum, unpacks it
and prints the path of the unpacked tree.

* ``sc --use``: the CLI, ``.venv/bin/sc --use -d BASE -n NAME http:URL md5:HEX tar``;
* ``sharedcache.use()``: the Python API in a fresh process (``keep=True``, so that leaving the
  ``with`` block does not delete what was just made);
* ``pooch``: ``pooch.retrieve(url, known_hash="md5:...", processor=pooch.Untar())``;
* ``cached_path``: ``cached_path(url, cache_dir=..., extract_archive=True)`` (it has no checksum);
* ``curl pipeline``: ``curl -sf URL | tee >(md5sum) | tar xz -C DIR`` in bash, then a comparison
  of the sum: one stream through standard tools, the practical limit for one stream; for a zip,
  which needs random access, ``curl -sf URL | tee >(md5sum) >FILE`` then ``unzip -q FILE -d DIR``;
* ``curl pipeline+sync``: the same, then ``sync -f DIR``: the pipeline with the promise ``sc``
  keeps, that the tree is on stable storage when the command returns (W9, W10);
* with ``--baseline DIR``: ``sc --use (baseline)`` and ``sharedcache.use() (baseline)``, the same
  commands run from the virtual environment of another checkout (``DIR/.venv``).

The checksum word is ``md5:HEX`` unless a workload asks for another algorithm (or for none).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .environments import PeerEnv

#: A Python contender is a script made of this template and a recipe defining ``fetch()``, which
#: returns the path of the ready tree.  Called with URL DIGEST NAME FILENAME DEST it prints that
#: path; with ITERATIONS BUDGET after them it calls fetch() once, then times up to ITERATIONS more
#: calls within BUDGET seconds and prints the times in ns as JSON (W4).  DIGEST is a checksum word,
#: "md5:HEX", or "" for none.
PYTHON_TEMPLATE = """\
import sys
URL, DIGEST, NAME, FILENAME, DEST = sys.argv[1:6]
{recipe}
if len(sys.argv) > 6:
    import json, time
    iterations, budget = int(sys.argv[6]), float(sys.argv[7])
    fetch()
    times, end = [], time.perf_counter() + budget
    while len(times) < iterations and time.perf_counter() < end:
        start = time.perf_counter_ns()
        fetch()
        times.append(time.perf_counter_ns() - start)
    print(json.dumps(times))
else:
    print(fetch())
"""

SC_API_RECIPE = """\
import sharedcache
def fetch():
    words = ["http:" + URL, *filter(None, [DIGEST]), "tar"]
    with sharedcache.use(*words, name=NAME, directories=[DEST], keep=True) as path:
        return path
"""

POOCH_RECIPE = """\
import logging, pooch
pooch.get_logger().setLevel(logging.WARNING)
def fetch():
    pooch.retrieve(URL, known_hash=DIGEST or None, fname=FILENAME, path=DEST,
                   processor=pooch.Untar(), progressbar=False)
    return DEST + "/" + FILENAME + ".untar"
"""

CACHED_PATH_RECIPE = """\
from cached_path import cached_path
def fetch():
    return cached_path(URL, cache_dir=DEST, extract_archive=True, quiet=True)
"""

#: The reference: one stream through curl, tee, a checksum tool and tar (or into a file that unzip
#: then reads).  The checksum tool reads fd 3 rather than a process substitution inside the
#: pipeline, so that bash can close its input and wait for it.  Arguments: URL HEX DEST TOOL
#: UNPACK (a tar flag, as md5sum -z, sha256sum --zstd..., or "unzip"), "sync" to flush the
#: tree's file system before answering, and "file" to read the archive with cat, URL being its
#: path (the same pipeline without an HTTP client: the reference of ``sc --use file:``).
CURL_PIPELINE = """\
set -o pipefail
mkdir -p "$3/tree"
fetch=(curl -sf)
[ "$7" = file ] && fetch=(cat)
exec 3> >("$4" >"$3/sum")
if [ "$5" = unzip ]; then
    "${fetch[@]}" "$1" | tee /dev/fd/3 >"$3/archive" && unzip -q "$3/archive" -d "$3/tree"
else
    "${fetch[@]}" "$1" | tee /dev/fd/3 | tar -x "$5" -f - -C "$3/tree"
fi
status=$?
rm -f "$3/archive"
exec 3>&-
wait $!
[ $status -eq 0 ] && [ "$6" = sync ] && { sync -f "$3/tree" || status=$?; }
[ $status -eq 0 ] && read -r sum _ <"$3/sum" && [ "$sum" = "$2" ] && echo "$3/tree"
"""

#: how the pipeline unpacks each archive, by its name's suffix: GNU tar's flag for the compression,
#: or unzip
UNPACKS = {".tar.gz": "-z", ".tar.xz": "-J", ".tar.zst": "--zstd", ".zip": "unzip"}
#: the compressions Python's tarfile reads (pooch and cached_path unpack with it)
TARFILE_FORMATS = frozenset({".tar.gz", ".tar.xz"})
#: the archives that the project's contenders unpack through the sharedcache API
TAR_FORMATS = frozenset(suffix for suffix in UNPACKS if suffix.startswith(".tar"))
ALL_FORMATS = frozenset(UNPACKS)


@dataclass(frozen=True)
class Target:
    """One request: the archive's URL and checksum word, a name for it, its file name, and the
    contender's directory."""

    url: str
    digest: str                # "md5:HEX", "sha256:HEX"..., or "" for none
    name: str
    filename: str
    dest: Path
    extra: tuple[str, ...] = ()  # more options (sc --use only)
    path: Path | None = None     # the archive's file, for the contenders that read it (kind "local")


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    kind: str                                  # "project", "peer", "reference", "flushed", "baseline" or "local"
    argv: Callable[[Target], list[str]]        # fetch, verify, unpack; print the tree's path
    warm: bool = True                          # answers again from its cache (W3)
    in_process: bool = True                    # has fetch() for an in-process loop (W4)
    verifies: bool = True                      # checks the checksum
    formats: frozenset[str] = field(default=ALL_FORMATS)  # archive suffixes it unpacks
    unavailable: str = ""                      # why it cannot run here; "" when it can

    def loop_argv(self, target: Target, iterations: int, budget: float) -> list[str]:
        return [*self.argv(target), str(iterations), str(budget)]

    def unpacks(self, filename: str) -> bool:
        return any(filename.endswith(suffix) for suffix in self.formats)


def python_contender(key: str, label: str, kind: str, python: Path, recipe: str, scripts: Path,
                     *, verifies: bool = True, formats: frozenset[str] = ALL_FORMATS,
                     unavailable: str = "") -> Contender:
    script = scripts / f"fetch_{key}.py"  # not "<module>.py": that would shadow the module
    script.write_text(PYTHON_TEMPLATE.format(recipe=recipe))
    return Contender(key, label, kind,
                     lambda t: [str(python), str(script), t.url, t.digest, t.name, t.filename,
                                str(t.dest)],
                     verifies=verifies, formats=formats, unavailable=unavailable)


def sc_contender(key: str, label: str, kind: str, sc: Path) -> Contender:
    def argv(t: Target) -> list[str]:
        unpacker = "zip" if t.filename.endswith(".zip") else "tar"
        source = f"file:{t.path}" if kind == "local" else f"http:{t.url}"
        return [str(sc), "--use", "-d", str(t.dest), "-n", t.name, source,
                *filter(None, [t.digest]), unpacker, *t.extra]

    # A warm hit does not read the source: the one from a file would measure W3 twice.
    return Contender(key, label, kind, argv, warm=kind != "local", in_process=False,
                     unavailable="" if sc.exists() else f"{sc} not found")


def curl_argv(t: Target, *, flush: bool = False, local: bool = False) -> list[str]:
    algorithm, _, hexdigest = t.digest.partition(":")
    flag = next(flag for suffix, flag in UNPACKS.items() if t.filename.endswith(suffix))
    return ["bash", "-c", CURL_PIPELINE, "curl-pipeline", str(t.path) if local else t.url, hexdigest,
            str(t.dest), f"{algorithm}sum", flag, "sync" if flush else "", "file" if local else ""]


def contenders(scripts: Path, python: Path, peers: PeerEnv, baseline: Path | None) -> list[Contender]:
    """The table of contenders: the project's (``python`` is its environment's interpreter),
    the peers' (their availability comes from ``peers``), the reference and, with ``baseline``,
    the project's from that checkout."""
    scripts.mkdir(parents=True, exist_ok=True)
    missing_tools = [tool for tool in ("bash", "curl", "tee", "md5sum", "sha256sum", "tar", "gzip",
                                       "xz", "zstd", "unzip", "sync") if shutil.which(tool) is None]
    missing = f"missing {', '.join(missing_tools)}" if missing_tools else ""
    project = [
        sc_contender("sc-cli", "sc --use", "project", python.parent / "sc"),
        python_contender("sc-api", "sharedcache.use()", "project", python, SC_API_RECIPE, scripts,
                         formats=TAR_FORMATS),
    ]
    if baseline is not None:  # each right after its counterpart, so that both see the same load
        old = baseline / ".venv" / "bin"
        project.insert(1, sc_contender("sc-cli-baseline", "sc --use (baseline)", "baseline",
                                       old / "sc"))
        project.append(python_contender(
            "sc-api-baseline", "sharedcache.use() (baseline)", "baseline", old / "python",
            SC_API_RECIPE, scripts, formats=TAR_FORMATS,
            unavailable="" if (old / "python").exists() else f"{old / 'python'} not found"))
    return [
        *project,
        python_contender("pooch", "pooch", "peer", peers.python, POOCH_RECIPE, scripts,
                         formats=TARFILE_FORMATS, unavailable=peers.problems.get("pooch", "")),
        python_contender("cached_path", "cached_path", "peer", peers.python, CACHED_PATH_RECIPE,
                         scripts, verifies=False, formats=TARFILE_FORMATS,
                         unavailable=peers.problems.get("cached_path", "")),
        Contender("curl", "curl pipeline", "reference", curl_argv, warm=False, in_process=False,
                  unavailable=missing),
        Contender("curl-sync", "curl pipeline+sync", "flushed",
                  lambda t: curl_argv(t, flush=True), warm=False, in_process=False,
                  unavailable=missing),
        # The archive read from its file, no HTTP client on either side (W9).
        sc_contender("sc-cli-file", "sc --use file:", "local", python.parent / "sc"),
        Contender("cat", "cat pipeline", "local", lambda t: curl_argv(t, local=True), warm=False,
                  in_process=False, unavailable=missing),
    ]
