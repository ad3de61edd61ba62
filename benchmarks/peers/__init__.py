"""shared-cache against its peers, side by side, in one run::

    .venv/bin/python -m benchmarks.peers [--only W1,W3] [--repeat 3] [--baseline DIR] ...
    .venv/bin/python -m benchmarks.peers --goals-markdown     # the goals, as docs/performance.md shows them

Run from the project's root.  Everything talks to 127.0.0.1 only: the benchmark starts
``tests/origin.py`` as child processes (one at full speed, others throttled per connection)
serving archives it makes deterministically, and stops them by pid when it ends.  Before each
timed cold run it calls ``sync`` (untimed), so that no run pays for the dirty pages of the one
before.  Each workload prints a table (contender, median, ratio to the reference, notes) and the
goals it checked; all results go to ``--json`` (default
``benchmarks/results/peers-<timestamp>.json``).

The modules:

* :mod:`.goals`: the goals, one table for the code and for ``docs/performance.md``;
* :mod:`.contenders`: the commands measured (``sc --use``, ``sharedcache.use()``, pooch,
  cached_path, the curl pipeline, and the baseline's);
* :mod:`.environments`: the peers' virtual environment and the baseline checkout's;
* :mod:`.archives`: the real archives of W9 and W10 (the generated ones of W1-W8 come from
  ``benchmarks/harness.py``, shared with the other benchmarks);
* :mod:`.bench`: one run's state and the measurements the workloads share;
* :mod:`.workloads`: W1 to W11, one module per kind of question;
* :mod:`.report`: rows, checked goals and their rendering.
"""
