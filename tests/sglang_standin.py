"""A stand-in for an SGLang server with the schedctl plugin loaded, over a real socket on 127.0.0.1.

It stands for what the sidecar's SGLang adapter talks to: ``GET /metrics`` (Prometheus text written by
prometheus-client with SGLang 0.5.23's metric names, labels and default buckets), ``GET /server_info`` (the
resolved server args, ``startup_time`` and the plugin's readback under ``internal_states[i]["schedctl"]``) and
``POST /set_internal_state`` (the plugin's keys, the reserve's among them, answered ``[true]``/``[false]`` as
SGLang does). It is not SGLang: no model, no scheduler; tests set the metrics and read the pushes.

For fault injection it can also: die (the socket closes, connections are refused) and come back on the same port
(``restart(lose_policy=True)``: a new ``startup_time``, counters from zero, the plugin's state back to "off", as
a restarted SGLang), serve garbage or given metrics text (NaN, negative, huge values), be slow (``delay_s``), and
answer pushes with HTTP 500 or a body that is not JSON (``push_answer``). Every server started here is stopped by
``running_standin`` (the tests' fixtures) or ``close``.

One implementation, used by the adapter tests (tests/test_sglang_adapter.py) and the fault-injection suite
(tests/test_faults.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from schedctl.engine_adapter.sglang import channel, metrics, reserve

TTFT_BUCKETS_S = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]  # SGLang's defaults
ITL_BUCKETS_S = [0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080, 0.100,
                 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000]  # fmt: skip

PushAnswer = Literal["sglang", "http500", "not_json"]


class FakeSGLangMetrics:
    """SGLang's tokenizer and scheduler metrics in a registry of their own (one engine 'life')."""

    def __init__(self, ranks: list[dict[str, str]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(metrics.TTFT, "ttft", ["model_name", "is_streaming"], buckets=TTFT_BUCKETS_S, registry=r)
        self.itl = Histogram(metrics.ITL, "itl", ["model_name"], buckets=ITL_BUCKETS_S, registry=r)
        self.requests = Counter(metrics.REQUESTS, "n", ["model_name", "is_streaming"], registry=r)
        self.aborted = Counter(metrics.ABORTED, "n", ["model_name"], registry=r)
        self.prompt = Counter(metrics.PROMPT_TOKENS, "n", ["model_name", "is_streaming"], registry=r)
        self.cached = Counter(metrics.CACHED_TOKENS, "n", ["model_name", "cache_source"], registry=r)
        rank_labels = ["model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank", "dp_rank", "priority"]
        self.gauges = {name: Gauge(name, "g", rank_labels, registry=r) for name in metrics.GAUGES}
        self.retracted = Counter(metrics.RETRACTED, "n", rank_labels[:-1], registry=r)  # no sample before the first
        self.ranks = ranks or [{"tp_rank": "0", "dp_rank": "0"}]

    def finish(self, ttft_s: float, prompt: int, cached: int, stream: bool = False) -> None:
        s = "true" if stream else "false"
        self.ttft.labels("m", s).observe(ttft_s)
        self.requests.labels("m", s).inc()
        self.prompt.labels("m", s).inc(prompt)
        self.cached.labels("m", "device").inc(cached)

    def set_gauges(self, **values: float) -> None:
        for rank in self.ranks:
            for name, value in values.items():
                labels = {"model_name": "m", "engine_type": "unified", "pp_rank": "0", "moe_ep_rank": "0",
                          "priority": "", **rank}  # fmt: skip
                self.gauges[f"sglang:{name}"].labels(**labels).set(value)

    def retract(self, n: int) -> None:
        """The scheduler retracted ``n`` requests: every TP rank of the group counts them (scheduler.py)."""
        for rank in self.ranks:
            self.retracted.labels(model_name="m", engine_type="unified", pp_rank="0", moe_ep_rank="0", **rank).inc(n)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class FakeSGLang:
    """What the adapter talks to: /metrics, /server_info and /set_internal_state, as SGLang answers them."""

    def __init__(self) -> None:
        self.metrics = FakeSGLangMetrics()
        self.metrics_text: str | None = None  # overrides the registry when set (garbage tests)
        self.delay_s = 0.0
        self.status = 200
        self.plugin = True
        self.accept_push = True
        self.push_answer: PushAnswer = "sglang"
        self.schedule_policy = "lpm"
        self.startup_time = 1000.0
        self.plugin_state = {channel.KEY_KIND: 0, channel.KEY_K: 0, channel.KEY_VERSION: 0}
        self.pushes: list[dict[str, Any]] = []
        self.hits = 0
        self.conservativeness = 1.0  # schedule_conservativeness, read back as the plugin does (reserve.py)

    def server_info(self) -> dict[str, Any]:
        state: dict[str, Any] = {"startup_time": self.startup_time}
        if self.plugin:
            init = min(0.7 * self.conservativeness, 1.0)
            state[channel.SERVER_INFO_KEY] = {**self.plugin_state, "reserve": {
                "schedule_conservativeness": self.conservativeness, "new_token_ratio_init": init,
                "new_token_ratio_min": init * 0.14, "new_token_ratio": init}}
        return {"schedule_policy": self.schedule_policy, "version": "0.5.23", "startup_time": self.startup_time,
                "internal_states": [state]}  # fmt: skip

    def lose_state(self) -> None:
        """What a restart does to the engine: counters from zero, a new startup time, the plugin's state off."""
        self.metrics = FakeSGLangMetrics(self.metrics.ranks)
        self.startup_time += 60.0
        self.plugin_state = {channel.KEY_KIND: 0, channel.KEY_K: 0, channel.KEY_VERSION: 0}
        self.conservativeness = 1.0  # the server's start value again

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        self.hits += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.status != 200:
            return self.status, "error"
        if method == "GET" and path == "/metrics":
            return 200, self.metrics_text if self.metrics_text is not None else self.metrics.text()
        if method == "GET" and path == "/server_info":
            return 200, json.dumps(self.server_info())
        if method == "POST" and path == "/set_internal_state":
            args = json.loads(body)["server_args"]
            self.pushes.append(args)
            if self.push_answer == "http500":
                return 500, "Internal Server Error"
            if self.push_answer == "not_json":
                return 200, "<html>proxy error</html>"
            ok = self.plugin and self.accept_push and set(args) <= {*channel.KEYS, reserve.KEY_CONSERVATIVENESS}
            if ok and reserve.KEY_CONSERVATIVENESS in args:
                try:
                    self.conservativeness = reserve.check_conservativeness(args[reserve.KEY_CONSERVATIVENESS])
                except ValueError:
                    ok = False
            if ok:
                self.plugin_state.update({k: v for k, v in args.items() if k in channel.KEYS})
            return 200, json.dumps([ok])
        return 404, "not found"


class StandInServer:
    """The HTTP server around a FakeSGLang: a thread on 127.0.0.1 that can die and come back on its port."""

    def __init__(self, fake: FakeSGLang) -> None:
        self.fake = fake
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self.fake

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, text = fake.handle(self.command, self.path, body)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.end_headers()
                    self.wfile.write(text.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())  # SO_REUSEADDR: same port again
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def die(self) -> None:
        """The process is gone: the socket closes, new connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def restart(self, lose_policy: bool = True) -> None:
        """Come back on the same port; ``lose_policy``: as a restarted SGLang (see FakeSGLang.lose_state)."""
        self.die()
        if lose_policy:
            self.fake.lose_state()
        self.start()

    close = die


@contextmanager
def running_standin() -> Iterator[StandInServer]:
    """A stand-in server for the length of a ``with`` block (a test's fixture), stopped at its end."""
    server = StandInServer(FakeSGLang())
    try:
        yield server
    finally:
        server.close()
