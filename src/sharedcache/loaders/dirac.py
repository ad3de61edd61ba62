"""``dirac:LFN``: a file of the DIRAC grid file catalogue, fetched with the DIRAC client.

It runs ``dirac-dms-get-file LFN`` in the work directory, streams the file it writes, and deletes
it; the DIRAC tool does its own retrying.  While it runs, the size of the file it writes is told
each second as progress (``ctx.progress``), so that the waiters see it going.  The tool runs in a
session of its own: past ``ctx.deadline`` (``--timeout``), or when this process is interrupted,
it is killed with all it started, so that none of them goes on writing in the work directory.
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

#: How often the size of the file that the client writes is told as progress.
_PROGRESS_SECONDS = 1.0


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

        tool = shutil.which(self.tool)
        if tool is None:
            raise DownloadError(f"{self.tool} not found on PATH (install the DIRAC client)")
        target = ctx.work / self.filename()
        target.unlink(missing_ok=True)  # left by a process that died while fetching it
        with subprocess.Popen([tool, self.lfn], cwd=ctx.work, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              errors="replace", start_new_session=True) as process:
            try:
                stdout, stderr = self._wait(process, target, ctx)
            except BaseException as exc:
                with contextlib.suppress(ProcessLookupError):  # (all of them ended meanwhile)
                    os.killpg(process.pid, signal.SIGKILL)
                target.unlink(missing_ok=True)
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise WaitTimeoutError(f"{self.tool} gave no file for {self.lfn} in the time left") from None
                raise
        if process.returncode != 0:
            target.unlink(missing_ok=True)
            lines = (stderr.strip() or stdout.strip()).splitlines()
            why = lines[-1].strip() if lines else f"exit status {process.returncode}"
            raise DownloadError(f"{self.tool} failed for {self.lfn}: {why}")
        if not target.is_file():
            raise DownloadError(f"{self.tool} did not write {self.filename()} for {self.lfn}")
        return open_file(str(target), self.word, remove=True)

    @staticmethod
    def _wait(process: subprocess.Popen[str], target: Path, ctx: Context) -> tuple[str, str]:
        """The output of the client, once it has ended; meanwhile, each second, the size of the
        file it writes as progress.  TimeoutExpired past ``ctx.deadline``."""
        import subprocess

        while True:
            left = None if ctx.deadline is None else max(0.0, ctx.deadline - time.monotonic())
            try:
                return process.communicate(timeout=_PROGRESS_SECONDS if left is None else min(left, _PROGRESS_SECONDS))
            except subprocess.TimeoutExpired:
                if left is not None and left <= _PROGRESS_SECONDS:
                    raise
            with contextlib.suppress(OSError):
                ctx.progress(target.stat().st_size, None)
