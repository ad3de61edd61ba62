"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fscache_worker import Children
from origin import Origin
from scutil import mounted_image, needs_delayed_allocation

# --- Loader tests: the loopback HTTP origin --------------------------------------------------------


@pytest.fixture
def origin() -> Iterator[Origin]:
    """A loopback HTTP origin (tests/origin.py) serving what the test adds to it; stopped at the end."""
    server = Origin().start()
    try:
        yield server
    finally:
        server.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def server_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server's TLS context for 127.0.0.1, whose certificate a test CA signed; and the CA's file."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (tools/test.sh installs it when run as root)")
    pki = tmp_path / "pki"
    pki.mkdir()
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sc test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=pki)
    _openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=pki)
    (pki / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext", cwd=pki)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    return context, pki / "ca.pem"


@pytest.fixture
def tls_origin(server_tls: tuple[ssl.SSLContext, Path]) -> Iterator[tuple[Origin, Path]]:
    """An HTTPS origin on 127.0.0.1 whose certificate a test CA signed; and the CA's file."""
    context, ca = server_tls
    server = Origin()
    server._server.socket = context.wrap_socket(server._server.socket, server_side=True)
    server.start()
    try:
        yield server, ca
    finally:
        server.stop()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """An empty base directory for repositories."""
    path = tmp_path / "base"
    path.mkdir()
    return path


# --- Engine tests: child processes and a cache directory ------------------------------------------


@pytest.fixture
def children() -> Iterator[Children]:
    """Child processes for a test, each SIGKILLed by its PID when the test ends."""
    kids = Children()
    try:
        yield kids
    finally:
        kids.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where a test's cache lives (not created: the engine creates it)."""
    return tmp_path / "cache"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh ext4 file system of the test's own, which delays allocation: what is not flushed
    can be seen (:func:`scutil.pending`), and the ``syncfs`` of another test's commit, which
    flushes the file system ``tmp_path`` shares with the suite, does not reach it; skipped, saying
    why, where it cannot be mounted (not root, no loop device)."""
    with mounted_image(tmp_path / "disk", "ext4", 64) as mount:
        needs_delayed_allocation(mount)
        yield mount


# --- Tests with other users: a directory they can reach ------------------------------------------


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A fresh directory under /tmp that every user can enter (0755; pytest's own are private),
    removed at the end whoever made what is in it."""
    path = Path(tempfile.mkdtemp(prefix="sc-users-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=60)
