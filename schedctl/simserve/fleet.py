"""A fleet on one machine: N `schedctl sim serve` replicas on 127.0.0.1, SGLang's router (``sglang-router``, its
cache-aware policy) in front, and optionally one schedctl sidecar per replica (`schedctl run` with the SGLang
adapter pointed at it). Every process in its own process group, stopped with ``os.killpg`` (``procs.py``).

The router lives in its own virtual environment (``scripts/setup-router.sh`` → ``.venv-router``; or
``SCHEDCTL_ROUTER_PYTHON``): it is a Rust binary wheel the core never needs. On start it reads each worker's
``/health``, ``/server_info`` and ``/model_info`` (the stand-in answers all three) and tries to load a tokenizer
for the model name; it is started with ``HF_HUB_OFFLINE=1`` so that stays on this machine.

Time: the replicas run ``time_scale`` times faster than the GPUs they stand for and report latencies in their
own (simulated) seconds; a sidecar's tick is wall time, so its window holds ``tick_interval_s × time_scale``
simulated seconds, and the arrival rates it sees are per wall second (its load-bucket thresholds are scaled).
"""

from __future__ import annotations

import os
import time
import tomllib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from pydantic import BaseModel, ConfigDict, Field

from schedctl.sim.profiles import config_dir
from schedctl.simserve.procs import Proc, free_port, schedctl_command, start, start_replica, wait_http

ROUTER_PYTHON_ENV = "SCHEDCTL_ROUTER_PYTHON"


class RouterMissing(RuntimeError):
    """No Python with sglang_router: run scripts/setup-router.sh (or set SCHEDCTL_ROUTER_PYTHON)."""


def router_python(repo_root: Path | None = None) -> str:
    """The interpreter that has ``sglang_router``: $SCHEDCTL_ROUTER_PYTHON, else the repo's .venv-router."""
    env = os.environ.get(ROUTER_PYTHON_ENV)
    if env:
        return env
    root = repo_root or Path(__file__).resolve().parents[2]
    candidate = root / ".venv-router" / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    raise RouterMissing(f"no SGLang router: run scripts/setup-router.sh (creates {candidate}) or set "
                        f"{ROUTER_PYTHON_ENV} to a Python with sglang-router installed")


class FleetConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: int = Field(4, ge=1, le=16)
    time_scale: float = Field(4.0, gt=0)
    gpu: str = "a100-80gb"
    model: str = "llama-3.1-8b"
    replica_policy: str = Field("lpm", description="each replica's own order (the plugin off)")
    sidecars: bool = Field(False, description="one adaptive sidecar per replica")
    initial_policy: str = "klpm:4"
    arms: tuple[int | str, ...] = (1, 2, 4, 8, "inf")
    tick_interval_s: float = Field(0.5, gt=0, description="sidecar tick, wall seconds")
    min_dwell_ticks: int = Field(2, ge=1)
    router_policy: str = "cache_aware"
    start_timeout_s: float = Field(90.0, gt=0)


def sidecar_settings(cfg: FleetConfig, base_url: str, log_path: Path) -> dict[str, Any]:
    """The shipped SGLang sidecar settings (config/sidecar.sglang.toml), pointed at one replica, active."""
    with (config_dir() / "sidecar.sglang.toml").open("rb") as f:
        s = tomllib.load(f)
    s["engine"]["sglang"]["base_url"] = base_url
    s["service"].update(tick_interval_s=cfg.tick_interval_s, mode="active")
    s["tuner"].update(initial_policy=cfg.initial_policy, arms=list(cfg.arms))
    bucketer = s["tuner"]["learner_params"]["bucketer"]
    bucketer["rate_thresholds_rps"] = [r * cfg.time_scale for r in bucketer["rate_thresholds_rps"]]  # per wall s
    bucketer["backlog_thresholds_s"] = [b / cfg.time_scale for b in bucketer.get("backlog_thresholds_s", [])]
    s["guard"].update(min_dwell_ticks=cfg.min_dwell_ticks, safe_policy=cfg.initial_policy)
    s["log"].update(path=str(log_path), fsync=False)
    s["api"]["enabled"] = False
    return s


class Fleet:
    """Bring the testbed up (``with Fleet(cfg, log_dir) as fleet:``), and down, whatever happens in between."""

    def __init__(self, cfg: FleetConfig, log_dir: Path) -> None:
        self.cfg = cfg
        self.log_dir = log_dir
        self.replicas: list[Proc] = []
        self.sidecars: list[Proc] = []
        self.router: Proc | None = None
        self.start_s: dict[str, float] = {}  # part -> seconds until it answered
        self._stack = ExitStack()

    @property
    def url(self) -> str:
        assert self.router is not None and self.router.url is not None
        return self.router.url

    def __enter__(self) -> Fleet:
        try:
            self._up()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _up(self) -> None:
        cfg, t0 = self.cfg, time.monotonic()
        args = ["--gpu", cfg.gpu, "--model", cfg.model, "--policy", cfg.replica_policy, "--time-scale",
                f"{cfg.time_scale:g}"]
        for i in range(cfg.replicas):  # started together, then waited for
            port = free_port()
            proc = start(f"replica-{i}", [*schedctl_command(), "sim", "serve", "--port", str(port), *args],
                         self.log_dir)
            proc.url = f"http://127.0.0.1:{port}"
            self._stack.callback(proc.stop)
            self.replicas.append(proc)
        for proc in self.replicas:
            wait_http(proc, f"{proc.url}/health", cfg.start_timeout_s)
        self.start_s["replicas (all healthy)"] = time.monotonic() - t0
        self.start_s["replica (slowest)"] = max(p.ready_s or 0.0 for p in self.replicas)
        t1 = time.monotonic()
        port = free_port()
        router = start("router", [router_python(), "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
                                  "--port", str(port), "--policy", cfg.router_policy,
                                  "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
                                  "--worker-urls",
                                  *[p.url or "" for p in self.replicas]],
                       self.log_dir, env={"HF_HUB_OFFLINE": "1", "RUST_LOG": "warn"})
        router.url = f"http://127.0.0.1:{port}"
        self._stack.callback(router.stop)
        self.router = router
        self._wait_router_routes(router)
        self.start_s["router"] = time.monotonic() - t1
        if cfg.sidecars:
            t2 = time.monotonic()
            for i, rep in enumerate(self.replicas):
                conf = self.log_dir / f"sidecar-{i}.toml"
                log = self.log_dir / f"decisions-{i}.jsonl"
                conf.write_bytes(tomli_w.dumps(sidecar_settings(cfg, rep.url or "", log)).encode())
                proc = start(f"sidecar-{i}", [*schedctl_command(), "run", "--config", str(conf), "--fresh"],
                             self.log_dir)
                proc.extra["decisions"] = str(log)
                self._stack.callback(proc.stop)
                self.sidecars.append(proc)
            for proc in self.sidecars:
                _wait_first_decision(proc, Path(proc.extra["decisions"]), cfg.start_timeout_s)
            self.start_s["sidecars (first decision, all)"] = time.monotonic() - t2
        self.start_s["testbed"] = time.monotonic() - t0

    def _wait_router_routes(self, router: Proc) -> None:
        """The router answers and has every replica registered (GET /workers lists them)."""
        wait_http(router, f"{router.url}/health", self.cfg.start_timeout_s, ok=(200,))
        deadline = router.started_s + self.cfg.start_timeout_s
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                try:
                    body = client.get(f"{router.url}/workers").text
                    if all((p.url or "") in body for p in self.replicas):
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"router: not every replica registered within {self.cfg.start_timeout_s:g} s:\n"
                           f"{router.log_tail()}")

    def summaries(self) -> list[dict[str, Any]]:
        """Each replica's own figures (``/schedctl_sim/summary``, simulated seconds)."""
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            return [client.get(f"{p.url}/schedctl_sim/summary").json() for p in self.replicas]

    def fleet_ttfts(self) -> list[float]:
        """Every finished request's TTFT on any replica (simulated seconds, as each replica measured it)."""
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            return [t for p in self.replicas for t in client.get(f"{p.url}/schedctl_sim/ttfts").json()["ttft_s"]]

    def server_infos(self) -> list[dict[str, Any]]:
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            return [client.get(f"{p.url}/server_info").json() for p in self.replicas]


def _wait_first_decision(proc: Proc, log: Path, timeout_s: float) -> None:
    deadline = proc.started_s + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
        if log.exists() and log.stat().st_size > 0:
            proc.ready_s = time.monotonic() - proc.started_s
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: no decision within {timeout_s:g} s:\n{proc.log_tail()}")


__all__ = ["Fleet", "FleetConfig", "RouterMissing", "router_python", "sidecar_settings", "start_replica"]
