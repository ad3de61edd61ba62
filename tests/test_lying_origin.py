"""An origin that lies, through the whole pipeline: the data ends up right, or the population fails
with one line and nothing is committed.

The lies (see ``Fault`` in tests/origin.py): a ``Content-Length`` longer than what is sent, a range
request answered with the whole file (200), a range answered with other bytes (and a
``Content-Range`` that says so), and an ``ETag`` that changes between the answer and its resumption.
Each is told to a download with one connection (as the resumption of a dropped transfer) and with
several (as one of the parts), for a raw file, a checked one and an unpacked tarball.

One lie no client can see: a ``Content-Range`` that names the range asked for over other bytes.
Only a checksum in the recipe (or the CRC of a compressed archive) catches it; the tests show that
it does, and that what it catches is never committed.  Simpler cases of the other lies (a raw
download with one connection) are in test_sources.py and test_connections.py.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from origin import Origin
from scutil import control, tarball_bytes, user_dir

import sharedcache
from sharedcache.errors import ChecksumError, LoaderError
from sharedcache import FetchPolicy
from sharedcache.loaders.pipeline import populate as run_recipe
from sharedcache.loaders.registry import parse_recipe

pytestmark = pytest.mark.timeout(60)

DROP = 1_000_000  # where a first answer breaks, so that the rest is asked for with a range

LIES = {
    "Content-Length longer than sent": {"extra_length": 100_000},
    "range answered with 200": {"ignore_range": True},
    "range answered with later bytes": {"range_offset": 12_345},
    "range answered with earlier bytes": {"range_offset": -12_345},
    "ETag changed in a resumption": {"new_etag": True, "ignore_if_range": True},
}


def tarball() -> tuple[bytes, dict[str, bytes]]:
    # Large enough to be fetched in several parts with 4 connections (parts are at least 1 MiB).
    files = {"data/random.bin": os.urandom(5_000_000), "data/text.txt": b"a line of text\n" * 60_000}
    return tarball_bytes(files), files


ARCHIVE, FILES = tarball()
SHA256 = f"sha256:{hashlib.sha256(ARCHIVE).hexdigest()}"
RECIPES = {"raw": [], "checked": [SHA256], "unpacked": [SHA256, "tar"]}


def populate(tmp_path: Path, *words: str, connections: int = 1, retries: int = 3) -> Path:
    """Run the recipe into a fresh dest under tmp_path (work is shared, as in a repository)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    dest = tmp_path / f"dest{len(list(tmp_path.glob('dest*')))}"
    dest.mkdir()
    run_recipe(parse_recipe(words), dest, work=work,
               fetch=FetchPolicy(connections=connections, retries=retries))
    return dest


def tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def expected(recipe: str) -> dict[str, bytes]:
    return FILES if recipe == "unpacked" else {"data.tar.gz": ARCHIVE}


def tell(origin: Origin, lie: dict[str, object], connections: int, *, times: int = 1) -> None:
    """Queue ``lie`` where it is believable: on the answer itself (Content-Length), or on what
    continues it (a resumption after a drop with one connection, a part with several)."""
    for _ in range(times):
        if "extra_length" not in lie:
            origin.fault("/data.tar.gz", **({} if connections > 1 else {"drop_after": DROP}))
        origin.fault("/data.tar.gz", **lie)


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("connections", [1, 4])
@pytest.mark.parametrize("lie", list(LIES))
def test_a_lie_is_seen_and_the_data_is_right(origin: Origin, tmp_path: Path, lie: str, connections: int,
                                             recipe: str) -> None:
    url = origin.add("/data.tar.gz", ARCHIVE)
    tell(origin, LIES[lie], connections)
    dest = populate(tmp_path, f"http:{url}", *RECIPES[recipe], connections=connections)
    assert tree(dest) == expected(recipe)
    assert origin.stats("/data.tar.gz").gets >= 2  # the lie was told
    assert not any((tmp_path / "work").iterdir())


def test_a_resume_that_fails_names_what_broke_the_transfer_off(origin: Origin, tmp_path: Path) -> None:
    # The line named only the refusal of the range, not why a range was asked for: a server that
    # stalls or drops every transfer and answers ranges with the whole file.
    url = origin.add("/data.tar.gz", ARCHIVE)
    origin.fault("/data.tar.gz", drop_after=DROP, ignore_range=True, times=20)
    with pytest.raises(LoaderError) as failed:
        populate(tmp_path, f"http:{url}", SHA256, "tar", retries=1)
    assert re.search(rf"cannot resume {re.escape(url)} at byte {DROP} \(it broke off: .*IncompleteRead.*\): "
                     "the server sent the whole file again", str(failed.value)), failed.value


@pytest.mark.parametrize("connections", [1, 4])
@pytest.mark.parametrize("lie", list(LIES))
def test_a_lie_told_every_time_fails_in_one_line(origin: Origin, tmp_path: Path, lie: str,
                                                 connections: int) -> None:
    url = origin.add("/data.tar.gz", ARCHIVE)
    tell(origin, LIES[lie], connections, times=20)
    try:
        dest = populate(tmp_path, f"http:{url}", SHA256, "tar", connections=connections, retries=1)
    except LoaderError as error:
        assert "\n" not in str(error)
    else:  # with several connections, a part that lies is read again over one connection
        assert connections > 1 and tree(dest) == FILES


def test_a_lie_told_every_time_commits_nothing(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/data.tar.gz", ARCHIVE)
    tell(origin, LIES["ETag changed in a resumption"], 1, times=20)
    assert isinstance(use_or_error(tmp_path, f"http:{url}", SHA256, "tar"), LoaderError)


@pytest.mark.parametrize("connections", [1, 4])
def test_other_bytes_under_the_right_content_range_are_caught_by_the_checksum(
        origin: Origin, tmp_path: Path, connections: int) -> None:
    url = origin.add("/data.tar.gz", ARCHIVE)
    tell(origin, {"range_offset": 12_345, "range_lies": True}, connections)
    outcome = use_or_error(tmp_path, f"http:{url}", SHA256, connections=connections)
    assert isinstance(outcome, ChecksumError), outcome


def test_other_bytes_under_the_right_content_range_break_a_compressed_tarball(origin: Origin,
                                                                              tmp_path: Path) -> None:
    url = origin.add("/data.tar.gz", ARCHIVE)
    tell(origin, {"range_offset": 12_345, "range_lies": True}, 1)
    outcome = use_or_error(tmp_path, f"http:{url}", "tar")  # no checksum: gzip's CRC sees it
    assert isinstance(outcome, LoaderError), outcome


def use_or_error(tmp_path: Path, *words: str, connections: int = 1) -> dict[str, bytes] | LoaderError:
    """Populate a repository through :func:`sharedcache.use`: its tree, or the error, after checking
    that nothing was committed and no staging directory is left."""
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    try:
        with sharedcache.use(*words, name="repo", directories=[base], connections=connections) as path:
            return tree(path)
    except LoaderError as error:
        assert not (user_dir(base) / "repo").exists() and not (user_dir(base) / "repo").is_symlink()
        assert not any((control(base) / "stage").iterdir())
        return error


# --- the resumption of an earlier attempt ---------------------------------------------------------


def failed_attempt(origin: Origin, tmp_path: Path, url: str) -> None:
    """An attempt that gives up midway, leaving its partial download in work (as a killed process
    would): slow enough to checkpoint, then dropped, with no retry."""
    origin.rate = 1_500_000
    origin.fault("/data.tar.gz", drop_after=2_000_000)
    with pytest.raises(LoaderError):
        populate(tmp_path, f"http:{url}", SHA256, retries=0)
    origin.rate = None
    assert (tmp_path / "work" / "partial.data").stat().st_size > 0


@pytest.mark.parametrize("lie", ["range answered with later bytes", "ETag changed in a resumption"])
def test_resumption_of_an_earlier_attempt_meets_a_lie(origin: Origin, tmp_path: Path, lie: str) -> None:
    url = origin.add("/data.tar.gz", ARCHIVE)
    failed_attempt(origin, tmp_path, url)
    origin.fault("/data.tar.gz", **LIES[lie])
    dest = populate(tmp_path, f"http:{url}", SHA256)
    assert (dest / "data.tar.gz").read_bytes() == ARCHIVE
    ranges = origin.stats("/data.tar.gz").ranges
    assert len(ranges) == 1 and ranges[0] != "bytes=0-"  # it tried to resume, and was not fooled


def test_resumption_of_an_earlier_attempt_with_hidden_other_bytes(origin: Origin, tmp_path: Path) -> None:
    url = origin.add("/data.tar.gz", ARCHIVE)
    failed_attempt(origin, tmp_path, url)
    origin.fault("/data.tar.gz", range_offset=12_345, range_lies=True)
    with pytest.raises(ChecksumError):
        populate(tmp_path, f"http:{url}", SHA256)
    assert not any((tmp_path / "work").iterdir())  # the partial is known bad: not kept
    dest = populate(tmp_path, f"http:{url}", SHA256)  # and the next attempt starts afresh
    assert (dest / "data.tar.gz").read_bytes() == ARCHIVE
