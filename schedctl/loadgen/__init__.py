"""Load for a live engine: replay a workload or a JSONL trace against an HTTP endpoint, open loop, and measure
TTFT and every inter-token gap on the client (`schedctl load`).

Entry points: :func:`run_load` (requests + :class:`LoadConfig` -> :class:`LoadResult`, whose ``summary`` is a
:class:`LoadSummary` with `schedctl simulate`'s field names and whose ``records()`` are the rows of
``--requests-out``), :func:`retime` (when to send each request), :func:`check_url` (the loopback rule).
Depends on ``workloads``, the bottom layer, and ``sim.records`` (the record and summary formats a simulated
run shares).
"""

from schedctl.loadgen.client import RequestResult
from schedctl.loadgen.protocol import Api, RemoteRefused, check_url, is_loopback
from schedctl.loadgen.runner import DEFAULT_URL, LoadConfig, LoadResult, run_load
from schedctl.loadgen.schedule import retime
from schedctl.loadgen.summary import LoadSummary

__all__ = [
    "DEFAULT_URL",
    "Api",
    "LoadConfig",
    "LoadResult",
    "LoadSummary",
    "RemoteRefused",
    "RequestResult",
    "check_url",
    "is_loopback",
    "retime",
    "run_load",
]
