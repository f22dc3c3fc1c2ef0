"""What every command shares: error reporting, options for hardware and engine, output helpers."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schedctl.bench.scenarios import default_scenarios_path, load_scenarios
from schedctl.files import InputFileError, validation_message
from schedctl.policies.spec import PolicySpec, parse_policy, split_policies
from schedctl.settings import Settings
from schedctl.sim.engine import EngineConfig, sglang_engine_config
from schedctl.sim.profiles import known_gpus, known_models, load_gpu, load_model
from schedctl.sim.run import Hardware
from schedctl.sim.step_time import StepTimeProfile

err_console = Console(stderr=True, soft_wrap=True)


class UsageError(Exception):
    """A bad command-line value; the message is the one line to show."""


def report_error(message: str) -> None:
    """One line on stderr; the message is printed literally (no rich markup: '[profile]' stays as written)."""
    err_console.print("[bold red]error:[/] " + escape(message), highlight=False)


def fail_cleanly(app: Callable[..., Any]) -> int:
    """Run the typer app; bad input becomes one line on stderr and exit code 2, never a traceback.

    The line is ``error: WHERE: WHAT``: WHERE is the file and field, the option, or the command a usage mistake
    was made in. A group called with nothing (``schedctl``, ``schedctl bench``) prints its help and exits 0.
    """
    try:
        result = app(standalone_mode=False)
    except (InputFileError, UsageError) as exc:
        report_error(str(exc))
        return 2
    except ValidationError as exc:
        field, reason = validation_message(exc)
        report_error(f"{field}: {reason}")
        return 2
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        return int(code if code is not None else getattr(exc, "code", 0) or 0)
    except typer.Abort:
        err_console.print("aborted")
        return 1
    except typer.TyperException as exc:  # typer's bundled click: usage errors, missing or unknown options
        return _click_error(exc)
    return result if isinstance(result, int) else 0  # a command's `raise typer.Exit(code)` arrives as its return


def _click_error(exc: Exception) -> int:
    """A click usage error as one line naming the command; a group called bare prints its help instead."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        sys.stdout.write(ctx.get_help() + "\n")
        return 0
    format_message = getattr(exc, "format_message", None)
    what = " ".join((format_message() if format_message else str(exc)).split())
    where = ctx.command_path if ctx is not None else "schedctl"
    hint = f" (see {where} --help)" if ctx is not None else ""
    report_error(f"{where}: {what}{hint}")
    code = getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 2


def output_file(value: Path | None) -> Path | None:
    """Typer callback of an option naming a file to write: refuse, before any work, a path that cannot be one."""
    if value is None:
        return None
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; give a file name")
    ancestor = value.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise typer.BadParameter(f"{ancestor} is a file, so {value} cannot be written")
    try:
        value.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"cannot create the folder {value.parent} ({exc.strerror or exc})") from None
    if not os.access(value.parent, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"cannot write in {value.parent} (permission denied)")
    return value


def wrote(path: Path, what: str, as_json: bool = False) -> None:
    """Say where a file went: on stdout, or on stderr when stdout carries JSON."""
    print(f"wrote {what}: {path}", file=sys.stderr if as_json else sys.stdout, flush=True)


def parse_or_usage(parse: Callable[[str], Any], text: str, what: str) -> Any:
    shown = repr(text) if len(text) <= 60 else f"{text[:40]!r}... ({len(text)} characters)"
    try:
        return parse(text)
    except (ValueError, ValidationError) as exc:
        if isinstance(exc, ValidationError):
            field, reason = validation_message(exc)
            raise UsageError(f"{what} {shown}: {field}: {reason}") from None
        raise UsageError(f"{what} {shown}: {exc}") from None


def parse_policies(text: str) -> list[PolicySpec]:
    """``fcfs,klpm:4,slai:theta_low=5,token_budget=256``: policies whose knobs are comma-separated too."""
    return [parse_or_usage(parse_policy, p, "--policies") for p in split_policies(text)]


def hardware(gpu: str, model: str, step_profile: Path | None, kv_capacity_tokens: int | None) -> Hardware:
    if gpu not in known_gpus():
        raise UsageError(f"--gpu {gpu!r}: unknown GPU (known: {', '.join(known_gpus())})")
    if model not in known_models():
        raise UsageError(f"--model {model!r}: unknown model (known: {', '.join(known_models())})")
    profile = None
    if step_profile is not None:
        from schedctl.files import load_toml_model

        profile = load_toml_model(StepTimeProfile, step_profile, table="step_time")
    return Hardware(gpu=load_gpu(gpu), model=load_model(model), step_profile=profile,
                    kv_capacity_tokens=kv_capacity_tokens)


def check_sim_settings(settings: Settings, config: Path | None) -> None:
    """The embedded engine's names in a settings file (GPU, model, scenario) exist; an error blames that file's
    field, not a command-line option or the catalog it was looked up in."""
    sim, where = settings.engine.sim, config or "(defaults)"
    for field, value, known in (("gpu", sim.gpu, known_gpus()), ("model", sim.model, known_models())):
        if value not in known:
            raise InputFileError(where, f"engine.sim.{field}", f"unknown {field} {value!r} (known: {', '.join(known)})")
    catalog = sim.scenarios_file or default_scenarios_path()
    names = load_scenarios(catalog)
    if sim.scenario not in names:
        raise InputFileError(where, "engine.sim.scenario", f"no such scenario {sim.scenario!r} in {catalog} "
                             f"(known: {', '.join(names)})")


def engine_config(chunked_prefill_tokens: int, max_running_requests: int,
                  sglang_scheduler: bool = False) -> EngineConfig:
    if sglang_scheduler:
        return sglang_engine_config(chunked_prefill_tokens=chunked_prefill_tokens,
                                    max_running_requests=max_running_requests)
    return EngineConfig(chunked_prefill_tokens=chunked_prefill_tokens, max_running_requests=max_running_requests)


def print_json(obj: BaseModel | Sequence[BaseModel]) -> None:
    if isinstance(obj, BaseModel):
        sys.stdout.write(obj.model_dump_json() + "\n")
    else:
        sys.stdout.write(json.dumps([o.model_dump(mode="json") for o in obj]) + "\n")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    t = Table(title=title, header_style="bold")
    for c in columns:
        t.add_column(c, justify="right" if c not in ("policy", "scenario", "workload", "reason") else "left")
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    return t


def fmt(v: object) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


# Shared option declarations (typer reads the defaults and help from these)
GPU = typer.Option("h100-sxm", "--gpu", help="GPU profile (config/gpus.toml)")
MODEL = typer.Option("llama-3.1-8b", "--model", help="model shape (config/models.toml)")
STEP_PROFILE = typer.Option(None, "--step-profile", help="fitted step-time profile TOML (schedctl calibrate)")
KV_TOKENS = typer.Option(None, "--kv-capacity-tokens", help="KV cache size (default: what fits beside weights)")
CHUNK = typer.Option(EngineConfig.model_fields["chunked_prefill_tokens"].default, "--chunked-prefill-tokens",
                     help="token budget of one prefill round")
MAX_RUNNING = typer.Option(EngineConfig.model_fields["max_running_requests"].default, "--max-running-requests",
                           help="cap on running requests")
POLICY_HELP = ("fcfs | lpm | klpm:K | hrrn | spf | lpm-aging:N | sglang:fcfs|lpm|hrrn|spf | sarathi | slai | rad, "
               "with knobs after a colon: slai:theta_low=5,token_budget=256 (see docs in schedctl/policies/spec.py)")
SEED = typer.Option(0, "--seed", help="seed of the workload (same seed, same run)")
JSON = typer.Option(False, "--json", help="print only JSON (for scripts)")
WARMUP = typer.Option(0.0, "--warmup-s", help="leave requests arriving in the first N s out of the summary "
                                             "(as `schedctl load --warmup-s`)")
SGLANG_SCHEDULER = typer.Option(False, "--sglang-scheduler", help="fcfs/lpm as SGLang 0.5.23's own scheduler: LPM off "
                                "above 128 waiting, cold shared prefixes deprioritised, its reserve share "
                                "(docs/fidelity.md); off: the idealised engine")
