"""Parsing recipes, their identity and default name, and loaders registered by other packages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scutil import SRC
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
    (["file:/x", "sha256:abc"], "'sha256:abc': a sha256 digest is 64 hexadecimal digits"),
    (["file:/x", "md5:" + "g" * 32], f"'md5:{'g' * 32}': a md5 digest is 32 hexadecimal digits"),
    (["file:/x", "sha1:" + "a" * 41], "'sha1:" + "a" * 41 + "': a sha1 digest is 40 hexadecimal digits"),
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
