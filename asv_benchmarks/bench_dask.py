"""Benchmarks of the Dask path (``banded_mnn._dask``), as ratios measured side
by side in one run.

* ``DaskOverhead``: ``solveh_banded`` at B=2048, M=2304, u=17, float64, in
  chunks of 256 systems (85 MB of band): the Dask path (local threaded
  scheduler over in-memory arrays; a 2-process ``LocalCluster`` holding the
  chunks) against the in-memory call on the same data, as the median of
  per-round time ratios minus one (target: at most 15%);
  ``banded-mnn bench-dask`` prints the same table.
* ``OutOfCore``: ``examples/out_of_core.py`` on 4 GB of band (the example's
  default is twice the RAM): its throughput in GB/s of band over the same
  kernel's in-memory throughput (target: at least 70%), and its peak
  resident memory as a fraction of RAM.

Skipped (``NotImplementedError``, shown as n/a) where the ``dask`` extra is
not installed.
"""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "out_of_core.py"


def _require_dask() -> None:
    if importlib.util.find_spec("distributed") is None:
        raise NotImplementedError("the dask extra is not installed")


class DaskOverhead:
    timeout = 900
    unit = "%"

    def setup_cache(self):
        _require_dask()
        from banded_mnn._bench_dask import bench_dask

        return bench_dask(rounds=5, out=lambda line: None)

    def track_overhead_threaded_scheduler(self, result):
        return 100 * result["overhead_threads"]

    def track_overhead_local_cluster(self, result):
        return 100 * result["overhead_cluster"]

    def track_oversubscribed_over_rule(self, result):
        """Cluster time with all kernel threads in every task over the thread rule's, in %."""
        return 100 * result["oversubscribed_over_rule"]


class OutOfCore:
    timeout = 900
    unit = "%"

    def setup_cache(self):
        _require_dask()
        return runpy.run_path(str(EXAMPLE))["main"](total_gb=4.0)

    def track_throughput_over_in_memory(self, result):
        return 100 * result["throughput_ratio"]

    def track_peak_memory_of_ram(self, result):
        return 100 * result["peak_fraction_of_ram"]
