"""The sidecar's HTTP API (FastAPI, served by uvicorn in a thread, on 127.0.0.1 by default).

Reads (no token): ``GET /healthz``, ``GET /status``, ``GET /decisions?since=TICK&limit=N``, ``GET /metrics``
(Prometheus text, ``schedctl_*``). Writes need ``Authorization: Bearer <api.token>``: ``POST /pin``
``{"policy": "klpm:4"}`` (the command-line form or a PolicySpec object), ``POST /unpin``, ``POST /mode``
``{"mode": "advisory" | "active"}``. A missing or wrong token is answered 401 and changes nothing; with no token
configured every write is refused (403). A pin or mode change takes effect at the next tick, whose decision
line records it.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError

from schedctl.controller.service import Service
from schedctl.policies.spec import PolicySpec, parse_policy, policy_from_dict, policy_label


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str | dict[str, Any]


class ModeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["advisory", "active"]


def _policy(value: str | dict[str, Any]) -> PolicySpec:
    try:
        return parse_policy(value) if isinstance(value, str) else policy_from_dict(value)
    except ValidationError as exc:  # the first error's own words, not pydantic's header line
        first = exc.errors()[0]
        reason = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise HTTPException(status_code=422, detail=f"bad policy: {reason}") from None
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=f"bad policy: {str(exc).splitlines()[0]}") from None


def make_app(service: Service, token: str, stale_after_s: float | None = None) -> FastAPI:
    """The API over ``service``; ``/healthz`` reports degraded when no tick ran for ``stale_after_s``."""
    app = FastAPI(title="schedctl sidecar", docs_url=None, redoc_url=None, openapi_url=None)

    def require_token(authorization: str | None = Header(default=None)) -> None:
        if not token:
            raise HTTPException(status_code=403, detail="writes are disabled: no api.token is configured")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        last = service.last_tick_wall_s
        age = None if last is None else max(0.0, time.time() - last)
        late = stale_after_s is not None and age is not None and age > stale_after_s
        status = "ok" if service.log_healthy and not late else "degraded"
        return {"status": status, "tick_id": service.controller.tick, "seconds_since_tick": age,
                "log_healthy": service.log_healthy, "log_write_errors": service.log_errors}

    @app.get("/status")
    def status() -> dict[str, Any]:
        return service.status()

    @app.get("/decisions")
    def decisions(since: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=100_000)) -> list[dict[str, Any]]:
        return [d.model_dump(mode="json") for d in service.decisions_since(since)[-limit:]]

    @app.get("/metrics")
    def metrics() -> Response:
        registry = service.metrics.registry if service.metrics is not None else None
        body = generate_latest(registry) if registry is not None else b""
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)

    @app.post("/pin", dependencies=[Depends(require_token)])
    def pin(req: PinRequest) -> dict[str, Any]:
        spec = _policy(req.policy)
        try:
            service.pin(spec)
        except ValueError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return {"pinned": policy_label(spec), "effective": "next tick"}

    @app.post("/unpin", dependencies=[Depends(require_token)])
    def unpin() -> dict[str, Any]:
        service.unpin()
        return {"pinned": None, "effective": "next tick"}

    @app.post("/mode", dependencies=[Depends(require_token)])
    def mode(req: ModeRequest) -> dict[str, Any]:
        service.set_mode(req.mode)
        return {"mode": req.mode, "effective": "next tick"}

    return app


class ApiServer:
    """uvicorn in a daemon thread; ``start`` waits until it listens, ``stop`` until it has shut down."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8787) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="schedctl-api", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise OSError(f"the API could not start on {self.server.config.host}:{self.server.config.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the API did not start listening in time")
            time.sleep(0.01)

    @property
    def port(self) -> int:
        servers = getattr(self.server, "servers", [])
        for srv in servers:
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return int(self.server.config.port)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
