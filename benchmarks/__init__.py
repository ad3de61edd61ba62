"""The project's benchmarks: ``peers`` (a package, ``python -m benchmarks.peers``) and the
scripts ``bench_fscache.py`` and ``bench_connections.py``, which share ``harness.py``."""
