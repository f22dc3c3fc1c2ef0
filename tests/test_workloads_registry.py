"""The registry: determinism, run bounds, command-line strings, --help text and workload files."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from schedctl.files import InputFileError
from schedctl.workloads import (
    WORKLOADS,
    ArrivalSpec,
    BurstsRate,
    ConstantRate,
    DiurnalRate,
    GspParams,
    RampRate,
    StepsRate,
    WorkloadConfig,
    describe_workloads,
    load_workload_file,
    make_requests,
    parse_arrival,
    parse_rate,
    parse_workload,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "workloads"


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_same_seed_same_requests_different_seed_different(name: str) -> None:
    a = list(make_requests(name, 20.0, num_requests=300, seed=7))
    b = list(make_requests(name, 20.0, num_requests=300, seed=7))
    c = list(make_requests(name, 20.0, num_requests=300, seed=8))
    assert len(a) == 300 and a == b
    assert [r.arrival_s for r in a] != [r.arrival_s for r in c]
    assert [r.prompt for r in a] != [r.prompt for r in c]


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_streams_are_prefix_stable_and_sorted(name: str) -> None:
    long = list(make_requests(name, 20.0, "gamma:cv=2", num_requests=400, seed=1))
    short = list(make_requests(name, 20.0, "gamma:cv=2", num_requests=150, seed=1))
    assert short == long[:150]
    assert all(x.arrival_s <= y.arrival_s for x, y in itertools.pairwise(long))
    assert [r.request_id for r in long] == list(range(400))


@pytest.mark.parametrize("name", ["rasq", "gsp", "tree", "sharegpt"])
def test_prompts_do_not_depend_on_the_arrivals(name: str) -> None:
    slow = list(make_requests(name, 1.0, "regular", num_requests=100, seed=3))
    fast = list(make_requests(name, "steps:0=5,10=50", "gamma:cv=3", num_requests=100, seed=3))
    assert [r.prompt for r in slow] == [r.prompt for r in fast]
    assert [r.arrival_s for r in slow] != [r.arrival_s for r in fast]


def test_duration_bound_and_both_bounds() -> None:
    reqs = list(make_requests("gsp", 50.0, duration_s=20.0, seed=0))
    assert reqs and all(r.arrival_s < 20.0 for r in reqs) and reqs[-1].arrival_s > 19.0
    assert len(list(make_requests("gsp", 50.0, num_requests=10, duration_s=20.0))) == 10
    assert len(list(make_requests("gsp", 50.0, num_requests=10_000, duration_s=2.0))) < 200
    with pytest.raises(ValueError, match="bound the run"):
        make_requests("gsp", 50.0)
    with pytest.raises(ValueError, match="duration_s"):
        make_requests("gsp", 50.0, duration_s=0.0)


def test_parse_workload_forms() -> None:
    assert parse_workload("gsp") == GspParams()
    spec = parse_workload(" gsp : num_groups=32, question_len=64 ,ordered=true")
    assert spec == GspParams(num_groups=32, question_len=64, ordered=True)
    zipf = parse_workload("gsp:group_distribution=zipf,zipf_alpha=1.1")
    assert isinstance(zipf, GspParams) and zipf.zipf_alpha == 1.1
    sg = parse_workload("sharegpt:strict_fraction=none,max_context_len=2048")
    assert sg.name == "sharegpt" and sg.strict_fraction is None and sg.max_context_len == 2048
    for name in WORKLOADS:
        assert parse_workload(name).name == name


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("gps", ["unknown workload 'gps'", "gsp", "rasq", "chat"]),
        ("gsp:num_grops=3", ["workload 'gsp'", "unknown field 'num_grops'", "num_groups"]),
        ("gsp:num_groups=abc", ["workload 'gsp'", "field 'num_groups'", "integer", "'abc'"]),
        ("gsp:num_groups=0", ["workload 'gsp'", "field 'num_groups'", "greater than or equal to 1"]),
        ("gsp:num_groups", ["workload 'gsp'", "'num_groups' is not FIELD=VALUE"]),
        ("gsp:num_groups=2,num_groups=3", ["workload 'gsp'", "'num_groups' given twice"]),
        ("gsp:group_distribution=zipf", ["workload 'gsp'", "zipf_alpha"]),
        ("tree:popularity_alpha=-1", ["workload 'tree'", "field 'popularity_alpha'"]),
        ("sharegpt:strict_fraction=1.5", ["workload 'sharegpt'", "field 'strict_fraction'", "less than"]),
        ("chat:min_think_time_s=30", ["workload 'chat'", "min_think_time_s exceeds"]),
        ("rasq:shuffle=random", ["workload 'rasq'", "field 'shuffle'", "'queries' or 'groups'"]),
    ],
)
def test_bad_workload_strings_name_workload_field_and_reason(text: str, needles: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        parse_workload(text)
    for needle in needles:
        assert needle in str(err.value)


def test_parse_arrival() -> None:
    assert parse_arrival("poisson") == ArrivalSpec()
    assert parse_arrival("gamma:cv=2") == ArrivalSpec(process="gamma", cv=2.0)
    assert parse_arrival("regular").process == "regular"
    with pytest.raises(ValueError, match="unknown arrival process 'weibull'"):
        parse_arrival("weibull")
    with pytest.raises(ValueError, match=r"arrival process 'poisson'.*only to process='gamma'"):
        parse_arrival("poisson:cv=2")
    with pytest.raises(ValueError, match="arrival process 'gamma': field 'cv'"):
        parse_arrival("gamma:cv=-1")


def test_parse_rate() -> None:
    assert parse_rate("12.5") == ConstantRate(rate_rps=12.5)
    assert parse_rate(3) == ConstantRate(rate_rps=3.0)
    assert parse_rate("steps:60=8,0=2") == StepsRate(steps=[(0.0, 2.0), (60.0, 8.0)])
    assert parse_rate("ramp:from_rps=1,to_rps=8,over_s=600") == RampRate(from_rps=1, to_rps=8, over_s=600)
    assert parse_rate("diurnal:mean_rps=5,amplitude_rps=3,period_s=3600") == DiurnalRate(
        mean_rps=5, amplitude_rps=3, period_s=3600)
    assert parse_rate("bursts:base_rps=2,burst_rps=20,burst_length_s=10,burst_every_s=120") == BurstsRate(
        base_rps=2, burst_rps=20, burst_length_s=10, burst_every_s=120)
    with pytest.raises(ValueError, match=r"rate: .*greater than 0"):
        parse_rate("-1")
    with pytest.raises(ValueError, match="unknown rate schedule 'zigzag'"):
        parse_rate("zigzag:a=1")
    with pytest.raises(ValueError, match="rate schedule 'steps': expected START_S=RATE_RPS"):
        parse_rate("steps:0=fast")
    with pytest.raises(ValueError, match=r"rate schedule 'steps': .*start at 0"):
        parse_rate("steps:5=1")
    with pytest.raises(ValueError, match="rate schedule 'diurnal': field 'period_s'"):
        parse_rate("diurnal:mean_rps=5,amplitude_rps=3,period_s=soon")


def test_describe_lists_every_workload_field_and_default() -> None:
    text = describe_workloads()
    for name, entry in WORKLOADS.items():
        assert f"  {name}\n" in text
        for field, info in entry.params.model_fields.items():
            if field != "name":
                assert f"      {field}={info.default}" in text
    for kind in ("constant", "steps", "ramp", "diurnal", "bursts", "gamma"):
        assert kind in text
    assert "num_groups=64" in text and "system_prompt_len=2048" in text


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(text)
    return path


def test_workload_file_loads_and_generates(tmp_path: Path) -> None:
    path = _write(tmp_path, """
seed = 4
num_requests = 50
rate = 8.0
[workload]
name = "gsp"
num_groups = 4
[arrival]
process = "gamma"
cv = 2.0
""")
    cfg = load_workload_file(path)
    assert cfg.workload == GspParams(num_groups=4) and cfg.rate == ConstantRate(rate_rps=8.0)
    reqs = list(cfg.requests())
    assert reqs == list(make_requests(GspParams(num_groups=4), 8.0, "gamma:cv=2", num_requests=50, seed=4))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('num_requests = 5\nrate = 1.0\n[workload]\nname = "gsp"\nnum_groups = 0\n', "workload.gsp.num_groups"),
        ('num_requests = 5\nrate = 1.0\n[workload]\nname = "nope"\n', "workload"),
        ('rate = 1.0\n[workload]\nname = "gsp"\n', "bound the run"),
        ('num_requests = 5\n[rate]\nkind = "diurnal"\nmean_rps = 1\n[workload]\nname = "gsp"\n',
         "rate.diurnal.amplitude_rps"),
        ('num_requests = 5\nrate = 1.0\nsed = 3\n[workload]\nname = "gsp"\n', "sed"),
        ('num_requests = 5\nrate = 1.0\n[workload\n', "TOML syntax"),
    ],
)
def test_bad_workload_files_name_file_and_field(tmp_path: Path, text: str, where: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputFileError) as err:
        load_workload_file(path)
    assert str(path) in str(err.value) and where in str(err.value)


def test_shipped_example_files_load_and_run() -> None:
    files = sorted(CONFIG_DIR.glob("*.toml"))
    assert len(files) >= 4
    names = set()
    for path in files:
        cfg = load_workload_file(path)
        assert isinstance(cfg, WorkloadConfig)
        names.add(cfg.workload.name)
        first = list(itertools.islice(cfg.requests(), 20))
        assert len(first) == 20
    assert names == set(WORKLOADS)
