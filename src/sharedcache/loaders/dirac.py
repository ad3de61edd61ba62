"""``dirac:LFN``: a file of the DIRAC grid file catalogue, fetched with the DIRAC client.

It runs ``dirac-dms-get-file LFN`` in the work directory, streams the file it writes, and deletes
it; the DIRAC tool does its own retrying.
"""

from __future__ import annotations

import posixpath
import shutil

from ..errors import DownloadError, UsageError
from .local import open_file
from .protocol import Context, Source
from .streams import SourceStream


class DiracSource(Source):
    """``dirac:LFN``: a file of the DIRAC grid file catalogue, fetched with the DIRAC client."""

    argument = "LFN"
    tool = "dirac-dms-get-file"
    network = True

    def __init__(self, name: str, arg: str | None) -> None:
        super().__init__(name, arg)
        if posixpath.basename(self.lfn) in ("", ".", ".."):
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
        result = subprocess.run([tool, self.lfn], cwd=ctx.work, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, errors="replace")
        if result.returncode != 0:
            target.unlink(missing_ok=True)
            lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
            why = lines[-1].strip() if lines else f"exit status {result.returncode}"
            raise DownloadError(f"{self.tool} failed for {self.lfn}: {why}")
        if not target.is_file():
            raise DownloadError(f"{self.tool} did not write {self.filename()} for {self.lfn}")
        return open_file(str(target), self.word, remove=True)
