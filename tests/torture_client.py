"""A client of the crash-torture test: random uses, reads, releases and runs of repositories.

Run as ``python torture_client.py CONFIG_JSON LOG_PATH SEED``.  It loops until the configured
deadline, doing at random: ``sc --use`` then a full verified read then ``sc --unuse``;
``sc run`` of a command that verifies the data; a use left unreleased (its lease dies with this
process); and ``sc`` commands that it SIGKILLs itself after a random delay, so that kills land
inside populations, commits, releases, deletions and evictions.  Each outcome is appended to the
log as one JSON line; a read that sees wrong or incomplete data is logged as ``corrupt``.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scutil import SC, content_for


def verify(path: Path, files: dict[str, int]) -> bool:
    try:
        return all((path / name).read_bytes() == content_for(name, size) for name, size in files.items())
    except OSError:
        return False


def main() -> None:
    config = json.loads(sys.argv[1])
    log = open(sys.argv[2], "a", buffering=1)  # noqa: SIM115 - the log is written until the process dies
    rng = random.Random(int(sys.argv[3]))
    deadline = config["deadline"]
    timeout = config["timeout"]

    def record(**fields: object) -> None:
        log.write(json.dumps(fields) + "\n")

    def sc(*args: str, kill_after: float | None = None) -> tuple[int, str, str, float]:
        start = time.monotonic()
        if args[0] != "gc":  # before any '-- COMMAND'
            args = (args[0], "--timeout", str(timeout), *args[1:])
        proc = subprocess.Popen([*SC, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=kill_after if kill_after is not None else timeout + 30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
            if kill_after is None:
                return -999, out, err, time.monotonic() - start  # hung past its own timeout
        return proc.returncode, out, err, time.monotonic() - start

    while time.time() < deadline:
        repo = rng.choice(config["repos"])
        args = ["-d", config["base"], "-n", repo["name"], *(["--keep", "--max-size", config["max_size"]] if repo["keep"] else []),
                *repo["words"]]
        files = repo["files"]
        op = rng.choices(["use", "run", "leak", "killed"], weights=[5, 2, 1, 3])[0]
        if op == "use":
            status, out, err, took = sc("--use", *args)
            record(op="use", repo=repo["name"], status=status, took=took, err=err.strip())
            if status == 0:
                ok = verify(Path(out.strip()), files)
                record(op="read", repo=repo["name"], status=0 if ok else "corrupt", took=0)
                status, _, err, took = sc("--unuse", *args)
                record(op="unuse", repo=repo["name"], status=status, took=took, err=err.strip())
        elif op == "run":
            check = (f"import os, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from torture_client import verify; "
                     f"from pathlib import Path; sys.exit(0 if verify(Path(os.environ['SC_PATH']), {files!r}) else 3)")
            status, _, err, took = sc("run", *args, "--", sys.executable, "-c", check)
            record(op="run", repo=repo["name"], status="corrupt" if status == 3 else status, took=took,
                   err=err.strip())
        elif op == "leak":
            status, _, err, took = sc("--use", *args)
            record(op="leak", repo=repo["name"], status=status, took=took, err=err.strip())
        else:
            action = rng.choice(["--use", "--unuse", "gc", "run"])
            argv = {"gc": ["gc", "-d", config["base"]],
                    "run": ["run", *args, "--", "sleep", "0.05"]}.get(action, [action, *args])
            status, _, _, took = sc(*argv, kill_after=rng.uniform(0.0, 0.4))
            record(op="killed", repo=repo["name"], action=action, status=status, took=took)


if __name__ == "__main__":
    main()
