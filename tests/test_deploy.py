"""deploy/: the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, offline: it bundles them),
the kustomization rendered with the features it uses (tests/deploy_support.py), the sidecar's settings as the
pod gives them, the Dockerfiles, and the Grafana dashboard against its generator and the metrics that exist."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from deploy_support import (
    DASHBOARD,
    KUSTOMIZE_DIR,
    ROOT,
    dashboard,
    dashboard_metric_names,
    env_file,
    render,
    yaml_documents,
)
from dockerfile_parse import DockerfileParser

from schedctl.engine_adapter.sglang import metrics
from schedctl.engine_adapter.sglang.plugin import SUPPORTED_SGLANG_VERSIONS
from schedctl.settings import load_settings

K8S_VERSION = "1.33"  # validated against this release's schemas, strictly (unknown fields are errors)
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # no bundled schema: checked against SERVICE_MONITOR
# The fields of the Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1) this deployment uses, with the
# operator's types; anything else is refused, so a typo cannot pass unseen
SERVICE_MONITOR = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"], "properties": {
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"], "properties": {
                    "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                    "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}},
    },
}


def _of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _validate(doc: dict[str, Any]) -> None:
    if (doc["apiVersion"], doc["kind"]) in CRDS:
        jsonschema.validate(doc, SERVICE_MONITOR)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_manifest_and_the_rendered_kustomization_validate_against_the_schemas() -> None:
    files = sorted(KUSTOMIZE_DIR.glob("*.yaml"))
    base = [d for f in files if f.name != "kustomization.yaml" for d in yaml_documents(f)]
    rendered = render()
    assert {d["kind"] for d in rendered} == {"Deployment", "Service", "ServiceMonitor", "Secret", "ConfigMap"}
    for doc in base + rendered:
        _validate(doc)


def test_the_schemas_refuse_a_broken_manifest() -> None:
    deployment = _of(render(), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][1]["readinessProbe"]["httpGet"]["prot"] = 8787
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)
    monitor = _of(render(), "ServiceMonitor")[0]
    monitor["spec"]["endpoints"][0]["intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        _validate(monitor)


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(_of(docs, "Deployment")[0]["spec"]["template"])


def _container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in _pod(docs)["spec"]["containers"] if c["name"] == name)


def test_the_pieces_refer_to_each_other() -> None:
    docs = render()
    pod = _pod(docs)
    ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    services = _of(docs, "Service")
    for svc in services:  # every Service selects the pod and names its ports
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    monitor = _of(docs, "ServiceMonitor")[0]
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    selected = [s for s in services if wanted <= s["metadata"]["labels"].items()]
    scraped = {p["name"]: p["targetPort"] for s in selected for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == set(scraped)
    assert set(scraped.values()) == {"http", "schedctl"}  # the engine's /metrics and the sidecar's
    annotated = {int(s["metadata"]["annotations"]["prometheus.io/port"]) for s in services}
    assert annotated == {ports["http"], ports["schedctl"]}
    sidecar = _container(docs, "schedctl")
    for probe in ("readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"] == {"path": "/healthz", "port": "schedctl"}
    engine = _container(docs, "sglang")
    assert engine["resources"]["requests"]["nvidia.com/gpu"] == engine["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "SGLANG_PLUGINS", "value": "schedctl"} in engine["env"]
    config_maps = {c["metadata"]["name"]: c["data"] for c in _of(docs, "ConfigMap")}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in _of(docs, "Secret")}
    for c in pod["spec"]["containers"]:
        for env in c.get("env", []):
            ref = env.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                assert ref["configMapKeyRef"]["key"] in config_maps[ref["configMapKeyRef"]["name"]], env
            if "secretKeyRef" in ref:
                assert ref["secretKeyRef"]["key"] in secrets[ref["secretKeyRef"]["name"]], env
    for vol in pod["spec"]["volumes"]:
        if "configMap" in vol:
            assert vol["configMap"]["name"] in config_maps


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of a container's env values and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _container_env(docs: list[dict[str, Any]], name: str, pod: dict[str, str]) -> dict[str, str]:
    """The environment the container gets: values, ConfigMap and Secret keys, the pod's fields."""
    config_maps = {c["metadata"]["name"]: c["data"] for c in _of(docs, "ConfigMap")}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in _of(docs, "Secret")}
    env: dict[str, str] = {}
    for e in _container(docs, name)["env"]:
        ref = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = _expand(e["value"], env)
        elif "configMapKeyRef" in ref:
            env[e["name"]] = config_maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref:
            env[e["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        else:
            env[e["name"]] = pod[ref["fieldRef"]["fieldPath"]]
    return env


def _sidecar_settings(docs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The sidecar's settings as the pod gives them: the ConfigMap's file and the container's environment."""
    config = tmp_path / "sidecar.toml"
    config.write_text(next(c for c in _of(docs, "ConfigMap") if c["metadata"]["name"] == "schedctl-sidecar")
                      ["data"]["sidecar.toml"])
    for k in [k for k in os.environ if k.startswith("SCHEDCTL_")]:
        monkeypatch.delenv(k)
    pod = {"metadata.name": "sglang-7d4b9-x2x", "metadata.namespace": "serving"}
    for k, v in _container_env(docs, "schedctl", pod).items():
        monkeypatch.setenv(k, v)
    args = _container(docs, "schedctl")["args"]
    assert args[:2] == ["run", "--config"] and args[2] == "/etc/schedctl/" + config.name
    return load_settings(config)


def test_the_kustomization_sets_the_model_the_slo_and_the_replicas(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render()
    params = env_file(KUSTOMIZE_DIR / "params.env")
    (tmp_path / "a").mkdir()
    settings = _sidecar_settings(docs, tmp_path / "a", monkeypatch)
    assert settings.slo.ttft_p99_target_ms == float(params["TTFT_P99_TARGET_MS"])
    assert settings.engine.adapter == "sglang" and settings.engine.sglang.base_url == "http://127.0.0.1:30000"
    api_port = _container(docs, "schedctl")["ports"][0]["containerPort"]
    assert (settings.api.host, settings.api.port) == ("0.0.0.0", api_port)
    # an edited copy: another model, SLO, replica count, and Prometheus as the metrics source
    copy = tmp_path / "k"
    shutil.copytree(KUSTOMIZE_DIR, copy)
    (copy / "params.env").write_text((copy / "params.env").read_text()
                                     .replace(params["MODEL_PATH"], "Qwen/Qwen2.5-7B-Instruct")
                                     .replace("TTFT_P99_TARGET_MS=2000", "TTFT_P99_TARGET_MS=1500")
                                     .replace("METRICS_SOURCE=engine", "METRICS_SOURCE=prometheus"))
    (copy / "kustomization.yaml").write_text((copy / "kustomization.yaml").read_text()
                                             .replace("count: 2", "count: 5"))
    edited = render(copy)
    assert _of(edited, "Deployment")[0]["spec"]["replicas"] == 5
    engine_env = _container_env(edited, "sglang", {})
    args = [_expand(a, engine_env) for a in _container(edited, "sglang")["args"]]
    assert "--model-path=Qwen/Qwen2.5-7B-Instruct" in args and args[:2] == ["sglang", "serve"]
    (tmp_path / "b").mkdir()
    settings = _sidecar_settings(edited, tmp_path / "b", monkeypatch)
    assert settings.slo.ttft_p99_target_ms == 1500.0
    assert settings.engine.metrics.source == "prometheus"
    assert settings.engine.metrics.selector == 'namespace="serving",pod="sglang-7d4b9-x2x"'


def test_the_images_are_the_ones_the_dockerfiles_build() -> None:
    kust = yaml_documents(KUSTOMIZE_DIR / "kustomization.yaml")[0]
    docs = [d for r in kust["resources"] for d in yaml_documents(KUSTOMIZE_DIR / r)]
    images = {c["name"]: c["image"] for c in _pod(docs)["spec"]["containers"]}
    assert images == {"sglang": "schedctl-sglang", "schedctl": "schedctl"}
    assert {i["name"] for i in kust["images"]} == set(images.values())
    for name in ("Dockerfile", "Dockerfile.sglang"):
        with (ROOT / "deploy" / "docker" / name).open("rb") as f:
            parser = DockerfileParser(fileobj=f)
            structure = parser.structure
            base = parser.baseimage
        for step in structure:
            if step["instruction"] == "COPY":
                *sources, _dest = step["value"].split()
                assert all((ROOT / s).exists() for s in sources), step
        entry = [s["value"] for s in structure if s["instruction"] == "ENTRYPOINT"]
        assert entry == ['["schedctl"]']
        if name == "Dockerfile.sglang":
            assert base.startswith("lmsysorg/sglang:v")
            assert base.removeprefix("lmsysorg/sglang:v") in SUPPORTED_SGLANG_VERSIONS
            assert any(s["instruction"] == "ENV" and s["value"] == "SGLANG_PLUGINS=schedctl" for s in structure)


def _build_module() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_build", ROOT / "deploy" / "grafana" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_dashboard_is_what_build_py_generates() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == _build_module().render(), \
        "deploy/grafana/schedctl.json is stale: run .venv/bin/python deploy/grafana/build.py"


def _sidecar_metric_names() -> set[str]:
    """The sample names the sidecar's /metrics exports (after one tick, so every series exists)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from schedctl.controller.core import ControllerParams
    from schedctl.controller.service import open_sidecar
    from schedctl.engine_adapter.sim import SimAdapter
    from schedctl.policies.spec import parse_policy
    from schedctl.sim.profiles import load_gpu, load_model
    from schedctl.sim.run import Hardware, new_engine
    from schedctl.workloads.registry import make_requests

    hw = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))
    ad = SimAdapter(new_engine(hw, parse_policy("klpm:4")), make_requests("gsp", 5.0, duration_s=30.0, seed=1), 10.0)
    svc, _ = open_sidecar(ControllerParams(), ad, run_id="names", clock=lambda: ad.now_s)
    svc.tick()
    assert svc.metrics is not None
    text = generate_latest(svc.metrics.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_dashboard_query_reads_metrics_that_exist() -> None:
    names = dashboard_metric_names()
    sglang = set(metrics.METRICS_READ) | {h + "_bucket" for h in metrics.HISTOGRAMS}  # checked against SGLang's
    sidecar = _sidecar_metric_names()  # source by tests/test_sglang_adapter.py; live: test_live_prometheus.py
    assert names - sglang - sidecar == set()
    wanted = {"schedctl_policy", "schedctl_decisions_total", "schedctl_apply_errors_total",
              "schedctl_stale_windows_total", "schedctl_slo_ttft_p99_seconds", metrics.TTFT + "_bucket",
              metrics.ITL + "_bucket", metrics.QUEUE, metrics.CACHED_TOKENS}
    assert wanted <= names
    # and the check itself sees a name that does not exist
    broken = dashboard()
    broken["panels"][1]["targets"][0]["expr"] = "schedctl_no_such_metric"
    assert dashboard_metric_names(broken) - sglang - sidecar == {"schedctl_no_such_metric"}


def test_the_pods_sidecar_settings_are_the_shipped_sglang_ones_but_for_where_things_are(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.startswith("SCHEDCTL_")]:
        monkeypatch.delenv(k)
    pod = load_settings(KUSTOMIZE_DIR / "sidecar.toml")
    shipped = load_settings(ROOT / "config" / "sidecar.sglang.toml")
    for table in ("slo", "objective", "tuner", "guard", "sanity", "reconcile", "service"):
        assert getattr(pod, table) == getattr(shipped, table), table
    assert pod.engine.sglang.base_url == shipped.engine.sglang.base_url  # localhost: the same pod
