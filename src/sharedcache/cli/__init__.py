"""The ``sc`` (alias ``shared-cache``) command line.

Turns arguments into calls of :mod:`sharedcache.repository` and outcomes into exit statuses:
0 success, 1 failure, 2 usage error; ``sc run`` exits with its command's status.  Paths are the
only thing printed on stdout by ``--use`` and ``--location``; every message goes to stderr as one
line starting with ``sc:``.  No traceback is shown for an error a user can cause.

* :mod:`~.parser`: the grammar (the options table, the parser, the help text);
* :mod:`~.commands`: the commands, as a table from action to function.
"""

from __future__ import annotations

import sys

from ..errors import SharedCacheError, UsageError
from . import commands
from .parser import help_text, parse

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    try:
        options = parse(argv)
        if options.help:
            print(help_text(), end="")
            return 0
        if options.version:
            from .. import __version__

            print(f"sc (shared-cache) {__version__}")
            if options.verbose > 0:
                from ..loaders.codecs import backends

                for codec, library in backends().items():
                    print(f"{codec}: {library}")
            return 0
        return commands.run(options)
    except UsageError as e:
        print(f"sc: error: {e} (see 'sc --help')", file=sys.stderr)
        return e.exit_status
    except SharedCacheError as e:
        print(f"sc: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("sc: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"sc: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: say so in one line, and show the details on request
        if verbose:
            raise
        print(f"sc: internal error ({type(e).__name__}: {e}); rerun with -v for details",
              file=sys.stderr)
        return 1
