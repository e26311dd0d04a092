"""One error shape for every failure the API reports, and the handlers that produce it.

Body: ``{"error": {"type", "code", "message", "param", "field"}}`` — OpenAI's error shape (so the
``openai`` client raises a proper ``APIStatusError``), with ``field`` naming the offending input.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

logger = logging.getLogger("heimdex.errors")


class ApiError(Exception):
    """An error the API answers with a JSON body and, where it helps, headers such as Retry-After."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        field: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.type = type_ or _default_type(status_code)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.type, self.code, self.message, self.field)


def _default_type(status_code: int) -> str:
    if status_code == 401:
        return "authentication_error"
    if status_code == 403:
        return "permission_error"
    if status_code == 404:
        return "not_found_error"
    if status_code == 429:
        return "rate_limit_error"
    if status_code >= 500:
        return "service_unavailable" if status_code == 503 else "server_error"
    return "invalid_request_error"


def error_body(type_: str, code: str, message: str, field: str | None) -> dict[str, Any]:
    return {"error": {"type": type_, "code": code, "message": message, "param": field, "field": field}}


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def too_busy(message: str, retry_after_s: float = 1.0) -> ApiError:
    return ApiError(503, "overloaded", message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


def _field_of(loc: tuple[Any, ...]) -> str | None:
    # The first element says where the value came from (body, query, path, header); the rest is the field.
    source_named = bool(loc) and loc[0] in ("body", "query", "path", "header")
    parts = [str(p) for p in (loc[1:] if source_named else loc)]
    return ".".join(parts) if parts else ("body" if loc and loc[0] == "body" else None)


async def _api_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response(exc.body(), exc.status_code, exc.headers)


async def _validation_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        return json_response(error_body("invalid_request_error", "invalid_json",
                                        f"request body is not valid JSON: {first.get('msg')}", "body"), 400)
    field = _field_of(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        message = "field required"
    detail = [{"field": _field_of(tuple(e.get("loc", ()))), "message": str(e.get("msg"))} for e in errors[:20]]
    body = error_body("invalid_request_error", str(first.get("type", "invalid_value")),
                      f"{field}: {message}" if field else message, field)
    body["error"]["details"] = detail
    return json_response(body, 422)


async def _http_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}.get(
        exc.status_code, "http_error")
    return json_response(error_body(_default_type(exc.status_code), code, str(exc.detail), None),
                         exc.status_code, dict(exc.headers or {}))


async def _database_down_handler(_: Request, exc: Exception) -> Response:
    logger.warning("database unavailable: %s", type(exc).__name__)
    return json_response(error_body("service_unavailable", "database_unavailable",
                                    "the job database is unreachable; nothing was recorded, retry shortly", None),
                         503, {"Retry-After": "5"})


async def _unexpected_handler(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return json_response(error_body("server_error", "internal_error", "internal error", None), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    from sqlalchemy.exc import InterfaceError, OperationalError

    app.add_exception_handler(OperationalError, _database_down_handler)
    app.add_exception_handler(InterfaceError, _database_down_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
