"""The workloads, W1 to W12: each is a function of the run's :class:`..bench.Bench` that measures
and returns a :class:`..report.Workload` (its rows and the goals it checked)."""

from __future__ import annotations

from collections.abc import Callable

from ..bench import Bench
from ..report import Workload
from .cold import w1_cold, w5_memory, w6_disk
from .contention import w2_contention
from .digests import w11_digests
from .link import w8_connections
from .scale import w7_scale
from .unpack import w9_software_tree, w10_small_files, w12_small_files_zip
from .warm import w3_warm_process, w4_warm_in_process

RUNNERS: dict[str, Callable[[Bench], Workload]] = {
    "W1": w1_cold, "W2": w2_contention, "W3": w3_warm_process, "W4": w4_warm_in_process,
    "W5": w5_memory, "W6": w6_disk, "W7": w7_scale, "W8": w8_connections,
    "W9": w9_software_tree, "W10": w10_small_files, "W11": w11_digests, "W12": w12_small_files_zip,
}
