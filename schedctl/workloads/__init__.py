"""Workloads that drive an engine: arrival processes, rate schedules, prompt structures, JSONL traces.

Entry points: :func:`make_requests` (a lazy, seeded, arrival-sorted stream of :class:`Request`),
:func:`parse_workload` / :func:`parse_arrival` / :func:`parse_rate` (command-line forms),
:func:`describe_workloads` (``--help`` text), :func:`load_workload_file` (TOML), and
:func:`write_trace` / :func:`read_trace` (JSONL). Depends on nothing else in schedctl but ``files`` and ``tokens``.
"""

from schedctl.workloads.arrivals import (
    ArrivalSpec,
    BurstsRate,
    ConstantRate,
    DiurnalRate,
    RampRate,
    RateSchedule,
    StepsRate,
    arrival_times,
)
from schedctl.workloads.chat import ChatParams
from schedctl.workloads.registry import (
    WORKLOADS,
    WorkloadConfig,
    WorkloadSpec,
    describe_workloads,
    load_workload_file,
    make_requests,
    parse_arrival,
    parse_rate,
    parse_workload,
)
from schedctl.workloads.shared_prefix import GspParams, RasqParams, TreeParams
from schedctl.workloads.sharegpt import ShareGptParams
from schedctl.workloads.trace import TraceLine, read_trace, write_trace
from schedctl.workloads.types import SYNTHETIC_TOKEN_BASE, Request

__all__ = [
    "SYNTHETIC_TOKEN_BASE",
    "WORKLOADS",
    "ArrivalSpec",
    "BurstsRate",
    "ChatParams",
    "ConstantRate",
    "DiurnalRate",
    "GspParams",
    "RampRate",
    "RasqParams",
    "RateSchedule",
    "Request",
    "ShareGptParams",
    "StepsRate",
    "TraceLine",
    "TreeParams",
    "WorkloadConfig",
    "WorkloadSpec",
    "arrival_times",
    "describe_workloads",
    "load_workload_file",
    "make_requests",
    "parse_arrival",
    "parse_rate",
    "parse_workload",
    "read_trace",
    "write_trace",
]
