"""``python -m sharedcache``: the ``sc`` command, started as ``bin/sc`` starts it (which says why
the garbage collector is off while it imports)."""

import gc

gc.disable()
try:
    from . import _start_command

    _start_command()  # (before the command's modules: see why there)
    from .cli import leave, main  # imported with the collector off

    gc.freeze()
    gc.enable()
    status = main()
# Ctrl-C while the modules load, or as main() is entered (before its own try): said as at any
# later moment.
except KeyboardInterrupt:
    from . import _say

    _say("sc: interrupted")
    raise SystemExit(130) from None
leave(status)
