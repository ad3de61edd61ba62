"""The engine: FsCache, a cache of directories shared by many processes, crash-safe at every step.

* :mod:`~.fscache`: the protocol (store, load, hold, release, eviction, gc), written out step by
  step in its docstring, and :class:`~.fscache.FsCache`, which follows it;
* :mod:`~.layout`: a cache's directory, its format marker, and the checks made on opening it;
* :mod:`~.index`: the SQLite index (accounting, order of eviction, listing), every query a
  named method;
* :mod:`~.leases`: who holds a use (process identity and liveness) and the lease files;
* :mod:`~.locks`: ``flock`` locks that the kernel releases when their holder dies;
* :mod:`~.fsutil`: atomic writes, durable and sealed trees, disk usage, removal.

The engine knows nothing of loaders or repositories; they build on it.
"""
