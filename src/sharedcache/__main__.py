"""``python -m sharedcache``: the ``sc`` command, started as ``bin/sc`` starts it (which says why
the garbage collector is off while it imports)."""

import gc

gc.disable()
try:
    from .cli import leave, main  # imported with the collector off
except KeyboardInterrupt:  # Ctrl-C while the modules load: said as at any later moment
    import sys

    if sys.stderr is not None:  # None: started with descriptor 2 closed
        sys.stderr.write("sc: interrupted\n")
    raise SystemExit(130) from None

gc.freeze()
gc.enable()
leave(main())
