"""The Prometheus metrics source's pure parts: the selector check, the query, and reading an answer into a Scrape.
The source against a real Prometheus server: tests/test_live_prometheus.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedctl.engine_adapter.sglang import metrics
from schedctl.engine_adapter.sglang.prometheus import (
    TAG,
    PrometheusSource,
    scrape_from_vector,
    selector_problem,
    window_query,
)
from schedctl.files import InputFileError
from schedctl.settings import load_settings


@pytest.mark.parametrize("selector", ['pod="sglang-0"', 'namespace="serving",pod="a-b"', 'job=~"sgl.*", x!="y",',
                                      'pod="a\\"b"'])
def test_label_matchers_are_accepted(selector: str) -> None:
    assert selector_problem(selector) is None
    PrometheusSource("http://127.0.0.1:9", selector).close()


@pytest.mark.parametrize(("selector", "why"), [("", "every replica"), ('{pod="a"}', "without braces"),
                                               ("pod=a", "label matchers"), ('pod="a" or up', "label matchers")])
def test_other_selectors_are_refused_saying_why(selector: str, why: str) -> None:
    problem = selector_problem(selector)
    assert problem is not None and why in problem
    with pytest.raises(ValueError, match="selector"):
        PrometheusSource("http://127.0.0.1:9", selector)


def test_a_bad_selector_in_the_settings_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[engine]\nadapter = "sglang"\n[engine.metrics]\nsource = "prometheus"\nselector = "{pod=1}"\n')
    with pytest.raises(InputFileError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"{path}: engine.metrics: selector:")


def test_the_query_reads_every_metric_the_adapter_reads_over_the_window() -> None:
    q = window_query('pod="p"', 12.5)
    for name in metrics.METRICS_READ:
        assert f'"{name.replace("sglang:", "sglang[:_]")}' in q
    counters = metrics.COUNTERS + metrics.SCHEDULER_COUNTERS
    assert q.count("[12500ms]") == len(metrics.HISTOGRAMS) + len(counters) + 1  # + resets()
    assert q.count('pod="p"') == len(metrics.METRICS_READ) + 3  # + resets, up, timestamp(up)


def _item(key: str, value: str, **labels: str) -> dict[str, object]:
    return {"metric": {TAG: key, "__name__": "ignored", **labels}, "value": [0, value]}


def test_an_answer_becomes_a_scrape_of_the_window() -> None:
    h = metrics.TTFT + "_bucket"
    result = [_item(h, "3", le="0.1"), _item(h, "2.9", le="0.5"), _item(h, "6", le="+Inf"),  # extrapolation dip
              _item(metrics.REQUESTS, "6.4", engine_type="unified"), _item(metrics.QUEUE, "3", tp_rank="0"),
              _item(metrics.QUEUE, "3", tp_rank="1"), _item("up", "1"), _item("up_age_s", "0.4"),
              _item("resets", "0")]
    scrape, status = scrape_from_vector(result)
    delta = metrics.diff(metrics.Scrape(), scrape)
    assert delta.histograms[metrics.TTFT].bucket_counts == [3.0, 0.0, 3.0]  # kept cumulative: no negative bucket
    assert delta.counters[metrics.REQUESTS] == 6.4
    assert metrics.gauge_sum(scrape, metrics.QUEUE) == 3.0  # one scheduler group, reported by two TP ranks
    assert dict(status) == {"up": [1.0], "up_age_s": [0.4], "resets": [0.0]}
    assert scrape.implausible is None
    bad, _ = scrape_from_vector([_item(metrics.REQUESTS, "NaN"), _item(metrics.QUEUE, "-2")])
    assert bad.implausible is not None and "num_requests_total=nan" in bad.implausible
    assert "num_queue_reqs=-2" in bad.implausible
