"""Pure ASGI middleware that caps request body size before the application parses anything.

* A ``Content-Length`` above the limit is answered ``413`` at once; the body is never read and the
  application is never called.
* A body without a usable ``Content-Length`` (chunked) is counted as its ``http.request`` messages pass
  through. The message that crosses the limit is not delivered: the application's ``receive`` raises
  instead, whatever it sends after that is discarded, and the client gets the ``413``.

Nothing is buffered: chunks flow to the application as they arrive.

``path_limits`` gives single routes a limit of their own (e.g. ``POST /vectors/documents``, whose one
document may need more than the default): the limit of a request is its exact path's, else ``max_bytes``.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimitMiddleware", "RequestBodyTooLarge"]


class RequestBodyTooLarge(Exception):
    """Raised from ``receive`` once the streamed body passes the limit; the middleware answers 413."""


class BodySizeLimitMiddleware:
    """Refuse HTTP requests whose body exceeds ``max_bytes`` with a 413 JSON error."""

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None) -> None:
        if max_bytes < 0 or any(limit < 0 for limit in (path_limits or {}).values()):
            raise ValueError("max_bytes must be non-negative")
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > max_bytes:
            await self._send_413(send, max_bytes)
            return

        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise RequestBodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise RequestBodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return  # the app's answer to a half-read body is replaced by our 413
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not response_started:
            await self._send_413(send, max_bytes)
        # If the app had already started its response, it cannot be replaced; returning without
        # completing it makes the server close the connection.

    async def _send_413(self, send: Send, max_bytes: int) -> None:
        body = json.dumps(
            {
                "error": {
                    # The API's error shape (serve_app.errors.error_body), built here without importing
                    # the application: this middleware answers before anything else runs.
                    "type": "payload_too_large",
                    "code": "body_too_large",
                    "message": f"Request body exceeds the limit of {max_bytes} bytes.",
                    "param": "body",
                    "field": "body",
                }
            },
            separators=(",", ":"),
        ).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    # The unread rest of the body makes the connection unusable for another request.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    """The declared Content-Length, or None when absent or unusable (then the stream is counted)."""
    value: int | None = None
    for name, raw in scope.get("headers", ()):
        if name.lower() != b"content-length":
            continue
        try:
            text = raw.decode("latin-1").strip()
        except (AttributeError, UnicodeDecodeError):
            return None
        if not (text.isascii() and text.isdigit()):
            return None
        length = int(text) if len(text) <= 18 else 10**18  # a giant value is simply "too large"
        if value is not None and value != length:
            return None  # conflicting values: trust neither, count the bytes
        value = length
    return value
