"""``dirac:LFN``: a file of the DIRAC grid file catalogue, fetched with the DIRAC client.

It runs ``dirac-dms-get-file LFN`` in the work directory, streams the file it writes, and deletes
it; the DIRAC tool does its own retrying.  While it runs, the size of the file it writes is told
each second as progress (``ctx.progress``), so that the waiters see it going.  The tool runs in a
session of its own: past ``ctx.deadline`` (``--timeout``), when this process is interrupted, and
when it has ended (before its file is read), what it started is killed with it, so that none of
them goes on writing in the work directory.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import signal
import time

from ..errors import DownloadError, UsageError, WaitTimeoutError
from .local import open_file
from .protocol import Context, Source
from .streams import SourceStream

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    import subprocess
    from pathlib import Path
    from typing import IO

#: How often the size of the file that the client writes is told as progress.
_PROGRESS_SECONDS = 1.0
#: How often the client is looked at, to see whether it has ended (it is not waited for: see _ended).
_POLL_SECONDS = 0.05
#: How much of the end of its output is read, for the line that says why it failed.
_TAIL_BYTES = 1 << 16


class DiracSource(Source):
    """``dirac:LFN``: a file of the DIRAC grid file catalogue, fetched with the DIRAC client."""

    argument = "LFN"
    tool = "dirac-dms-get-file"
    network = True

    def __init__(self, name: str, arg: str | None) -> None:
        super().__init__(name, arg)
        # A leading "-" would be read by the tool as an option.
        if posixpath.basename(self.lfn) in ("", ".", "..") or self.lfn.startswith("-"):
            raise UsageError(f"'{self.word}': an LFN names a file, such as /vo/data/file.root")

    @property
    def lfn(self) -> str:
        assert self.arg is not None
        return self.arg

    def filename(self) -> str:
        return posixpath.basename(self.lfn)

    def open(self, ctx: Context, start: int = 0, validator: str | None = None) -> SourceStream:
        import subprocess
        import tempfile

        tool = shutil.which(self.tool)
        if tool is None:
            raise DownloadError(f"{self.tool} not found on PATH (install the DIRAC client)")
        target = ctx.work / self.filename()
        target.unlink(missing_ok=True)  # left by a process that died while fetching it
        # Its output goes to files, not pipes: a process it left behind holding them would keep
        # this one waiting after the client has ended (to the deadline, or for good).
        with tempfile.TemporaryFile(dir=ctx.work) as out, tempfile.TemporaryFile(dir=ctx.work) as err:
            process = subprocess.Popen([tool, self.lfn], cwd=ctx.work, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=err, start_new_session=True)
            try:
                self._wait(process, target, ctx)
            except BaseException:
                _stop(process)
                target.unlink(missing_ok=True)
                raise
            _stop(process)
            if process.returncode != 0:
                target.unlink(missing_ok=True)
                lines = (_tail(err) or _tail(out)).splitlines()
                why = lines[-1].strip() if lines else f"exit status {process.returncode}"
                raise DownloadError(f"{self.tool} failed for {self.lfn}: {why}")
        if not target.is_file():
            raise DownloadError(f"{self.tool} did not write {self.filename()} for {self.lfn}")
        return open_file(str(target), self.word, remove=True)

    def _wait(self, process: subprocess.Popen[bytes], target: Path, ctx: Context) -> None:
        """Return once the client has ended, leaving it unreaped (see :func:`_ended`); meanwhile,
        each second, tell the size of the file it writes as progress.  WaitTimeoutError past
        ``ctx.deadline``."""
        told = time.monotonic()
        while not _ended(process.pid):
            now = time.monotonic()
            if ctx.deadline is not None and now >= ctx.deadline:
                raise WaitTimeoutError(f"{self.tool} gave no file for {self.lfn} in the time left")
            if now - told >= _PROGRESS_SECONDS:
                told = now
                with contextlib.suppress(OSError):
                    ctx.progress(target.stat().st_size, None)
            time.sleep(_POLL_SECONDS)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kill the client's process group, and reap the client.  Ended but not reaped yet, the client
    still holds the group's id: what it left behind is killed too, before its file is read, else it
    could go on writing it (or another file in the work directory)."""
    with contextlib.suppress(ProcessLookupError):  # (all of them ended meanwhile)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _ended(pid: int) -> bool:
    """Whether child ``pid`` has ended, without reaping it: until it is reaped, its pid (the id of
    its process group) cannot be given to another process, which a kill of the group could hit.
    With SIGCHLD ignored (inherited, or a program's own setting) the kernel reaps it itself: it is
    then no child of ours any more, and has ended."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _tail(output: IO[bytes]) -> str:
    """The last lines the client wrote to ``output``, stripped."""
    output.seek(max(0, output.seek(0, os.SEEK_END) - _TAIL_BYTES))
    return output.read().decode(errors="replace").strip()
