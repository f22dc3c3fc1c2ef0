"""The HTTP API on 127.0.0.1: reads are open, writes need the bearer token and change nothing without it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from schedctl.controller.api import ApiServer, make_app
from schedctl.controller.core import Controller
from schedctl.controller.service import Service, ServiceMetrics
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.spec import parse_policy
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware, new_engine
from schedctl.workloads.registry import make_requests

TOKEN = "s3cret-token"
HW = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))


def make_service() -> Service:
    ad = SimAdapter(new_engine(HW, parse_policy("klpm:4")), make_requests("gsp", 5.0, duration_s=300, seed=0), 10.0)
    return Service(Controller(), ad, clock=lambda: ad.now_s, metrics=ServiceMetrics())


@pytest.fixture
def api() -> Iterator[tuple[Service, httpx.Client]]:
    svc = make_service()
    server = ApiServer(make_app(svc, TOKEN), "127.0.0.1", 0)
    server.start(timeout_s=10)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5.0) as client:
            yield svc, client
    finally:
        server.stop(timeout_s=5)
        assert not server._thread.is_alive()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.timeout(30)
def test_reads(api: tuple[Service, httpx.Client]) -> None:
    svc, client = api
    for _ in range(3):
        svc.tick()
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["tick_id"] == 3
    status = client.get("/status").json()
    assert status["tick_id"] == 3 and status["mode"] == "active" and status["last_decision"]["tick_id"] == 3
    assert [d["tick_id"] for d in client.get("/decisions", params={"since": 1}).json()] == [2, 3]
    assert [d["tick_id"] for d in client.get("/decisions", params={"since": 0, "limit": 1}).json()] == [3]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "schedctl_ticks_total 3.0" in metrics.text
    assert 'schedctl_decisions_total{reason="guard"}' in metrics.text


@pytest.mark.timeout(30)
@pytest.mark.parametrize("headers", [{}, auth("wrong"), {"Authorization": TOKEN}, {"Authorization": "Basic x"}])
def test_writes_without_the_token_are_refused_and_change_nothing(
    api: tuple[Service, httpx.Client], headers: dict[str, str]
) -> None:
    svc, client = api
    svc.tick()
    before = svc.controller.status()
    for path, body in (("/pin", {"policy": "lpm"}), ("/unpin", None), ("/mode", {"mode": "advisory"})):
        r = client.post(path, json=body, headers=headers)
        assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer"
    assert svc.controller.status() == before
    d = svc.tick()
    assert d.reason != "pinned" and d.mode == "active"


@pytest.mark.timeout(30)
def test_writes_with_the_token_take_effect_at_the_next_tick(api: tuple[Service, httpx.Client]) -> None:
    svc, client = api
    svc.tick()
    r = client.post("/pin", json={"policy": "lpm"}, headers=auth())
    assert r.status_code == 200 and r.json()["pinned"] == "lpm"
    d = svc.tick()
    assert d.reason == "pinned" and d.policy == parse_policy("lpm") and d.applied
    assert client.post("/pin", json={"policy": {"kind": "klpm", "k": 8}}, headers=auth()).status_code == 200
    assert svc.tick().policy == parse_policy("klpm:8")
    assert client.post("/pin", json={"policy": "klpm:0"}, headers=auth()).status_code == 422
    assert client.post("/unpin", headers=auth()).status_code == 200
    assert svc.tick().reason != "pinned"
    assert client.post("/mode", json={"mode": "advisory"}, headers=auth()).status_code == 200
    assert svc.tick().mode == "advisory"
    assert client.post("/mode", json={"mode": "sideways"}, headers=auth()).status_code == 422


@pytest.mark.timeout(30)
def test_no_configured_token_means_no_writes() -> None:
    svc = make_service()
    server = ApiServer(make_app(svc, ""), "127.0.0.1", 0)
    server.start()
    try:
        r = httpx.post(f"http://127.0.0.1:{server.port}/pin", json={"policy": "lpm"}, headers=auth("x"), timeout=5)
        assert r.status_code == 403
        assert svc.controller.guard.pinned is None
    finally:
        server.stop()


@pytest.mark.timeout(30)
def test_a_huge_k_pin_is_refused_with_one_clear_error_and_changes_nothing(api: tuple[Service, httpx.Client]) -> None:
    svc, client = api
    svc.tick()
    huge = "9" * 400
    for body in ({"policy": f"klpm:{huge}"}, {"policy": {"kind": "klpm", "k": int(huge)}}):
        r = client.post("/pin", json=body, headers=auth())
        assert r.status_code == 422 and "k must be <= 1000000" in r.json()["detail"]
        assert huge not in r.text
    assert svc.controller.guard.pinned is None
    d = svc.tick()  # the loop goes on, with nothing huge anywhere
    assert d.reason != "pinned" and "9999999" not in d.model_dump_json()
