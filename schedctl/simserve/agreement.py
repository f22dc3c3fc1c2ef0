"""Does `schedctl sim serve` serve a trace as `schedctl simulate` does? Send it with the load generator at a time
scale, and compare the client's TTFTs (× the scale: simulated seconds) with the simulator's, request by request.

Two references: the trace as written (what a user compares), and the trace as sent (each request's arrival
the client's actual send time × the scale), which takes the load generator's own send lag out of the comparison
and leaves what the stand-in adds: the HTTP round trip and the pacing of its driver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from schedctl.loadgen.runner import LoadConfig, run_load
from schedctl.loadgen.schedule import retime
from schedctl.policies.spec import PolicySpec
from schedctl.sim.engine import EngineConfig
from schedctl.sim.run import Hardware, simulate
from schedctl.workloads.types import Request

# sim serve takes any id: hash synthetic ids (>= 2**24) into a range so large that no two collide in practice
BIG_VOCAB = 2**31


class TTFTFigures(BaseModel):
    p50_s: float
    p90_s: float
    p99_s: float


class Agreement(BaseModel):
    time_scale: float
    requests: int
    errors: int
    served: TTFTFigures  # the client's TTFT × time scale
    simulated: TTFTFigures  # `simulate` on the trace as written
    simulated_as_sent: TTFTFigures  # `simulate` with each arrival at its actual send time × time scale
    diff_as_sent_p50_s: float  # per request |served - simulated as sent|, its median
    diff_as_sent_p90_s: float
    send_lag_p50_s: float  # the client's send lag (simulated seconds)
    send_lag_max_s: float


def _figures(ttft_s: np.ndarray) -> TTFTFigures:
    p50, p90, p99 = np.quantile(ttft_s, [0.5, 0.9, 0.99]) if ttft_s.size else (np.nan,) * 3
    return TTFTFigures(p50_s=float(p50), p90_s=float(p90), p99_s=float(p99))


def _ttft_by_id(requests: Sequence[Request], policy: PolicySpec, hw: Hardware, cfg: EngineConfig) -> dict[int, float]:
    engine, _summary = simulate(requests, policy, hw, cfg)
    return dict(zip(engine.completed.column("request_id").tolist(), engine.completed.ttft_s().tolist(), strict=True))


def measure(requests: Sequence[Request], url: str, time_scale: float, policy: PolicySpec, hw: Hardware,
            cfg: EngineConfig, request_timeout_s: float = 60.0) -> Agreement:
    """Send ``requests`` (arrival offsets in simulated seconds) to a `sim serve --time-scale time_scale` at
    ``url`` and compare; the replica must run ``policy`` on ``hw`` with ``cfg``, as `simulate` is run here."""
    start = requests[0].arrival_s
    load = run_load(retime(requests, time_scale=1.0 / time_scale),
                    LoadConfig(url=url, vocab_size=BIG_VOCAB, request_timeout_s=request_timeout_s))
    ok = [r for r in load.results if r.status == "ok" and r.ttft_s is not None]
    served = {r.request_id: float(r.ttft_s) * time_scale for r in ok}  # type: ignore[arg-type]
    by_id = {r.request_id: r for r in requests}
    sent = sorted(load.results, key=lambda r: r.send_s)
    as_sent = [dataclasses.replace(by_id[r.request_id], arrival_s=start + r.send_s * time_scale) for r in sent]
    ref = _ttft_by_id(requests, policy, hw, cfg)
    ref_sent = _ttft_by_id(as_sent, policy, hw, cfg)
    ids = sorted(served)
    diff = np.abs(np.array([served[i] - ref_sent[i] for i in ids]))
    lag = np.array([(r.send_s - r.scheduled_s) * time_scale for r in load.results])
    return Agreement(
        time_scale=time_scale, requests=len(requests), errors=len(load.results) - len(ok),
        served=_figures(np.array([served[i] for i in ids])), simulated=_figures(np.array(list(ref.values()))),
        simulated_as_sent=_figures(np.array(list(ref_sent.values()))),
        diff_as_sent_p50_s=float(np.median(diff)) if diff.size else np.nan,
        diff_as_sent_p90_s=float(np.quantile(diff, 0.9)) if diff.size else np.nan,
        send_lag_p50_s=float(np.median(lag)) if lag.size else np.nan,
        send_lag_max_s=float(lag.max()) if lag.size else np.nan,
    )
