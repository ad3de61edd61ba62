"""Random input, with hypothesis: recipes, command lines, damaged archives and error messages.

The promise checked: whatever a user or a server hands us, the outcome is a result or one of our
errors (a :class:`UsageError` for a malformed recipe or command line, a :class:`LoaderError` for bad
data), never another exception; and the command line answers with status 0, 1 or 2 and at most one
line on stderr, never a traceback.  And whatever URLs an error message names, and however it
quotes or shortens them, what the other members of a group cache read of it shows nothing of a
query.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import io
import lzma
import os
import signal
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sharedcache import cli
from sharedcache.cli import parser
from sharedcache.errors import LoaderError, UsageError, quoted, said_by_server, server_says, shown_to_others
from sharedcache.loaders.pipeline import populate
from sharedcache.loaders.registry import Recipe, parse_recipe
from scutil import deflate64_zip

pytestmark = pytest.mark.timeout(120)

KNOWN = ["http", "file", "dirac", "md5", "sha1", "sha256", "sha512", "tar", "zip", "gunzip", "bunzip2",
         "unxz", "unzstd"]
UNKNOWN = ["", "frob", "HTTP", "tar2", "sha", "file ", "ht tp", "é"]
HEX = ["0" * 32, "a" * 40, "F" * 64, "1" * 128, "abc", "g" * 64, "0" * 63, "0" * 65, "٣" * 32]
URLS = ["http://host/data.tar.gz", "https://h.example:8443/a/b?x=1#y", "http://127.0.0.1:1/x",
        "http://[::1]/x", "ftp://host/x", "http://", "https://:80/", "http://h:99999/x", "http://[::1/x",
        "http://a b/c", "//host/x", "http:///x", "http://h:port/", "http://\uff0fevil/", "http://h/\x00"]
JUNK = ["", " ", "\t", "\n", ":", "::", "/", "..", "~", "-", "--", "\x00", "é", "日本", "\u202e", "\udcff",
        "a" * 300, "-n", "=", "%2e%2e"]

fragments = st.sampled_from(KNOWN + UNKNOWN + HEX + URLS + JUNK) | st.text(max_size=12)


@st.composite
def words(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(KNOWN + UNKNOWN) | st.text(max_size=6))
    if draw(st.booleans()):
        return name
    return name + ":" + "".join(draw(st.lists(fragments, max_size=3)))


def assert_one_line(error: BaseException) -> None:
    assert str(error) and "\n" not in str(error), repr(error)


@settings(max_examples=400, deadline=None)
@given(st.lists(words(), max_size=5) | st.text(max_size=40))
@example(["0\n:"])  # found: a newline in a word made a two-line message
def test_any_recipe_parses_or_is_a_usage_error(recipe: list[str] | str) -> None:
    try:
        parsed = parse_recipe(recipe)
    except UsageError as error:
        assert_one_line(error)
    else:
        assert isinstance(parsed, Recipe) and parsed.words


# --- the command line -----------------------------------------------------------------------------

FLAGS = ["--use", "--unuse", "--location", "use", "unuse", "location", "run", "list", "gc", "-n", "--name",
         "-s", "--size", "--keep", "--max-size", "--pid", "--timeout", "--json", "-q", "-v", "-qv", "-h",
         "--help", "--", "-", "-x", "--nope", "--name=", "--size=1GB", "--pid=1", "-nfoo", "-s10", "-qq"]
VALUES = ["1", "0", "-1", "10GB", "512MiB", "1.5", "nan", "inf", "1e400", "9" * 400, "٣", "1_000", "x",
          "a/b", ".hidden", "", "2147483648"]

argv_items = st.sampled_from(FLAGS + VALUES + KNOWN) | words() | st.sampled_from(JUNK) | st.text(max_size=8)


@settings(max_examples=500, deadline=None)
@given(st.lists(argv_items, max_size=8))
def test_any_command_line_parses_or_is_a_usage_error(argv: list[str]) -> None:
    try:
        parsed = parser.parse(argv)
    except UsageError as error:
        assert_one_line(error)
    else:
        assert isinstance(parsed, parser.Arguments)


# Run in this process, against a fresh base directory: only options that keep it there, and
# commands that do nothing ("run" gets "-- true").  -v is left out: it asks for tracebacks.
MAIN_ACTIONS = ["--use", "--unuse", "--location", "use", "unuse", "location", "list", "gc", "run"]
MAIN_OPTIONS = st.sampled_from([
    ["-n", "repo"], ["-n", ".hidden"], ["-n", "a/b"], ["-n", ""], ["--name=x" * 40], ["-s", "1"],
    ["-s", "10GB"], ["-s", "9" * 400], ["--size", "junk"], ["--max-size", "1"], ["--max-size", "9" * 400],
    ["--keep"], ["--pid", "1"], ["--pid", "-5"], ["--pid", "99999999999"], ["--pid", "x"],
    ["--timeout", "0"], ["--timeout", "nan"], ["-q"], ["--json"], ["--nope"], ["-d"],
])


@st.composite
def main_argv(draw: st.DrawFn) -> list[str]:
    argv = [draw(st.sampled_from(MAIN_ACTIONS))]
    for option in draw(st.lists(MAIN_OPTIONS, max_size=3)):
        argv += option
    argv += draw(st.lists(st.sampled_from(["file:{missing}", "file:{junk}", "file:{empty}", "file:{dir}",
                                           "file:", "tar", "zip", "gunzip", "unzstd", "md5:" + "0" * 32,
                                           "sha256:abc", "http:nope"]) | words(), max_size=3))
    if argv[0] == "run" and draw(st.booleans()):
        argv += ["--", "true"]
    return argv


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=main_argv())
@example(argv=["--use", "--max-size", "9" * 400, "file:{junk}"])  # found: OverflowError in parse_size
@example(argv=["--use", "file:{missing}\udcff"])  # found: a word that is not UTF-8 could not be stored
def test_main_answers_with_a_status_and_one_line(argv: list[str], tmp_path_factory: pytest.TempPathFactory,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path_factory.mktemp("base")
    files = tmp_path_factory.mktemp("files")
    (files / "junk").write_bytes(os.urandom(3000))
    (files / "empty").write_bytes(b"")
    places = {"missing": files / "missing", "junk": files / "junk", "empty": files / "empty", "dir": files}
    argv = [word.format(**places) if word.startswith("file:{") else word for word in argv]
    monkeypatch.setenv("SC_DIRECTORIES", str(base))  # where a "-d" without its value leaves us
    capsys.readouterr()
    interrupts = signal.getsignal(signal.SIGINT)
    status = cli.main([argv[0], "-d", str(base), *argv[1:]])
    # Only sc's own process ignores Ctrl-C once the outcome is decided: this one keeps its handler.
    assert signal.getsignal(signal.SIGINT) is interrupts
    _out, err = capsys.readouterr()
    assert status in (0, 1, 2), (argv, status, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if status:  # an error says so in one line (--location of nothing says nothing)
        assert (err.count("\n") <= 1 and err.startswith("sc: ")) or not err, (argv, err)


# --- damaged archives and compressed streams -------------------------------------------------------


def _tar(compress: Callable[[bytes], bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in (("dir/a.txt", b"alpha\n" * 50), ("dir/b.bin", bytes(range(256)) * 4),
                              ("long/" + "n" * 120, b"long name")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("dir/link")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        archive.addfile(link)
    return compress(buffer.getvalue())


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("dir/a.txt", b"alpha\n" * 50)
        archive.writestr("dir/é.bin", bytes(range(256)) * 4)  # a UTF-8 name: flag bit 11
        for method in (zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
            archive.writestr(f"m{method}", b"beta\n" * 40, compress_type=method)
        info = zipfile.ZipInfo("dir/link")
        info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "a.txt")
    return buffer.getvalue()


SAMPLES = {
    "tar": (_tar(lambda data: data), "tar"),
    "tar.gz": (_tar(gzip.compress), "tar"),
    "tar.zst": (_tar(zstandard.ZstdCompressor(write_checksum=True).compress), "tar"),
    "tar.xz": (_tar(lzma.compress), "tar"),
    "zip": (_zip(), "zip"),
    "gz": (gzip.compress(b"text\n" * 500), "gunzip"),
    "bz2": (bz2.compress(b"text\n" * 500), "bunzip2"),
    "xz": (lzma.compress(b"text\n" * 500), "unxz"),
    "zst": (zstandard.ZstdCompressor().compress(b"text\n" * 500), "unzstd"),
}
if importlib.util.find_spec("inflate64") is not None:  # a dependency where its wheels exist
    SAMPLES["zip deflate64"] = (deflate64_zip({"dir/a.txt": b"alpha\n" * 50, "dir/b.bin": bytes(range(256)) * 40}),
                                "zip")


@st.composite
def damaged(draw: st.DrawFn) -> tuple[bytes, str]:
    data, unpacker = SAMPLES[draw(st.sampled_from(list(SAMPLES)))]
    damaged = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(damaged) - 1))
        action = draw(st.sampled_from(["set", "flip", "cut", "insert"]))
        if action == "set":
            damaged[at] = draw(st.sampled_from([0, 0xFF, ord("0"), ord("7"), ord("/"), ord("."), 0x80]))
        elif action == "flip":
            damaged[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del damaged[at:]
            if not damaged:
                break
        else:
            damaged[at:at] = draw(st.binary(min_size=1, max_size=600))
    return bytes(damaged), unpacker


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every path under ``root`` with its mode and its content (a file's bytes, a link's target)."""
    found: dict[str, tuple[int, bytes | str | None]] = {}
    for directory, names, files, _ in os.fwalk(root):  # never follows links
        for name in names + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            content: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                content = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            found[os.path.relpath(path, root)] = (st.st_mode, content)
    return found


@settings(max_examples=300, deadline=None)
@given(damaged())
def test_damaged_data_is_unpacked_or_refused(sample: tuple[bytes, str]) -> None:
    data, unpacker = sample
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        box, outside = root / "box", root / "outside"
        for directory in (box / "dest", box / "work", outside / "dir"):
            directory.mkdir(parents=True)
        # What a damaged archive's paths and links could reach: files beside the box, named as
        # the samples' members are.
        for name in ("a.txt", "dir/a.txt", "dir/b.bin", "input"):
            (outside / name).write_bytes(b"outside\n")
        (root / "input").write_bytes(data)
        before = _snapshot(root / "outside"), (root / "input").read_bytes()
        try:
            populate(parse_recipe([f"file:{root / 'input'}", unpacker]), box / "dest", work=box / "work",
                     limit=10_000_000)
        except LoaderError as error:
            assert_one_line(error)
        assert (_snapshot(root / "outside"), (root / "input").read_bytes()) == before
        assert sorted(os.listdir(root)) == ["box", "input", "outside"]
        dest = os.path.realpath(box / "dest")
        for directory, names, files, _ in os.fwalk(box / "dest"):
            for name in names + files:  # a link that stays may only lead inside the tree
                path = os.path.join(directory, name)
                assert os.path.realpath(path) == dest or os.path.realpath(path).startswith(dest + os.sep), path


#: What a message's URLs are made of but their queries, which alone hold capital letters (see
#: test_no_query_of_a_url_in_a_message_is_shown_to_the_other_members).
URL_CHARACTERS = "abcxyz019/.-_~%:@'\"\\…"
QUERY_CHARACTERS = "ABCXYZ=&#/:'\"\\…?%"


@st.composite
def message_parts(draw: st.DrawFn) -> str:
    """A piece of an error message: words (with an apostrophe, as "the server's"), a URL with a
    query, outside quotes as a source's URL or a redirect's target is shown (no space in it) or
    quoted, whole or by its two ends, as a Location is (relative, of any scheme, with spaces), or
    what a server said, in an answer's body or in its status line's reason phrase."""
    kind = draw(st.sampled_from(["words", "bare", "quoted", "said", "status"]))
    if kind == "words":
        return draw(st.sampled_from(["cannot download", "the server's answer", "for", "redirected to",
                                     "its Location is", "repository 'data':", "(1,234 characters)"]).map(str.lower))
    if kind in ("said", "status"):
        said = draw(st.text(alphabet=QUERY_CHARACTERS + " ", max_size=300))
        return server_says(said) if kind == "said" else f"{draw(st.integers(100, 599))} ({said_by_server(said)})"
    spaced = kind == "quoted"
    scheme = draw(st.sampled_from(["http://", "https://"] + (["ftp://", "//", "/", ""] if spaced else [])))
    before = draw(st.text(alphabet=URL_CHARACTERS + (" " if spaced else ""), max_size=200))
    query = draw(st.text(alphabet=QUERY_CHARACTERS + (" " if spaced else ""), min_size=1, max_size=200))
    url = f"{scheme}{before}?{query}"
    return quoted(url) if spaced else url


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(message_parts(), st.sampled_from([" ", ", ", ": ", " (", ") "])), min_size=1, max_size=6))
@example([("http://h/it's?SECRET", " ")])  # found: a URL ended at a quote, and its query showed
@example([("'ftp://h/x?SECRET'", " ")])  # found: a quoted URL of another scheme showed its query
def test_no_query_of_a_url_in_a_message_is_shown_to_the_other_members(parts: list[tuple[str, str]]) -> None:
    message = "".join(part + separator for part, separator in parts)
    shown = shown_to_others(message)
    assert not any(char.isupper() for char in shown), (message, shown)
