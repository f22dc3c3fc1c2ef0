"""The sidecar's settings: pydantic-settings models read from a TOML file, with SCHEDCTL_* environment overrides.

    settings = load_settings("config/sidecar.sim.toml")
    SCHEDCTL_API__TOKEN=... SCHEDCTL_SERVICE__MODE=advisory schedctl run --config config/sidecar.sglang.toml

Precedence: environment variables (``SCHEDCTL_`` prefix, ``__`` between nested names, JSON for lists and
tables) over the file over the defaults. Every field has its unit in its name. Unknown keys are refused, in the
file and in ``SCHEDCTL_*`` variables that name a field's table. A bad file stops start-up with one line:
``FILE: FIELD: REASON`` (naming the environment variable when the bad value came from one).

The tables of the controller are its Params models themselves (one definition, one default each): ``[objective]``
is ObjectiveParams, ``[tuner]`` KTunerParams (+ the initial policy), ``[guard]`` GuardParams, ``[deadline]``
DeadlineTunerParams (+ the knob); values another table sets (the targets from ``[slo]``) are refused there.

Tables: ``[slo]`` targets, ``[objective]`` how a window becomes a reward, ``[tuner]`` the k arms and the
learner, ``[guard]`` the guard rules, ``[deadline]`` the SLAI DeadlineTuner (only with an slai initial policy),
``[whatif]`` the what-if replay (off by default; controller/whatif.py), ``[sanity]`` the bounds of a plausible
window (controller/sanity.py), ``[reconcile]`` the backoff of refused pushes (controller/reconcile.py),
``[reserve]`` the schedule_conservativeness tuner (off by default; controller/reserve_tuner.py),
``[engine]`` which adapter and its address (``[engine.metrics]``: the engine's /metrics or Prometheus),
``[service]`` tick interval and mode, ``[log]`` the decision log,
``[api]`` the HTTP API. Shipped
examples: ``config/sidecar.sim.toml``, ``config/sidecar.sglang.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from schedctl.controller.core import ControllerParams, DeadlineParams
from schedctl.controller.deadline import DeadlineTunerParams
from schedctl.controller.guard import GuardParams
from schedctl.controller.guard_state import DEFAULT_POLICY
from schedctl.controller.ktuner import KTuner, KTunerParams
from schedctl.controller.objective import ObjectiveParams
from schedctl.controller.reconcile import ReconcileParams
from schedctl.controller.reserve_tuner import ReserveParams
from schedctl.controller.sanity import SanityParams
from schedctl.controller.whatif import WhatIfParams
from schedctl.engine_adapter.sglang.prometheus import selector_problem
from schedctl.files import InputFileError, read_toml, validation_message
from schedctl.policies.spec import PolicySpec, parse_policy
from schedctl.sim.engine import EngineConfig

ENV_PREFIX = "SCHEDCTL_"
_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every number finite


class SLOSettings(BaseModel):
    model_config = _STRICT

    ttft_p99_target_ms: float = Field(2000.0, gt=0, le=3_600_000, description="P99 time to first token to hold")
    tbt_p99_target_ms: float = Field(200.0, gt=0, le=3_600_000,
                                     description="P99 time between tokens (the SLAI DeadlineTuner)")


def _derived(model: BaseModel, fields: dict[str, str]) -> None:
    """Refuse a field another table sets (``fields``: name -> where it is set)."""
    for name, where in fields.items():
        if name in model.model_fields_set:
            raise ValueError(f"{name} comes from {where}: set it there")


class ObjectiveSettings(ObjectiveParams):
    """How a window becomes a reward: ObjectiveParams itself (its defaults); the target comes from [slo]."""

    model_config = _STRICT

    @model_validator(mode="after")
    def _from_slo(self) -> ObjectiveSettings:
        _derived(self, {"ttft_target_s": "slo.ttft_p99_target_ms"})
        return self


class TunerSettings(KTunerParams):
    """The KTuner (KTunerParams itself: arms, learner and its parameters, scales) and the initial policy."""

    model_config = _STRICT

    initial_policy: str = Field(DEFAULT_POLICY, description="the policy pushed at start (its family: k or slai)")

    @field_validator("initial_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        parse_policy(v)
        return v

    @model_validator(mode="after")
    def _learner(self) -> TunerSettings:
        # build the learner once: an unknown name or a bad parameter stops start-up here, naming it
        KTuner(self.params())
        return self

    def params(self) -> KTunerParams:
        return KTunerParams.model_validate(self.model_dump(exclude={"initial_policy"}))


class DeadlineSettings(DeadlineTunerParams):
    """The DeadlineTuner's gains and limits (DeadlineTunerParams itself) and the SLAI knob it moves; its target
    is slo.tbt_p99_target_ms and its first dt service.tick_interval_s."""

    model_config = _STRICT

    knob: Literal["theta", "tbt_slack_s"] = "theta"

    @model_validator(mode="after")
    def _from_elsewhere(self) -> DeadlineSettings:
        _derived(self, {"tbt_p99_target_s": "slo.tbt_p99_target_ms", "nominal_tick_s": "service.tick_interval_s"})
        return self


class SimEngineSettings(BaseModel):
    """The embedded engine: hardware, the scenario it serves, and how fast the demo shows it."""

    model_config = _STRICT

    gpu: str = "h100-sxm"
    model: str = "llama-3.1-8b"
    scenario: str = Field("prefix-shift", description="a scenario name (config/scenarios.toml or scenarios_file)")
    scenarios_file: Path | None = None
    seed: int = Field(0, ge=0, le=2**63 - 1)
    chunked_prefill_tokens: int = Field(EngineConfig.model_fields["chunked_prefill_tokens"].default, ge=1,
                                        le=10_000_000, description="token budget of one prefill round")
    max_running_requests: int = Field(EngineConfig.model_fields["max_running_requests"].default, ge=1, le=10_000_000)
    demo_seconds: float = Field(60.0, ge=0, le=7 * 86400,
                                description="wall seconds the paced demo takes for the whole scenario")


class SGLangEngineSettings(BaseModel):
    model_config = _STRICT

    base_url: str = Field("http://127.0.0.1:30000", description="the SGLang server's HTTP address")
    request_metrics_dir: Path | None = Field(None, description="SGLang's --export-metrics-to-file directory")
    timeout_s: float = Field(2.0, gt=0, le=3600)
    retries: int = Field(2, ge=0, le=100)


class MetricsSourceSettings(BaseModel):
    """Where the SGLang adapter reads its windows: the engine's own /metrics, or the Prometheus that scrapes it
    (engine_adapter/sglang/prometheus.py; the same window, staleness, sanity and fallback rules either way)."""

    model_config = _STRICT

    source: Literal["engine", "prometheus"] = Field("engine", description="engine: scrape engine.sglang.base_url; "
                                                    "prometheus: PromQL over prometheus_url")
    prometheus_url: str = Field("http://127.0.0.1:9090", description="the Prometheus server's HTTP address")
    selector: str = Field("", description='PromQL label matchers of this replica\'s series, e.g. pod="sglang-0"')
    max_scrape_age_s: float = Field(60.0, gt=0, le=86400, description="a last scrape older than this: stale window")

    @model_validator(mode="after")
    def _selector(self) -> MetricsSourceSettings:
        if self.source == "prometheus":
            problem = selector_problem(self.selector)
            if problem is not None:
                raise ValueError(f"selector: {problem}")
        return self


class EngineSettings(BaseModel):
    model_config = _STRICT

    adapter: Literal["sim", "sglang"] = "sim"
    sim: SimEngineSettings = Field(default_factory=SimEngineSettings)
    sglang: SGLangEngineSettings = Field(default_factory=SGLangEngineSettings)
    metrics: MetricsSourceSettings = Field(default_factory=MetricsSourceSettings)


class ServiceSettings(BaseModel):
    model_config = _STRICT

    tick_interval_s: float = Field(10.0, gt=0, le=86400, description="seconds of engine time per tick")
    mode: Literal["advisory", "active"] = Field("active", description="advisory: decide and log, push nothing")
    keep_decisions: int = Field(1000, ge=1, le=10_000_000, description="decisions /decisions can return")


class LogSettings(BaseModel):
    model_config = _STRICT

    path: Path = Field(Path("schedctl-decisions.jsonl"), description="decision log (JSON lines)")
    max_bytes: int = Field(10_000_000, ge=0, le=2**40, description="rotate when the log reaches this size (0: never)")
    backup_count: int = Field(5, ge=0, le=1000, description="rotated files kept")
    fsync: bool = Field(True, description="fsync every line (off only for benchmarks)")


class ApiSettings(BaseModel):
    model_config = _STRICT

    enabled: bool = True
    host: str = Field("127.0.0.1", description="bind address (loopback by default)")
    port: int = Field(8787, ge=0, le=65535, description="0: any free port")
    token: str = Field("", description="bearer token for POST /pin, /unpin, /mode; empty: writes refused")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True)

    slo: SLOSettings = Field(default_factory=SLOSettings)
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    tuner: TunerSettings = Field(default_factory=TunerSettings)
    guard: GuardParams = Field(default_factory=GuardParams)
    deadline: DeadlineSettings | None = None
    whatif: WhatIfParams = Field(default_factory=WhatIfParams)
    sanity: SanityParams = Field(default_factory=SanityParams)
    reconcile: ReconcileParams = Field(default_factory=ReconcileParams)
    reserve: ReserveParams = Field(default_factory=ReserveParams)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings  # the environment overrides the file (passed as init kwargs)

    @model_validator(mode="after")
    def _controller_fits(self) -> Settings:
        self.controller_params()  # the controller's own checks (families, SLAI needs [deadline]) at load time
        return self

    def controller_params(self) -> ControllerParams:
        deadline = None
        if self.deadline is not None:
            tuner = DeadlineTunerParams.model_validate({
                **self.deadline.model_dump(exclude={"knob"}),
                "tbt_p99_target_s": self.slo.tbt_p99_target_ms / 1000.0, "nominal_tick_s": self.service.tick_interval_s,
            })
            deadline = DeadlineParams(knob=self.deadline.knob, tuner=tuner)
        objective = ObjectiveParams.model_validate({**self.objective.model_dump(),
                                                    "ttft_target_s": self.slo.ttft_p99_target_ms / 1000.0})
        return ControllerParams(
            initial_policy=parse_policy(self.tuner.initial_policy), mode=self.service.mode, objective=objective,
            tuner=self.tuner.params(), guard=self.guard, deadline=deadline, whatif=self.whatif, sanity=self.sanity,
            reconcile=self.reconcile, reserve=self.reserve,
        )

    def initial_policy(self) -> PolicySpec:
        return parse_policy(self.tuner.initial_policy)


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.replace(".", "__").upper()


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Settings from a TOML file (None: defaults) and SCHEDCTL_* overrides; errors name the file and field, or
    the environment variable and the reason."""
    where = Path(path) if path is not None else Path("(defaults)")
    data = read_toml(path) if path is not None else {}
    _check_env_tables()
    try:
        return Settings(**data)
    except ValidationError as exc:
        field, reason = validation_message(exc)
        reason = reason.removeprefix("Value error, ")
        env = _env_name(field.split("[")[0])
        if any(k.upper().startswith(env) for k in os.environ):
            reason += f" (set by ${env})"
        raise InputFileError(where, field, reason) from None
    except SettingsError as exc:  # a SCHEDCTL_* value that is not the JSON its list or table needs
        raise _env_json_error(exc) from None
    except (ValueError, TypeError) as exc:  # a learner refusing its parameters, a bad policy string
        raise InputFileError(where, "(settings)", str(exc)) from None


def _settings_env() -> dict[str, str]:
    return {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}


def _check_env_tables() -> None:
    """A SCHEDCTL_TABLE__FIELD variable must name a table: a misspelt one would otherwise be ignored."""
    tables = list(Settings.model_fields)
    for name in _settings_env():
        table = name.removeprefix(ENV_PREFIX).split("__")[0].lower()
        if "__" in name and table not in tables:
            raise InputFileError(f"${name}", "", f"no settings table {table!r} (tables: {', '.join(tables)})")


def _env_json_error(exc: SettingsError) -> InputFileError:
    import json
    import re

    match = re.search(r'field "(\w+)"', str(exc))
    prefix = _env_name(match.group(1)) if match else ENV_PREFIX
    for name, value in sorted(_settings_env().items()):
        if not name.startswith(prefix):
            continue
        try:
            json.loads(value)
        except json.JSONDecodeError as bad:
            return InputFileError(f"${name}", "", f"not valid JSON ({bad.msg} at column {bad.colno}): lists and "
                                  "tables set from the environment are JSON, e.g. [1, 2, 4] or {\"key\": 1}")
    return InputFileError(f"${prefix}*", "", str(exc))
