"""Parsing recipes, their identity and default name, and loaders registered by other packages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scutil import SRC, interpreter_for
from sharedcache.errors import UsageError
from sharedcache.loaders.http import HttpSource
from sharedcache.loaders.registry import Recipe, parse_recipe
from sharedcache.loaders.transforms import Sha256Check, Untar
from sharedcache.loaders.words import default_name, recipe_identity

pytestmark = pytest.mark.timeout(60)

HEX64 = "ab" * 32
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def test_parse() -> None:
    recipe = parse_recipe(["http:https://host/data.tar.gz", f"sha256:{HEX64.upper()}", "tar"])
    assert isinstance(recipe, Recipe)
    assert recipe.words == ("http:https://host/data.tar.gz", f"sha256:{HEX64.upper()}", "tar")
    assert isinstance(recipe.source, HttpSource) and recipe.source.url == "https://host/data.tar.gz"
    assert isinstance(recipe.transforms[0], Sha256Check) and recipe.transforms[0].digest == HEX64
    assert isinstance(recipe.unpacker, Untar)
    assert parse_recipe("file:/x.gz  gunzip").words == ("file:/x.gz", "gunzip")


@pytest.mark.parametrize("words,message", [
    ([], "empty recipe: give a source such as http:URL, file:PATH or dirac:LFN"),
    (["tar"], "a recipe starts with a source (http:URL, file:PATH, dirac:LFN), not 'tar'"),
    ([f"sha256:{HEX64}", "file:/x"],
     f"a recipe starts with a source (http:URL, file:PATH, dirac:LFN), not 'sha256:{HEX64}'"),
    (["frob:x"], "unknown loader 'frob' (known: "),
    (["file:/x", "untar"], "unknown loader 'untar' (known: "),
    (["http:ftp://host/x"], "'http:ftp://host/x': malformed URL, expected http://HOST/PATH or https://HOST/PATH"),
    (["http:https://"], "'http:https://': malformed URL"),
    (["http:host/x"], "'http:host/x': malformed URL"),
    (["http:http://host:99999/x"], "'http:http://host:99999/x': malformed URL"),
    # One splitting rule everywhere: whitespace separates words, inside a list's items too.
    (["http:http://host/a b"], "unknown loader 'b'"),
    (["http"], "'http': http needs a URL, as in http:URL"),
    (["http:"], "'http:': http needs a URL, as in http:URL"),
    (["file:/x", "sha256:abc"], "'sha256:abc': sha256 digests are 64 hexadecimal digits"),
    (["file:/x", "md5:" + "g" * 32], f"'md5:{'g' * 32}': md5 digests are 32 hexadecimal digits"),
    (["file:/x", "sha1:" + "a" * 41], "'sha1:" + "a" * 41 + "': sha1 digests are 40 hexadecimal digits"),
    (["file:/x", "sha512"], "'sha512': sha512 needs a hex digest, as in sha512:HEX"),
    (["file:/x", "tar", f"sha256:{HEX64}"],
     f"'tar' unpacks, so it must be the last word (found 'sha256:{HEX64}' after it)"),
    (["file:/x", "zip", "tar"], "'zip' unpacks, so it must be the last word (found 'tar' after it)"),
    (["file:/x", "http:http://host/y"],
     "'http:http://host/y': several sources need a checksum word (such as sha256:HEX)"),
    (["file:/x", "gunzip", "http:http://host/y"],
     "'http:http://host/y' is a source: sources come first, before 'gunzip'"),
    (["file:/x", "tar:gz"], "'tar:gz': tar takes no argument"),
    (["dirac:/vo/dir/"], "'dirac:/vo/dir/': an LFN names a file"),
])
def test_usage_errors(words: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_recipe(words)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_identity() -> None:
    assert recipe_identity(["  http:https://h/x ", "", "tar"]) == "http:https://h/x\ntar"
    assert recipe_identity("http:https://h/x   tar") == recipe_identity(["http:https://h/x", "tar"])
    assert recipe_identity(["file:/x", "tar"]) != recipe_identity(["file:/x", "zip"])


def test_default_name() -> None:
    words = ["http:https://host/path/My%20Data.tar.gz?sig=abc#frag", f"sha256:{HEX64}", "tar"]
    name = default_name(words)
    assert re.fullmatch(r"My-Data-[0-9a-f]{10}", name)
    assert default_name(words[:2]) != name  # another stack, another name
    assert default_name([" " + words[0], *words[1:]]) == name
    assert default_name(["file:/data/set.zip", "zip"]).startswith("set-")
    assert default_name(["file:/data/x.tar.zst", "tar"]).startswith("x-")
    assert default_name(["dirac:/vo/run.root"]).startswith("run.root-")
    assert default_name(["http:https://host/"]).startswith("host-")
    assert default_name(["file:/data/...tgz"]).startswith("data-")


@given(st.lists(st.text(), max_size=4))
def test_default_name_is_always_a_safe_name(words: list[str]) -> None:
    assert NAME.fullmatch(default_name(words))


def reference_name(words: list[str]) -> str:
    """A default name as it was made with ``re`` and ``urllib.parse`` (before the warm path was
    kept free of them): names must not change, or a ready repository would be made again."""
    import hashlib
    from urllib.parse import unquote

    from sharedcache.errors import without_user_info
    from sharedcache.loaders.words import _query_shown_identity, normalize_words

    normalized = normalize_words(words)
    argument = without_user_info(normalized[0]).partition(":")[2] if normalized else ""
    path = re.split(r"[?#]", argument, maxsplit=1)[0].rstrip("/")
    stem = re.sub(
        r"(\.(tar|cpio)(\.(gz|bz2|xz|zst|lz|lzma|z))?|\.(tgz|tbz2?|txz|tzst|zip|gz|bz2|xz|zst))+$",
        "", unquote(path.rpartition("/")[2]), flags=re.IGNORECASE,
    )
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).lstrip("._+-")[:117].rstrip("._+-") or "data"
    return f"{stem}-{hashlib.sha256(_query_shown_identity(words).encode()).hexdigest()[:10]}"


#: Pieces of file names: the suffixes a name drops, in odd cases and with the characters outside
#: ASCII that match their letters, percent escapes, and characters a name replaces.
NAME_PIECES = st.sampled_from([".tar", ".TAR", ".cpio", ".Gz", ".gz", ".bz2", ".xz", ".zst", ".lz", ".lzma",
                               ".z", ".Z", ".tgz", ".tbz", ".tbz2", ".txz", ".tzst", ".ZIP", ".zip", ".tar.gz",
                               ".\u0131", ".tz\u017ft", ".z\u0130p", ".", "..", "-", "_", "+", " ", "%20", "%C3%BC", "%",
                               "%zz", "ü", "a", "B", "7", "~", "/", "?q", "#f", "\u212a"])


@given(st.lists(NAME_PIECES | st.text(max_size=3), max_size=12).map("".join),
       st.sampled_from(["http:https://h.example/d/", "file:/d/", "dirac:/vo/"]))
@example("x.tar.Z", "file:/d/")
@example("x.cpio.lzma.gz", "file:/d/")
@example("a.lz", "file:/d/")
@example("\u0130.z\u0130p.tz\u017ft.tbz", "http:https://h.example/d/")
@example("%C3%BC%20.tar.gz?sig=1#f", "http:https://h.example/d/")
def test_default_name_is_the_one_made_before(file_name: str, source: str) -> None:
    if not (source + file_name).isascii():
        try:
            (source + file_name).encode()
        except UnicodeEncodeError:  # refused before any name is made
            return
    words = [source + file_name.replace(" ", "%20"), f"sha256:{HEX64}", "tar"]
    assert default_name(words) == reference_name(words)


def test_identity_and_name_are_cheap() -> None:
    script = textwrap.dedent("""
        import sys
        from sharedcache.loaders.words import default_name, recipe_identity
        default_name(["http:https://h/x.tar.gz", "tar"]), recipe_identity(["http:https://h/x.tar.gz", "tar"])
        heavy = {"urllib3", "importlib.metadata", "zstandard", "tarfile", "zipfile"} & set(sys.modules)
        assert not heavy, heavy
    """)
    env = {**os.environ, "PYTHONPATH": SRC}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30, env=env)


def test_third_party_loader(tmp_path: Path) -> None:
    """A distribution with an entry point in the group adds a word, found like the built-in ones,
    but cannot replace a built-in word."""
    plugin = tmp_path / "plugin"
    dist_info = plugin / "rot13_loader-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: rot13-loader\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[sharedcache.loaders]\nrot13 = rot13_loader:Rot13\nbroken = rot13_loader:Missing\n"
        "sha256 = rot13_loader:Rot13\n")
    (plugin / "rot13_loader.py").write_text(textwrap.dedent('''
        import codecs
        from sharedcache.loaders.protocol import Transform
        from sharedcache.loaders.streams import Layer

        class _Rot13(Layer):
            def read(self, size=-1):
                return codecs.encode(self.below.read(size).decode("latin-1"), "rot13").encode("latin-1")

        class Rot13(Transform):
            def wrap(self, below, ctx):
                return _Rot13(below)

            def rename(self, name):
                return name + ".rot13"
    '''))
    source, dest, work = tmp_path / "in.txt", tmp_path / "dest", tmp_path / "work"
    source.write_text("Hello, World")
    dest.mkdir()
    work.mkdir()
    script = textwrap.dedent(f"""
        from sharedcache.errors import UsageError
        from sharedcache.loaders.pipeline import populate
        from sharedcache.loaders.registry import loader_words, parse_recipe
        populate(parse_recipe(["file:{source}", "rot13"]), {str(dest)!r}, work={str(work)!r})
        check = parse_recipe(["file:/x", "sha256:" + "0" * 64]).transforms[0]
        print(type(check).__module__, type(check).__name__)
        print(sorted(name for name, _ in loader_words()))
        try:
            parse_recipe(["file:/x", "broken"])
        except UsageError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), SRC])})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dest" / "in.txt.rot13").read_text() == "Uryyb, Jbeyq"
    check, words, error = result.stdout.splitlines()
    assert check == "sharedcache.loaders.transforms Sha256Check"
    assert "'rot13'" in words and "'broken'" in words and "'tar'" in words
    assert error.startswith("loader 'broken' (rot13_loader:Missing) cannot be loaded: ")


def test_one_splitting_rule_for_strings_lists_and_the_command_line() -> None:
    words = "http:https://host/data.tgz  sha256:" + "0" * 64 + "\ttar"
    expected = ("http:https://host/data.tgz", "sha256:" + "0" * 64, "tar")
    assert parse_recipe(words).words == expected
    assert parse_recipe(words.split()).words == expected
    assert parse_recipe([" ".join(expected[:2]), expected[2]]).words == expected
    # Checksummed: the file name of the source and the words after it (see loaders.words).
    assert recipe_identity(words) == recipe_identity(list(expected)) == "\n".join(("checksummed data.tgz", *expected[1:]))
    assert default_name(words) == default_name(list(expected))


def test_home_is_expanded_in_a_file_word(monkeypatch: pytest.MonkeyPatch) -> None:
    # "file:~/x" is another file for another $HOME (another user of a group cache): identified as
    # written, one user's file was served for the other's.
    monkeypatch.setenv("HOME", "/home/alice")
    alice = recipe_identity(["file:~/data.txt"])
    monkeypatch.setenv("HOME", "/home/bob")
    assert recipe_identity(["file:~/data.txt"]) == "file:/home/bob/data.txt" != alice
    assert default_name(["file:~/data.txt"]) == default_name(["file:/home/bob/data.txt"])


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run sc as a uid without a user entry")
def test_a_file_word_at_home_without_a_home_is_refused_not_read_from_the_working_directory(
        reachable_tmp: Path) -> None:
    # A uid without a user entry and without an absolute HOME (env -i, a container runtime) has
    # "~" left as it is, or made the relative HOME: "file:~/x" read ./~/x of the working
    # directory, where anyone who may write there (/tmp) chose the data.
    import pwd

    known = {entry.pw_uid for entry in pwd.getpwall()}
    uid = next(uid for uid in range(54321, 64000) if uid not in known)
    interpreter, python_env = interpreter_for(uid, uid)
    shared = reachable_tmp / "shared"
    for planted in ("~/x", "relative/x"):
        (shared / planted).parent.mkdir(parents=True)
        (shared / planted).write_text("planted")
    shared.chmod(0o1777)
    (shared / "base").mkdir()
    os.chown(shared / "base", uid, uid)
    for home in ([], ["HOME=relative"]):
        done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "env", "-i",
                               f"PYTHONPATH={python_env['PYTHONPATH']}", *home, interpreter, "-m", "sharedcache",
                               "--use", "-d", str(shared / "base"), "--pid", "1", "file:~/x"],
                              cwd=shared, capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout, done.stderr) == (
            2, "", "sc: error: cannot expand ~ in 'file:~/x': this user has no home (no HOME that is an absolute "
                   "path, and none in the user database) (see 'sc --help')\n"), home


def test_one_file_written_two_ways_is_one_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    same = {recipe_identity([word, "tar"]) for word in
            ("file:x.tar", "file:./x.tar", f"file:{tmp_path}//x.tar", f"file:{tmp_path}/./x.tar")}
    assert same == {f"file:{tmp_path}/x.tar\ntar"}
    # ".." may cross a link, and a trailing "/" is refused by the kernel on a file: both stay.
    assert recipe_identity(["file:/a/../x.tar"]) == "file:/a/../x.tar"
    assert recipe_identity(["file:/a/x.tar/"]) == "file:/a/x.tar/"


def test_a_digest_in_upper_case_is_the_same_recipe() -> None:
    assert recipe_identity(f"file:/d/x.tgz sha256:{HEX64.upper()} tar") == recipe_identity(f"file:/d/x.tgz sha256:{HEX64} tar")
    assert default_name(f"file:/d/x.tgz sha256:{HEX64.upper()} tar") == default_name(f"file:/d/x.tgz sha256:{HEX64} tar")


@pytest.mark.parametrize("source", ["file:/data", "dirac:/vo/data"])
def test_a_path_keeps_its_question_mark_and_hash_in_a_checksummed_identity(source: str) -> None:
    # They name the file of a recipe without an unpacker: cut at them, "a#1.txt" and "a#2.txt"
    # were one repository, holding whichever file was made first.
    one, two, bare = (recipe_identity([f"{source}/{name}", f"sha256:{HEX64}"]) for name in ("a#1.txt", "a?2.txt", "a"))
    assert len({one, two, bare}) == 3
    assert one.startswith("checksummed a#1.txt\n")


def test_a_plugin_word_with_an_argument_stays_in_a_checksummed_identity() -> None:
    # A plugin's transform may take an argument and rename the file (or change the bytes before
    # the checksum): taken for a mirror, it left the identity, and "rename:b.bin" was served the
    # repository made with "rename:a.bin", or without it.
    with_a, with_b, without = (recipe_identity(["file:/d/x.bin", *middle, f"sha256:{HEX64}"])
                               for middle in (["rename:a.bin"], ["rename:b.bin"], []))
    assert len({with_a, with_b, without}) == 3
    # The built-in sources are still mirrors.
    assert recipe_identity(["http:https://h/x.bin", "file:/m/x.bin", "dirac:/vo/x.bin", f"sha256:{HEX64}"]) == without


def test_a_plugin_that_exits_or_fails_its_check_is_one_usage_error(tmp_path: Path) -> None:
    # A module that calls sys.exit() on import ended `sc --help` (which loads every word) silently
    # with its status; a constructor raising ValueError was an "internal error".
    plugin = tmp_path / "plugin"
    dist_info = plugin / "odd_loaders-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: odd-loaders\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[sharedcache.loaders]\nexiting = odd_exiting:X\npicky = odd_picky:Picky\n")
    (plugin / "odd_exiting.py").write_text("import sys\nsys.exit('odd_exiting needs libfoo')\n")
    (plugin / "odd_picky.py").write_text(textwrap.dedent('''
        from sharedcache.loaders.protocol import Transform

        class Picky(Transform):
            argument = "level"

            def __init__(self, name, arg):
                super().__init__(name, arg)
                int(arg)
    '''))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), SRC])}
    run = [sys.executable, "-m", "sharedcache"]
    shown = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=30, env=env)
    assert shown.returncode == 0 and "unpackers:" in shown.stdout, shown
    for word, message in (("exiting", "sc: error: loader 'exiting' (odd_exiting:X) cannot be loaded: "
                                      "odd_exiting needs libfoo (see 'sc --help')"),
                          ("picky:high", "sc: error: 'picky:high': invalid literal for int() with base 10: "
                                         "'high' (see 'sc --help')")):
        refused = subprocess.run([*run, "--use", "-d", str(tmp_path), "file:/x", word],
                                 capture_output=True, text=True, timeout=30, env=env)
        assert (refused.returncode, refused.stderr) == (2, message + "\n")


def test_a_file_renamed_to_no_name_is_written_under_the_fallback_name(tmp_path: Path) -> None:
    import gzip

    from sharedcache.loaders.pipeline import populate

    (tmp_path / "..gz").write_bytes(gzip.compress(b"data"))
    dest, work = tmp_path / "dest", tmp_path / "work"
    dest.mkdir()
    work.mkdir()
    populate(parse_recipe([f"file:{tmp_path}/..gz", "gunzip"]), dest, work=work)  # "." was refused
    assert [(path.name, path.read_bytes()) for path in dest.iterdir()] == [("download", b"data")]


@pytest.mark.parametrize("one, two", [
    ("http:https://h/d/x", "http:https://h/d/x/"),        # "x/" names its file "download"
    ("http:https://h/d/", "http:https://h/e/"),
    ("http:https://h/d/x.bin?t=1", "http:https://h/d/x.bin#f"),
])
def test_recipes_of_one_checksummed_identity_name_their_file_alike(one: str, two: str) -> None:
    # Without an unpacker the repository holds one file named after the first source: two
    # recipes that share a repository must name that file alike, or one of them is served
    # the other's name ("http://h/d/x/" was one repository with "http://h/d/x").
    first, second = ([source, f"sha256:{HEX64}"] for source in (one, two))
    same_file = parse_recipe(first).source.filename() == parse_recipe(second).source.filename()
    assert same_file or recipe_identity(first) != recipe_identity(second)
