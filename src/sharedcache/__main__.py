"""``python -m sharedcache``: the ``sc`` command, started as ``bin/sc`` starts it (which says why
the garbage collector is off while it imports)."""

import gc

gc.disable()
from .cli import leave, main  # noqa: E402 - imported with the collector off

gc.freeze()
gc.enable()
leave(main())
