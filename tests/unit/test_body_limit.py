"""Unit tests for serve_app.body_limit.BodySizeLimitMiddleware."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from serve_app.body_limit import BodySizeLimitMiddleware
from serve_app.errors import error_body

LIMIT = 1024


class Payload(BaseModel):
    texts: list[str]


@dataclass
class Calls:
    endpoint: int = 0
    bodies: list[bytes] = field(default_factory=list)


def make_app(calls: Calls, max_bytes: int = LIMIT) -> BodySizeLimitMiddleware:
    async def echo(request: Request) -> JSONResponse:
        calls.endpoint += 1
        body = await request.body()
        calls.bodies.append(body)
        return JSONResponse({"size": len(body)})

    return BodySizeLimitMiddleware(Starlette(routes=[Route("/echo", echo, methods=["POST"])]), max_bytes)


class ResponseLike(Protocol):
    """httpx.Response or the TestClient's httpx2.Response."""

    status_code: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self) -> Any: ...


def assert_413(response: ResponseLike, max_bytes: int = LIMIT) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    # The API's one error shape: type, code, message, param and field (serve_app/errors.py).
    assert set(error) == set(error_body("t", "c", "m", "f")["error"])
    assert error["type"] == "payload_too_large"
    assert error["code"] == "body_too_large"
    assert error["field"] == error["param"] == "body"
    assert str(max_bytes) in error["message"]


def post_stream(app: BodySizeLimitMiddleware, chunks: list[bytes]) -> httpx.Response:
    """POST through httpx's ASGI transport, which streams a chunked body message by message."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(
                "/echo", content=body(), headers={"content-type": "application/json"}
            )
            await response.aread()
            return response

    return asyncio.run(go())


def test_under_limit_passes_with_body_intact() -> None:
    calls = Calls()
    payload = bytes(range(256)) * 3  # 768 bytes, every byte value
    with TestClient(make_app(calls)) as client:
        response = client.post("/echo", content=payload)
    assert response.status_code == 200
    assert response.json() == {"size": len(payload)}
    assert calls.bodies == [payload]


def test_exactly_at_limit_passes() -> None:
    calls = Calls()
    with TestClient(make_app(calls)) as client:
        response = client.post("/echo", content=b"x" * LIMIT)
    assert response.status_code == 200
    assert calls.bodies == [b"x" * LIMIT]


def test_content_length_over_limit_is_413_and_app_never_called() -> None:
    calls = Calls()
    with TestClient(make_app(calls)) as client:
        response = client.post("/echo", content=b"x" * (LIMIT + 1))
    assert_413(response)
    assert calls.endpoint == 0


def test_declared_content_length_refused_before_body_is_read() -> None:
    """With an over-limit Content-Length, neither the app nor ``receive`` is touched."""
    app_called = False
    receive_called = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal app_called
        app_called = True

    async def receive() -> Message:
        nonlocal receive_called
        receive_called = True
        return {"type": "http.request", "body": b"", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "headers": [(b"content-length", str(10 * LIMIT).encode())],
    }
    asyncio.run(BodySizeLimitMiddleware(app, LIMIT)(scope, receive, send))
    assert not app_called
    assert not receive_called
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b'"payload_too_large"' in sent[1]["body"]


def test_huge_content_length_is_413() -> None:
    calls = Calls()
    app = make_app(calls)
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("body must not be read")

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "headers": [(b"content-length", b"9" * 50)],
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert calls.endpoint == 0


def test_chunked_under_limit_streams_through() -> None:
    calls = Calls()
    chunks = [b"a" * 100] * 10
    response = post_stream(make_app(calls), chunks)
    assert response.status_code == 200
    assert calls.bodies == [b"".join(chunks)]


def test_chunked_over_limit_is_413() -> None:
    calls = Calls()
    response = post_stream(make_app(calls), [b"a" * 100] * 20)
    assert_413(response)
    assert calls.bodies == []  # the endpoint never got a body to parse


def test_chunked_over_limit_with_fastapi_body_parsing_is_413() -> None:
    """FastAPI turns a failing body read into a 400; the middleware must still answer 413."""
    parsed: list[int] = []
    api = FastAPI()

    @api.post("/echo")
    async def embed(payload: Payload) -> dict[str, int]:
        parsed.append(len(payload.texts))
        return {"n": len(payload.texts)}

    app = BodySizeLimitMiddleware(api, LIMIT)
    big = [b'{"texts": [', *([b'"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",'] * 40), b'"y"]}']
    response = post_stream(app, big)
    assert_413(response)
    assert parsed == []

    small = [b'{"texts": [', b'"a", "b"', b"]}"]
    ok = post_stream(app, small)
    assert ok.status_code == 200
    assert ok.json() == {"n": 2}


def test_chunks_are_not_buffered() -> None:
    """The app sees the body as the same sequence of messages the client sent."""
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    response = post_stream(BodySizeLimitMiddleware(app, LIMIT), [b"1" * 300, b"2" * 300, b"3" * 300])
    assert response.status_code == 204
    assert [c for c in seen if c] == [b"1" * 300, b"2" * 300, b"3" * 300]


def test_app_that_swallows_the_error_still_gets_413() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while True:
                message = await receive()
                if not message.get("more_body", False):
                    break
        except Exception:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"parsed anyway"})

    response = post_stream(BodySizeLimitMiddleware(app, LIMIT), [b"z" * 600, b"z" * 600])
    assert_413(response)


def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        raise AssertionError("middleware must not answer non-HTTP scopes")

    asyncio.run(BodySizeLimitMiddleware(app, 0)({"type": "lifespan"}, receive, send))
    assert seen == ["lifespan"]


def test_get_without_body_passes() -> None:
    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = BodySizeLimitMiddleware(Starlette(routes=[Route("/", hello)]), LIMIT)
    with TestClient(app) as client:
        assert client.get("/").json() == {"ok": True}


def test_app_errors_unrelated_to_the_limit_propagate() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(BodySizeLimitMiddleware(app, LIMIT)({"type": "http", "headers": []}, receive, send))
