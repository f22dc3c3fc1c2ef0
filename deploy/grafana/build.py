"""Build the Grafana dashboard deploy/grafana/schedctl.json with grafana-foundation-sdk (the dev extra).

    .venv/bin/python deploy/grafana/build.py            # rewrite deploy/grafana/schedctl.json
    .venv/bin/python deploy/grafana/build.py --check    # exit 1 if the committed file differs from the code

SGLang's series are matched as ``sglang:x`` or ``sglang_x`` (Prometheus 2.x stores them with the underscore:
engine_adapter/sglang/prometheus.py). Every replica is one pod running SGLang and the schedctl sidecar, both
scraped by Prometheus with a ``pod`` label (the ServiceMonitor in deploy/kubernetes/ adds it). The panels: per
replica TTFT P50/P99 against the sidecar's SLO, TBT, the waiting queue, the prefix-cache hit rate, the policy the
sidecar runs over time, decisions by reason, fallbacks and stale windows, push failures. tests/test_deploy.py
checks that the committed JSON is what this script writes and that every metric named here is one SGLang or the
sidecar exports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphDrawStyle, LegendDisplayMode, LegendPlacement, StackingMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

from schedctl.engine_adapter.sglang import metrics
from schedctl.engine_adapter.sglang.prometheus import series as sglang

OUT = Path(__file__).with_name("schedctl.json")
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
POD = 'pod=~"$pod"'
RATE = "$__rate_interval"


def q(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def quantile(p: float, histogram: str) -> str:
    return f"histogram_quantile({p}, sum by (pod, le) (rate({sglang(histogram + '_bucket', POD)}[{RATE}])))"


def legend() -> VizLegendOptions:
    return VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.RIGHT).show_legend(True)


def series(title: str, unit: str, targets: list[prometheus.Dataquery], description: str, *, bars: bool = False,
           width: int = 12) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit).datasource(DS).height(8)
             .span(width).legend(legend()))
    if bars:
        panel = (panel.draw_style(GraphDrawStyle.BARS).fill_opacity(80)
                 .stacking(StackingConfig().mode(StackingMode.NORMAL)))
    for t in targets:
        panel = panel.with_target(t)
    return panel


def build() -> db.Dashboard:
    ttft, itl = metrics.TTFT, metrics.ITL
    d = (db.Dashboard("schedctl · SGLang replicas").uid("schedctl").tags(["schedctl", "sglang"])
         .description("SGLang replicas with the schedctl sidecar: latency against the SLO, load, cache, and what "
                      "the sidecar decided (one pod = one replica)")
         .refresh("30s").time("now-3h", "now").timezone("browser")
         .with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
         .with_variable(db.QueryVariable("pod").label("replica").datasource(DS)
                        .query(f"label_values({sglang(metrics.QUEUE, '')}, pod)").multi(True).include_all(True)
                        .all_value(".*").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)))
    d = d.with_row(db.Row("Latency and load"))
    d = d.with_panel(series("TTFT P50 / P99 against the SLO", "s", [
        q(quantile(0.99, ttft), "{{pod}} P99", "A"),
        q(quantile(0.5, ttft), "{{pod}} P50", "B"),
        q(f"max by (pod) (schedctl_slo_ttft_p99_seconds{{{POD}}})", "{{pod}} SLO (P99)", "C"),
    ], "time to first token from SGLang's histogram; the SLO is the sidecar's slo.ttft_p99_target_ms"))
    d = d.with_panel(series("Time between tokens P50 / P99", "s", [
        q(quantile(0.99, itl), "{{pod}} P99", "A"),
        q(quantile(0.5, itl), "{{pod}} P50", "B"),
    ], "SGLang's inter-token latency histogram"))
    d = d.with_panel(series("Queue and running requests", "short", [
        q(f"sum by (pod) ({sglang(metrics.QUEUE, POD)})", "{{pod}} waiting", "A"),
        q(f"sum by (pod) ({sglang(metrics.RUNNING, POD)})", "{{pod}} running", "B"),
    ], "requests waiting in SGLang's queue (the order the sidecar sets) and running"))
    d = d.with_panel(series("Prefix cache hit rate", "percentunit", [
        q(f"sum by (pod) (rate({sglang(metrics.CACHED_TOKENS, POD)}[{RATE}])) / "
          f"sum by (pod) (rate({sglang(metrics.PROMPT_TOKENS, POD)}[{RATE}]))", "{{pod}}", "A"),
    ], "cached prompt tokens / prompt tokens admitted"))
    d = d.with_row(db.Row("What the sidecar decided"))
    d = d.with_panel(statetimeline.Panel().title("Policy over time").datasource(DS).height(8).span(12)
                     .description("the policy each replica's sidecar runs (klpm:K; K=1 is FCFS, klpm:inf is LPM)")
                     .with_target(q(f"max by (pod, policy) (schedctl_policy{{{POD}}}) > 0", "{{pod}} {{policy}}",
                                    "A")))
    d = d.with_panel(series("k of the policy", "short", [
        q(f"max by (pod) (schedctl_policy_k{{{POD}}})", "{{pod}}", "A"),
    ], "k of k-LPM (0 = LPM, -1 = not a k-LPM policy)"))
    d = d.with_panel(series("Decisions by reason", "short", [
        q(f"sum by (reason) (increase(schedctl_decisions_total{{{POD}}}[{RATE}]))", "{{reason}}", "A"),
    ], "explore, exploit, guard, rollback, fallback, pinned", bars=True))
    d = d.with_panel(series("Fallbacks and stale windows", "short", [
        q(f'sum by (pod) (increase(schedctl_decisions_total{{reason="fallback", {POD}}}[{RATE}]))',
          "{{pod}} fallback", "A"),
        q(f"sum by (pod) (increase(schedctl_stale_windows_total{{{POD}}}[{RATE}]))", "{{pod}} stale window", "B"),
        q(f"sum by (pod) (increase(schedctl_engine_unavailable_total{{{POD}}}[{RATE}]))",
          "{{pod}} engine unreachable", "C"),
    ], "ticks on the safe policy; windows the sidecar could not read (engine or Prometheus out, implausible data)",
        bars=True))
    d = d.with_panel(series("Push failures", "short", [
        q(f"sum by (pod) (increase(schedctl_apply_errors_total{{{POD}}}[{RATE}]))", "{{pod}}", "A"),
    ], "policy pushes the engine did not take (refused, or unreachable)", bars=True))
    d = d.with_panel(stat.Panel().title("Replicas in active mode").datasource(DS).height(8).span(12)
                     .description("1: the sidecar pushes its policies; 0: advisory (decides and logs only)")
                     .with_target(q(f"max by (pod) (schedctl_mode_active{{{POD}}})", "{{pod}}", "A")))
    return d


def render() -> str:
    model = build().build()
    for i, panel in enumerate(model.panels or [], start=1):  # ids in layout order (the builder leaves them unset)
        panel.id_val = i
    return json.dumps(model, cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} differs from deploy/grafana/build.py: run it", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
