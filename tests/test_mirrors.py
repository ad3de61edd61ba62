"""Mirrors, a checksummed recipe's identity, and site rewrite rules, against real loopback origins
(tests/origin.py): one origin that is down, one that serves other bytes, one that serves the
right ones."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import sharedcache
from origin import Origin
from scutil import (
    SC,
    Sleeper,
    check_tree,
    control,
    interpreter_for,
    kill_populator_and_take_over,
    sample_files,
    sc,
    sc_env,
    tarball_bytes,
    user_dir,
)
from sharedcache.config.settings import FetchPolicy, Rewrite, rewrite_rules, shown_rewrites
from sharedcache.engine.fscache import FsCache
from sharedcache.engine.leases import Owner
from sharedcache.errors import ChecksumError, SettingError, UsageError
from sharedcache.loaders.registry import parse_recipe
from sharedcache.loaders.words import default_name, legacy_default_name, legacy_identity, recipe_identity

FILES = sample_files(n=5, size=10_000)
GOOD = tarball_bytes(FILES)
WRONG = tarball_bytes({"other.txt": b"not the data"})
SHA256 = "sha256:" + hashlib.sha256(GOOD).hexdigest()
# A down mirror costs one refused connection and one quick retry, not the default back-off.
FAST = FetchPolicy(retries=1, backoff=0.01)


class Mirrors:
    """Three origins serving /data.tgz: ``down`` (nothing listens), ``wrong`` (other bytes),
    ``good``."""

    def __init__(self) -> None:
        self.wrong, self.good = Origin().start(), Origin().start()
        down = Origin()
        self.down_url = down.url("/data.tgz")
        down.stop()  # its port now refuses connections
        self.wrong.add("/data.tgz", WRONG)
        self.good.add("/data.tgz", GOOD)

    def stop(self) -> None:
        self.wrong.stop()
        self.good.stop()


@pytest.fixture
def mirrors() -> Iterator[Mirrors]:
    servers = Mirrors()
    try:
        yield servers
    finally:
        servers.stop()


def test_mirrors_are_tried_in_order_until_one_gives_the_checksummed_bytes(mirrors: Mirrors, base: Path) -> None:
    words = (f"http:{mirrors.down_url}", f"http:{mirrors.wrong.url('/data.tgz')}",
             f"http:{mirrors.good.url('/data.tgz')}", SHA256, "tar")
    with sharedcache.use(*words, directories=[base], fetch=FAST) as path:
        check_tree(path, FILES)
        assert not (path / "other.txt").exists()  # the wrong mirror's tree was not kept
    assert mirrors.wrong.stats("/data.tgz").gets == 1
    assert mirrors.good.stats("/data.tgz").gets == 1


def test_a_mismatch_from_every_mirror_commits_nothing_and_names_each_failure(mirrors: Mirrors, base: Path) -> None:
    down, wrong = mirrors.down_url, mirrors.wrong.url("/data.tgz")
    with pytest.raises(ChecksumError) as caught:
        with sharedcache.use(f"http:{down}", f"http:{wrong}", SHA256, "tar", name="data",
                             directories=[base], fetch=FAST):
            pass
    message = str(caught.value)
    assert message.startswith("repository 'data': every source failed: cannot download ")
    assert f"{down}: " in message and f"sha256 mismatch for {wrong}: " in message and "\n" not in message
    assert sc("--location", "-d", str(base), "--name", "data", "http:x").returncode == 1
    assert not (user_dir(base) / "data").exists()
    assert [entry.name for entry in FsCache(control(base)).entries()] == []


# An unpacker of another package that seals what it made (as ctx.seal asks), then leaves the rest
# of the stream to the runner, whose checksum fails this source.
_SEALING_UNPACKER = """
import hashlib, sys
from pathlib import Path
from sharedcache.loaders.pipeline import populate
from sharedcache.loaders.protocol import Unpacker
from sharedcache.loaders.registry import Recipe, parse_recipe

class Sealing(Unpacker):
    def unpack(self, stream, dest, ctx):
        data = stream.read(4)
        (dest / "d" / "e").mkdir(parents=True)
        (dest / "d" / "e" / "f").write_bytes(data)
        for directory in (dest / "d" / "e", dest / "d", dest):
            directory.chmod(0o555)

run = Path(sys.argv[1])
good, bad = run / "good", run / "bad"
good.write_bytes(b"good data" * 1000)
bad.write_bytes(b"bad! data" * 1000)
words = parse_recipe([f"file:{bad}", f"file:{good}", "sha256:" + hashlib.sha256(good.read_bytes()).hexdigest()])
recipe = Recipe(words.words, words.sources, words.transforms, Sealing("sealing", None))
(run / "dest").mkdir()
(run / "work").mkdir()
populate(recipe, run / "dest", work=run / "work")
print((run / "dest" / "d" / "e" / "f").read_bytes().decode())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as a user whom read-only directories stop")
def test_the_next_mirror_starts_afresh_after_a_source_whose_unpacker_sealed_its_tree(reachable_tmp: Path) -> None:
    user = 41020
    interpreter, env = interpreter_for(user, user)
    run = reachable_tmp / "run"
    run.mkdir()
    os.chown(run, user, user)
    result = subprocess.run([interpreter, "-c", _SEALING_UNPACKER, str(run)], capture_output=True, text=True,
                            timeout=60, env=env, user=user, group=user, extra_groups=[])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "good\n"


def test_command_line_mirrors_fail_over_and_a_bad_list_is_one_line(mirrors: Mirrors, base: Path) -> None:
    missing = mirrors.good.url("/missing.tgz")  # a 404 fails at once, without retries
    wrong, good = mirrors.wrong.url("/data.tgz"), mirrors.good.url("/data.tgz")
    with Sleeper() as owner:
        result = sc("--use", "-d", str(base), "--pid", str(owner.pid), f"http:{missing}",
                    f"http:{wrong}", f"http:{good}", SHA256, "tar")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # quiet off a terminal
        check_tree(Path(result.stdout.strip()), FILES)
        told = sc("--use", "-v", "-d", str(base), "--pid", str(owner.pid), "--name", "told", f"http:{missing}",
                  f"http:{good}", SHA256, "tar")
        assert told.returncode == 0, told.stderr
        assert f"sc: HTTP 404 Not Found for {missing}; trying the next source, {good}\n" in told.stderr

    result = sc("--use", "-d", str(base), f"http:{missing}", f"http:{wrong}", SHA256, "tar", "--name", "bad")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sc: error: repository 'bad': every source failed: HTTP 404 Not Found for ")

    result = sc("--use", "-d", str(base), f"http:{missing}", f"http:{good}", "tar")
    assert result.returncode == 2
    assert result.stderr.startswith("sc: error: 'http:") and "several sources need a checksum word" in result.stderr


def test_a_killed_download_is_continued_from_the_mirror_it_came_from(mirrors: Mirrors, base: Path) -> None:
    payload = os.urandom(3_000_000)
    digest = hashlib.sha256(payload).hexdigest()
    first, second = mirrors.good.url("/missing.bin"), mirrors.wrong.add("/blob.bin", payload)
    mirrors.wrong.rate = 1_000_000  # 3 s for the whole file
    with Sleeper() as owner:
        args = ["--use", "-n", "blob", "-d", str(base), "--pid", str(owner.pid), f"http:{first}", f"http:{second}",
                f"sha256:{digest}"]
        status, out, err = kill_populator_and_take_over(
            args, lambda: mirrors.wrong.stats("/blob.bin").bytes_served > 1_000_000)
        assert status == 0, err
        assert (Path(out.strip()) / "missing.bin").read_bytes() == payload  # named after the first source
    stats = mirrors.wrong.stats("/blob.bin")
    assert stats.gets == 2 and stats.ranges and stats.ranges[-1] != "bytes=0-"
    assert stats.bytes_served < 2 * len(payload), "the taker resumed from the second mirror"
    assert mirrors.good.stats("/missing.bin").gets == 1, "only the killed process tried the first mirror"


def test_a_download_failed_by_an_outage_beside_a_mirror_that_is_down_is_gone_on_from(
        mirrors: Mirrors, base: Path, tmp_path: Path) -> None:
    """The first mirror's download is cut, then its outage outlasts the retries, and the second
    mirror is down: what the first one downloaded is kept, and the next use asks it for the rest
    alone (the second mirror's try threw it away, and the next use downloaded it all again)."""
    payload = os.urandom(2_000_000)
    url = mirrors.good.add("/cut.bin", payload)
    mirrors.good.fault("/cut.bin", drop_after=1_500_000)
    mirrors.good.fault("/cut.bin", status=503, times=2)  # every attempt to resume
    config = tmp_path / "config"
    config.write_text("retries = 1\n")
    args = ["--use", "-n", "cut", "-d", str(base), f"http:{url}", f"http:{mirrors.down_url}",
            f"sha256:{hashlib.sha256(payload).hexdigest()}"]
    failed = sc(*args, env=sc_env(SC_CONFIG=str(config)))
    assert failed.returncode == 1 and "every source failed" in failed.stderr and "HTTP 503" in failed.stderr, \
        failed.stderr
    stats = mirrors.good.stats("/cut.bin")
    served, ranges = stats.bytes_served, len(stats.ranges)
    again = sc(*args, env=sc_env(SC_CONFIG=str(config)))
    assert again.returncode == 0, again.stderr
    assert (Path(again.stdout.strip()) / "cut.bin").read_bytes() == payload
    assert stats.bytes_served - served == len(payload) - 1_500_000, "the next use downloaded again what was had"
    assert stats.ranges[ranges:] == ["bytes=1500000-"], stats.ranges


def test_a_checksummed_recipe_is_one_repository_whatever_the_mirrors_or_query_token(base: Path) -> None:
    with Origin() as first, Origin() as second:
        first.add("/data.tgz", GOOD)
        second.add("/data.tgz", GOOD)
        signed = f"http:{first.url('/data.tgz')}?X-Amz-Signature=aaaa&token=1"
        with Sleeper() as owner:
            made = sc("--use", "-d", str(base), "--pid", str(owner.pid), signed, SHA256, "tar")
            assert made.returncode == 0, made.stderr
            again = sc("--use", "-d", str(base), "--pid", str(owner.pid),
                       f"http:{second.url('/data.tgz')}?token=2", signed, SHA256, "tar")
            assert again.returncode == 0, again.stderr
            assert again.stdout == made.stdout
            # A shared --name too: the second recipe is the same repository, not "another recipe".
            named = [sc("--use", "-d", str(base), "--pid", str(owner.pid), "--name", "shared", url, SHA256, "tar")
                     for url in (signed, f"http:{second.url('/data.tgz')}?token=3")]
            assert [result.returncode for result in named] == [0, 0], named[1].stderr
        assert first.stats("/data.tgz").gets == 2  # the default name, then "shared"
        assert second.stats("/data.tgz").gets == 0


def test_identity_rules() -> None:
    digest, other = SHA256, "sha256:" + "0" * 64
    one = recipe_identity(f"http:https://a.example/v1/data.tgz?token=1 {digest} tar")
    assert recipe_identity(f"http:http://mirror.site/x/data.tgz http:https://a.example/v1/data.tgz {digest} tar") == one
    assert recipe_identity(f"file:/srv/data.tgz {digest} tar") == one
    assert default_name(f"http:https://b.example/data.tgz?sig=2 {digest} tar") == default_name(
        f"http:https://a.example/v1/data.tgz {digest} tar")
    # What makes other data or another file is another identity.
    assert recipe_identity(f"http:https://a.example/data.tgz {other} tar") != one
    assert recipe_identity(f"http:https://a.example/data.tgz {digest}") != one
    assert recipe_identity(f"http:https://a.example/renamed.tgz {digest} tar") != one
    # Without a checksum the URL is the data's only name: the query counts.
    assert recipe_identity("http:https://a.example/data.tgz?v=1 tar") != recipe_identity("http:https://a.example/data.tgz?v=2 tar")
    # An old cache's identity (the words) and the new one never collide.
    assert legacy_identity(f"http:https://a.example/data.tgz {digest} tar") != recipe_identity(
        f"http:https://a.example/data.tgz {digest} tar")
    assert legacy_identity("http:https://a.example/data.tgz tar") == recipe_identity("http:https://a.example/data.tgz tar")


def test_user_info_is_no_part_of_an_identity_or_a_name() -> None:
    for tail in ("", f" {SHA256} tar"):
        secret = f"http:https://alice:s3cret@host.example/data.tgz{tail}"
        plain = f"http:https://host.example/data.tgz{tail}"
        assert recipe_identity(secret) == recipe_identity(plain)
        assert default_name(secret) == default_name(plain)
        assert "s3cret" not in recipe_identity(secret) and "alice" not in default_name(secret)
    assert default_name("http:https://alice:s3cret@host.example").startswith("host.example-")
    assert "s3cret" not in repr(parse_recipe(f"http:https://alice:s3cret@host.example/data.tgz {SHA256} tar"))


def test_repositories_of_caches_made_before_the_checksum_identity_are_still_used(base: Path) -> None:
    with Origin() as server:
        server.add("/data.tgz", GOOD)
        words = (f"http:{server.url('/data.tgz')}", SHA256, "tar")
        user_dir(base).mkdir(mode=0o700)  # as sc makes it
        old = FsCache(control(base))
        for name in ("named", legacy_default_name(words)):
            with old.store(name, meta=legacy_identity(words)) as data:
                (data / "old.txt").write_text("made by an earlier version")
        with Sleeper() as owner:
            # A named repository of an old cache is the same recipe: held, not a conflict, no download.
            named = sc("--use", "-d", str(base), "--pid", str(owner.pid), "--name", "named", *words)
            assert named.returncode == 0, named.stderr
            assert (Path(named.stdout.strip()) / "old.txt").exists()
            # A use taken under the old default name is released under it.
            old.hold(legacy_default_name(words), Owner.of(owner.pid))
            released = sc("--unuse", "-d", str(base), "--pid", str(owner.pid), *words)
            assert released.returncode == 0, released.stderr
            assert old.info(legacy_default_name(words)).users == ()
        assert server.stats("/data.tgz").gets == 0


def test_repositories_made_before_paths_and_digests_were_normalised_are_still_used(base: Path,
                                                                                    tmp_path: Path) -> None:
    # The identities that the version before stored for these very recipes: digests as written,
    # file: paths as spelled.  The same recipe, given again, holds them (no conflict, no copy).
    source = tmp_path / "data.txt"
    source.write_bytes(b"data")
    upper = "sha256:" + hashlib.sha256(b"data").hexdigest().upper()
    spelled = f"file:{tmp_path}/./data.txt"
    stored = {"digest": ("checksummed data.txt", upper), "spelled": (spelled,)}
    user_dir(base).mkdir(mode=0o700)  # as sc makes it
    old = FsCache(control(base))
    for name, identity in stored.items():
        with old.store(name, meta="\n".join(identity)) as data:
            (data / "old.txt").write_text("made by an earlier version")
    for name, words in (("digest", (f"file:{source}", upper)), ("spelled", (spelled,))):
        for action in ("--use", "--location"):
            done = sc(action, "-d", str(base), "--name", name, *words)
            assert done.returncode == 0, done.stderr
            assert (Path(done.stdout.strip()) / "old.txt").exists()
    # "~" named another user's file then: never held as this one.
    with old.store("home", meta="file:~/data.txt") as data:
        (data / "old.txt").write_text("someone else's")
    refused = sc("--use", "-d", str(base), "--name", "home", "file:~/data.txt",
                 env={**sc_env(), "HOME": str(tmp_path)})
    assert refused.returncode == 2 and "holds another recipe" in refused.stderr


def test_rewrite_rules_send_a_source_to_the_site_mirrors(mirrors: Mirrors, base: Path) -> None:
    down_prefix = mirrors.down_url.removesuffix("data.tgz")
    rules = rewrite_rules(f"# the site's mirrors\n{down_prefix} = {mirrors.wrong.url('/')} "
                          f"{mirrors.good.url('/')} ; https://unused.example/ = http://other.example/")
    assert rules[0] == Rewrite(down_prefix, (mirrors.wrong.url("/"), mirrors.good.url("/")))
    words = (f"http:{mirrors.down_url}", SHA256, "tar")
    fetch = FetchPolicy(retries=0, rewrites=rules)
    with sharedcache.use(*words, directories=[base], fetch=fetch) as path:
        check_tree(path, FILES)
        assert path == user_dir(base) / default_name(words)  # rewriting changes where from, not what
    assert mirrors.wrong.stats("/data.tgz").gets == 1 and mirrors.good.stats("/data.tgz").gets == 1


def test_rewrite_rules_keep_credentials_only_for_the_url_as_written() -> None:
    rules = rewrite_rules("https://host.example/ = http://mirror.site/ https://host.example/")
    recipe = parse_recipe(["http:https://u:p%40ss@host.example/d.tgz", SHA256, "tar"], rules)
    assert [source.word for source in recipe.sources] == ["http:http://mirror.site/d.tgz", "http:https://host.example/d.tgz"]
    assert [vars(source).get("login") for source in recipe.sources] == [None, ("u", "p@ss")]
    # So when the URL, or the mirror that stands for it, writes its scheme and host in other cases.
    rules = rewrite_rules("https://host.example/ = http://mirror.site/ HTTPS://Host.Example/")
    recipe = parse_recipe(["http:Https://u:p%40ss@HOST.example/d.tgz", SHA256, "tar"], rules)
    assert [source.word for source in recipe.sources] == ["http:http://mirror.site/d.tgz", "http:Https://HOST.example/d.tgz"]
    assert [vars(source).get("login") for source in recipe.sources] == [None, ("u", "p@ss")]


@pytest.mark.parametrize(("text", "message"), [
    ("https://host/", "rewrite 'https://host/': expected PREFIX = MIRROR [MIRROR...]"),
    ("https://host/ =", "rewrite https://host/: give at least one mirror after '='"),
    (" = http://mirror/", "rewrite needs a URL prefix without spaces, not ''"),
    ("github.com/ = http://mirror/", "rewrite needs a URL prefix without spaces, not 'github.com/'"),
    # A mirror that is no URL was accepted, and a use of a good URL then blamed the user's word.
    ("https://host/ = mirror.site/data/", "rewrite https://host/: the mirror 'mirror.site/data/' is not a URL "
                                          "(SCHEME://HOST...)"),
    ("https://host/ = http:///data/", "rewrite https://host/: the mirror 'http:///data/' is not a URL "
                                      "(SCHEME://HOST...)"),
])
def test_bad_rewrite_rules_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(SettingError) as caught:
        rewrite_rules(text)
    assert str(caught.value) == message
    assert isinstance(caught.value, UsageError)


def test_a_config_file_sets_the_rewrite_rules_and_sc_config_shows_them(mirrors: Mirrors, base: Path,
                                                                        tmp_path: Path) -> None:
    down_prefix = mirrors.down_url.removesuffix("data.tgz")
    config = tmp_path / "site.config"
    config.write_text(f"retries = 0\nrewrite = {down_prefix} = {mirrors.good.url('/')}\n")
    env = {"SC_CONFIG": str(config)}
    shown = sc("config", env=sc_env(**env))
    assert shown.returncode == 0 and f"rewrite = {down_prefix} = {mirrors.good.url('/')}  # {config}:2" in shown.stdout
    with Sleeper() as owner:
        used = sc("--use", "-d", str(base), "--pid", str(owner.pid), f"http:{mirrors.down_url}", SHA256, "tar",
                  env=sc_env(**env))
        assert used.returncode == 0, used.stderr
        check_tree(Path(used.stdout.strip()), FILES)
    assert mirrors.good.stats("/data.tgz").gets == 1
    config.write_text("rewrite = https://host/\n")  # a bad rule: one line naming the file and the key
    for bad in (sc("--use", "-d", str(base), "-n", "another", f"http:{mirrors.down_url}", SHA256, "tar",
                   env=sc_env(**env)),
                sc("config", env=sc_env(**env))):
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1
        assert f"{config}:1" in bad.stderr and "rewrite" in bad.stderr


@pytest.mark.parametrize("mirror", ["https://u:s3cret@m.example:99999/", "https://u:s3cr#et@m.example:8080/"])
def test_a_bad_rewrite_mirror_is_refused_without_its_password(mirror: str) -> None:
    with pytest.raises(SettingError) as caught:
        rewrite_rules(f"https://host/ = {mirror}")
    assert "s3cr" not in str(caught.value)


@pytest.mark.parametrize("password", [";S3CRET-PART", "12;S3CRET-PART", "12;S3CRET=PART", "pa;ss"])
def test_a_mirror_password_holding_a_semicolon_ends_no_rule(password: str) -> None:
    # RFC 3986 allows ";" in user info as it is: the rules were split there, and the password's
    # end, taken for a rule of its own, was quoted whole in the error (every miss, sc config).
    mirror = f"http://mirror-user:{password}@mirror.site/"
    text = f"https://origin.example/ = {mirror} ; https://other.example/ = http://m2.site/"
    first, second = rewrite_rules(text)
    assert (first.prefix, first.mirrors, second.prefix) == ("https://origin.example/", (mirror,), "https://other.example/")
    shown = shown_rewrites(text)
    assert shown == "https://origin.example/ = http://mirror.site/ ; https://other.example/ = http://m2.site/", shown
    # A ";" past a URL's authority still ends its rule: a bad rule after it is said as such.
    with pytest.raises(SettingError, match="not 'github.com/'"):
        rewrite_rules(f"https://origin.example/ = {mirror} ; github.com/ = http://m2.site/")


@pytest.mark.parametrize("mirror", ["http://user:12 S3CRET@mirror.site/", "http://us ERNAME:S3CRET@mirror.site/",
                                    "http://user:S3CRET TAIL@mirror.site/", "http://user:S3CRET  TAIL PART/x@mirror.site/"])
def test_a_rule_whose_password_holds_a_space_is_refused_without_any_of_it(mirror: str, tmp_path: Path) -> None:
    # A space splits the mirror in two words: what followed it was shown as a mirror that is no
    # URL ("the mirror 'ERNAME:S3CRET@mirror.site/' is not a URL"), or the word before it passed
    # for a URL with a port ("http://user:12") and the rest was shown.
    text = f"https://origin.example/ = {mirror} https://origin.example/"
    refusal = ("rewrite https://origin.example/: a user name or password with a space in a URL of the rule "
               "(write the space %20)")
    secrets = ("S3CRET", "ERNAME", "TAIL", "PART")
    with pytest.raises(SettingError) as caught:
        rewrite_rules(text)
    assert not [secret for secret in secrets if secret in str(caught.value)], caught.value
    assert str(caught.value) == refusal
    shown = " ".join(shown_rewrites(text).split())
    assert shown == "https://origin.example/ = http://... " + " ".join(["..."] * (len(mirror.split()) - 1)) \
        + " https://origin.example/"
    config = tmp_path / "site.config"
    config.write_text(f"rewrite = {text}\n")
    with Sleeper() as owner:
        for result in (sc("config", env=sc_env(SC_CONFIG=str(config))),
                       sc("--use", "-d", str(tmp_path / "base"), "--pid", str(owner.pid),
                          "http:https://origin.example/d.tgz", SHA256, "tar", env=sc_env(SC_CONFIG=str(config)))):
            assert (result.returncode, result.stderr) == (2, f"sc: error: {config}:1: {refusal}\n")


def test_a_mirror_written_without_its_scheme_is_refused_as_no_url() -> None:
    # Its "@" was taken for the tail of a password that a space had split: the message spoke of
    # a space in a user name or password that the rule does not have.
    for text in ("https://origin.example/ = mirror@host/x", "https://origin.example = mirror@host/x"):
        with pytest.raises(SettingError, match=r"the mirror '[^']*' is not a URL \(SCHEME://HOST...\)"):
            rewrite_rules(text)


@pytest.mark.parametrize("mirror", ["https://m.example:99999/a@b/", "https://u:s3cret@m.example:99999/a@b/"])
def test_a_bad_rewrite_mirror_with_an_at_sign_in_its_path_shows_its_host_not_its_password(mirror: str) -> None:
    # The user info precedes the host: an "@" of the path is no end of it.
    with pytest.raises(SettingError, match="the mirror 'https://m.example:99999/a@b/' is not a URL"):
        rewrite_rules(f"https://host/ = {mirror}")


@pytest.mark.parametrize(("rule", "url", "fetched"), [
    ("https://github.com = http://u:pw@m.site", "https://github.com/a/d.tgz", "http://m.site/a/d.tgz"),
    ("https://github.com = http://u:pw@m.site", "https://github.com?d=1", "http://m.site/?d=1"),
    ("https://github.com = http://u:pw@m.site", "https://github.com.attacker.example/d.tgz", None),
    ("https://github.com = http://u:pw@m.site", "https://github.company.com/d.tgz", None),
    ("https://github.com = http://u:pw@m.site", "https://github.com:8443/d.tgz", None),
    # A mirror without a path has the path "/": its host was made "m.sited.tgz".
    ("https://github.com/ = http://m.site", "https://github.com/d.tgz", "http://m.site/d.tgz"),
    ("https://h.example/pub = http://m.site/pub", "https://h.example/pub/d.tgz", "http://m.site/pub/d.tgz"),
    ("https://h.example/pub = http://m.site/pub", "https://h.example/pub?d=1", "http://m.site/pub?d=1"),
    ("https://h.example/pub = http://m.site/pub", "https://h.example/public/d.tgz", None),
    ("https://h.example/pub/ = http://m.site/p/", "https://h.example/pub/d.tgz", "http://m.site/p/d.tgz"),
    # The scheme and host in any case name the same host (they were not rewritten); the path is as written.
    ("https://github.com = http://u:pw@m.site", "HTTPS://GitHub.COM/a/D.tgz", "http://m.site/a/D.tgz"),
    ("HTTPS://GitHub.com/Pub = http://m.site/p", "https://github.com/Pub/d.tgz", "http://m.site/p/d.tgz"),
    ("https://github.com/pub = http://m.site/p", "https://github.com/Pub/d.tgz", None),
])
def test_a_rewrite_prefix_matches_whole_segments_of_a_url(rule: str, url: str, fetched: str | None) -> None:
    recipe = parse_recipe([f"http:{url}", SHA256, "tar"], rewrite_rules(rule))
    assert [source.word for source in recipe.sources] == [f"http:{fetched or url}"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare: host names are given in a mount namespace's /etc/hosts")
@pytest.mark.parametrize("host", ["github.com.attacker.example", "github.company.com", "github.com"])
def test_a_rewrite_mirror_password_never_goes_to_a_host_that_a_recipe_url_names(host: str, base: Path,
                                                                                tmp_path: Path) -> None:
    # The rule's prefix and mirror end at their hosts: the rest of a URL that began with the
    # prefix as text was joined to the mirror's host, "mirror.site.attacker.example:PORT" (or
    # "mirror.sitepany.com:PORT", "mirror.site:PORT"), which was sent the mirror's password.
    hosts = tmp_path / "hosts"
    names = (host, "mirror.site", "mirror.site.attacker.example", "mirror.sitepany.com")
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {name}\n" for name in names))
    config = tmp_path / "site.config"
    config.write_text("retries = 0\nrewrite = http://github.com = http://mirror:S3CRET-MIRROR-PW@mirror.site\n")
    with Origin() as other:
        other.add("/data.tgz", GOOD)
        url = f"http://{host}:{other.port}/data.tgz"
        with Sleeper() as owner:
            used = subprocess.run(["unshare", "--mount", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$@"',
                                   "sh", *SC, "--use", "-d", str(base), "--pid", str(owner.pid), f"http:{url}",
                                   SHA256, "tar"], capture_output=True, text=True, timeout=60,
                                  env=sc_env(SC_CONFIG=str(config)))
        assert other.stats("/data.tgz").authorizations == []
    # No rule applies: the URL is fetched as written, from the host it names.
    assert (used.returncode, used.stderr) == (0, ""), used.stderr
    check_tree(Path(used.stdout.strip()), FILES)


def test_a_rewritten_url_off_the_mirror_host_is_refused_and_not_sent_the_mirror_password(base: Path) -> None:
    # A program may set a rule's mirrors as it likes, past the "/" that ends a mirror's host in
    # a rule that was read: the mirror's user info goes to its own host and port or nowhere.
    with Origin() as other:
        other.add("/data.tgz", GOOD)
        rule = Rewrite("http://h.example/", ["http://mirror:S3CRET@127.0.0.1/"])
        rule.mirrors = ("http://mirror:S3CRET@127.0.0.1",)
        words = (f"http:http://h.example/:{other.port}/data.tgz", SHA256, "tar")
        with pytest.raises(SettingError) as caught, \
                sharedcache.use(*words, directories=[base], fetch=FetchPolicy(retries=0, rewrites=[rule])):
            pass
        assert other.stats("/data.tgz").gets == 0
    assert str(caught.value) == (f"rewrite http://h.example/: the mirror 'http://127.0.0.1' followed by the rest of "
                                 f"the URL is 'http://127.0.0.1:{other.port}/data.tgz', on another host than the mirror's")
