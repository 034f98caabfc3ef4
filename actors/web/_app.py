"""The web actor's Starlette app: its routes, each a few lines over what `WebActor` knows or asks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from protocol import AwenError, ErrorCode

if TYPE_CHECKING:
    from ._actor import WebActor

log = logging.getLogger("awen.web")

EVENTS_MIN_INTERVAL_S = 0.25
"""``/events`` sends the state at most 4 times a second."""

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What `prometheus_client.generate_latest` writes (its own server says so too; its CONTENT_TYPE_LATEST
names the 1.0.0 format from 0.22 on)."""

KEEP_ALIVE_S = 15.0
"""``/events`` sends a comment this often when nothing changed, so that proxies keep the stream open."""


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def to_json(document: Any) -> bytes:
    """``document`` (structs, numpy arrays and all) as JSON; NaN and infinities as null."""
    return msgspec.json.encode(document, enc_hook=_plain)


def _json(document: Any, status_code: int = 200) -> Response:
    return Response(to_json(document), status_code=status_code, media_type="application/json")


def make_app(actor: WebActor, static: Path | None) -> Starlette:
    """The routes of decision 0015 §1; ``static`` (the lab page's files) served at ``/`` when given."""

    async def livez(_request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_request: Request) -> Response:
        checks = await actor.readiness()
        ready = all(check["ok"] for check in checks.values())
        return _json({"ready": ready, "checks": checks}, 200 if ready else 503)

    async def metrics(_request: Request) -> Response:
        return Response(actor.metrics_text(), media_type=METRICS_CONTENT_TYPE)

    async def state(_request: Request) -> Response:
        return _json(await actor.state())

    async def result(request: Request) -> Response:
        job = request.path_params["job"]
        try:
            with trio.fail_after(30.0):
                found = await actor.result(job)
        except trio.TooSlowError:
            return JSONResponse({"error": "timeout", "message": f"no result for {job} within 30 s"}, 504)
        except AwenError as exc:
            code = getattr(exc, "code", None)
            status = 404 if code == ErrorCode.NOT_FOUND else 400 if code == ErrorCode.BAD_REQUEST else 502
            return JSONResponse({"error": str(code), "message": str(exc)}, status)
        return _json(found)

    async def events(_request: Request) -> Response:
        return StreamingResponse(
            _event_stream(actor),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    routes: list[Any] = [
        Route("/livez", livez),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/api/state", state),
        Route("/api/jobs/{job}/result", result),
        Route("/events", events),
    ]
    if static is not None:
        routes.append(Mount("/", app=StaticFiles(directory=static, html=True), name="static"))
    return Starlette(routes=routes)


async def _event_stream(actor: WebActor) -> AsyncIterator[str]:
    """The state now, then again whenever it changed (at most 4 a second), and a comment every 15 s."""
    sent: bytes | None = None
    version = -1
    while True:
        if version == actor.version:
            with trio.move_on_after(KEEP_ALIVE_S):
                await actor.wait_changed(version)
            if version == actor.version:
                yield ": keep-alive\n\n"
                continue
        version = actor.version
        state = await actor.state()
        key = _without_clock(state)
        if key != sent:  # an event that changed nothing the page shows sends nothing
            sent = key
            yield f"data: {to_json(state).decode()}\n\n"
        await trio.sleep(EVENTS_MIN_INTERVAL_S)


def _without_clock(state: dict[str, Any]) -> bytes:
    """The state but for what changes with the clock alone (its time, the calibration's age)."""
    calibration = state.get("calibration")
    if isinstance(calibration, dict):
        calibration = {k: v for k, v in calibration.items() if k != "age_s"}
    return to_json({**state, "time": None, "calibration": calibration})
