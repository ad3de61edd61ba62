"""``python -m sharedcache``: the same as the ``sc`` command."""

import sys

from .cli import main

sys.exit(main())
