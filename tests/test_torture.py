"""Crash torture: random clients use, release and run repositories while being SIGKILLed.

Several client processes (tests/torture_client.py) work on a handful of repositories, some kept
under a small budget so that eviction happens, and kill their own ``sc`` commands at random
moments; the test also kills whole clients (whose leases then die with them) and starts new
ones.  At the end ``sc gc`` runs, and the test checks: every read that succeeded saw complete,
verified data; no operation waited past its timeout; no lease of a dead process survives;
the accounted size equals a fresh scan; nothing is left on disk that belongs to no repository.

It runs for ``SC_TORTURE_SECONDS`` (default 45) seconds; set it to hours for a long run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scutil import control, make_tarball, sample_files, sc

from sharedcache.engine.fscache import FsCache
from sharedcache.engine.fsutil import disk_usage

SECONDS = float(os.environ.get("SC_TORTURE_SECONDS", "45"))
CLIENTS = 5
TIMEOUT = 60


@pytest.mark.timeout(SECONDS + 300)  # the run, then the clients' last operations and gc
def test_crash_torture(tmp_path: Path, origin) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / "base"
    base.mkdir()
    repos = []
    for n in range(4):
        files = sample_files(n=8 + n, size=30_000 + 5_000 * n)
        tarball = tmp_path / f"data{n}.tar.gz"
        md5 = make_tarball(tarball, files)
        source = f"http:{origin.add(f'/data{n}.tar.gz', tarball.read_bytes())}" if n % 2 else f"file:{tarball}"
        repos.append({"name": f"repo{n}", "keep": n >= 2, "words": [source, f"md5:{md5}", "tar"],
                      "files": {name: len(data) for name, data in files.items()}})
    origin.rate = 2_000_000  # populations last long enough to be killed inside
    log = tmp_path / "log.jsonl"
    config = {"base": str(base), "repos": repos, "max_size": "700KB", "timeout": TIMEOUT,
              "deadline": time.time() + SECONDS}
    client = Path(__file__).with_name("torture_client.py")
    rng = random.Random(1234)
    seeds = iter(range(10_000))

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(client), json.dumps(config), str(log), str(next(seeds))],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    clients = [start() for _ in range(CLIENTS)]
    killed_clients = 0
    try:
        while time.time() < config["deadline"]:
            time.sleep(rng.uniform(0.5, 3.0))
            victim = rng.randrange(len(clients))
            if clients[victim].poll() is None and time.time() < config["deadline"] - 2:
                clients[victim].send_signal(signal.SIGKILL)
                clients[victim].wait(10)
                killed_clients += 1
                clients[victim] = start()
        for proc in clients:
            proc.wait(TIMEOUT + 60)
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    gc = sc("gc", "-d", str(base), timeout=120)
    assert gc.returncode == 0, gc.stderr

    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    count = lambda **kw: sum(all(e.get(k) == v for k, v in kw.items()) for e in events)  # noqa: E731
    reads = count(op="read", status=0) + count(op="run", status=0)
    corrupt = count(status="corrupt")
    hung = [e for e in events if e.get("status") == -999 or e.get("took", 0) > TIMEOUT + 10]
    failures = [e for e in events if e["op"] in ("use", "unuse", "run", "leak") and e["status"] not in (0, "corrupt")]
    kills = count(op="killed") + killed_clients

    cache = FsCache(control(base))
    entries = cache.entries()
    objects = {p.name for p in (control(base) / "objects").iterdir()}
    scanned = sum(disk_usage(control(base) / "objects" / name / "data") for name in objects)
    leftovers = (list((control(base) / "stage").iterdir())
                 + list((control(base) / "trash").iterdir())
                 + [p for p in (control(base) / "populate").iterdir() if not p.name.endswith((".lock", ".error"))])
    links = {p.name for p in base.iterdir() if p.is_symlink()}

    print(f"\ntorture: {SECONDS:.0f} s, {len(events)} operations, {kills} kills "
          f"({killed_clients} whole clients), {reads} verified reads, {len(failures)} failed operations, "
          f"{corrupt} corrupt reads, {len(hung)} past their timeout, {len(leftovers)} leftovers, "
          f"{len(entries)} entries kept")
    assert corrupt == 0, [e for e in events if e.get("status") == "corrupt"]
    assert not hung, hung
    assert reads > 10, "the torture did too little to prove anything"
    assert failures == [], "operations that nobody killed failed"
    assert all(not e.users for e in entries), f"a lease of a dead process survived gc: {entries}"
    assert {e.name for e in entries} == objects, "objects/ and the index disagree"
    assert all(e.keep for e in entries), "an unkept repository without users survived gc"
    assert cache.size == scanned == sum(e.size for e in entries)
    assert leftovers == [], leftovers
    assert links <= objects, f"links without repositories: {links - objects}"
