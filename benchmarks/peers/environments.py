"""The environments the contenders run from besides the project's own: the peers' virtual
environment (``benchmarks/results/peers-venv``, made and filled with pip when missing) and, for
``--baseline DIR``, the virtual environment of another checkout (made by its own
``tools/test.sh --co -q`` when missing)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import harness

from .report import log

PEER_PACKAGES = {"pooch": "pooch", "cached_path": "cached_path"}  # contender key -> pip name


@dataclass
class PeerEnv:
    python: Path
    versions: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def prepare_peers(venv: Path) -> PeerEnv:
    """Create ``venv`` if missing and install each peer into it unless it is importable already."""
    peers = PeerEnv(venv / "bin" / "python")
    if not peers.python.exists():
        made = harness.run([sys.executable, "-m", "venv", str(venv)], timeout=120)
        if not made.ok:
            peers.problems = {key: f"cannot create {venv}: {made.failure()}" for key in PEER_PACKAGES}
            return peers
    for key, package in PEER_PACKAGES.items():
        version = _peer_version(peers.python, key, package)
        if version is None:
            log(f"installing {package} into {venv}")
            installed = harness.run([str(peers.python), "-m", "pip", "install", "-q", package],
                                    timeout=600)
            version = _peer_version(peers.python, key, package)
            if version is None:
                peers.problems[key] = f"pip install {package} failed: {installed.failure()}"
                continue
        peers.versions[package] = version
    return peers


def _peer_version(python: Path, module: str, package: str) -> str | None:
    code = f"import importlib.metadata, {module}; print(importlib.metadata.version({package!r}))"
    found = harness.run([str(python), "-c", code], timeout=60)
    return found.last_line() if found.ok else None


def prepare_baseline(checkout: Path) -> str:
    """Make sure ``checkout/.venv`` holds that checkout's package: "" when it does, else why not."""
    if not (checkout / "tools" / "test.sh").exists():
        return f"{checkout} is not a checkout of the project (no tools/test.sh)"
    if not (checkout / ".venv" / "bin" / "sc").exists():
        log(f"creating {checkout / '.venv'} (tools/test.sh --co -q)")
        made = harness.run(["./tools/test.sh", "--co", "-q"], timeout=900, cwd=checkout)
        if not (checkout / ".venv" / "bin" / "sc").exists():
            return f"cannot create {checkout / '.venv'}: {made.failure()}"
    described = harness.run(["git", "-C", str(checkout), "describe", "--always", "--dirty"],
                            timeout=30)
    log(f"baseline: {checkout} at {described.last_line() or 'unknown commit'}")
    return ""
