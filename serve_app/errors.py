"""One error shape for every failure the API reports, and the handlers that produce it.

Body: ``{"error": {"type", "code", "message", "param", "field"}}`` — OpenAI's error shape (so the
``openai`` client raises a proper ``APIStatusError``), with ``field`` naming the offending input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
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


_SOURCES = ("body", "query", "path", "header")
# A location element that is not a plain name is a tag pydantic adds for a union member or a constrained
# type ("constrained-str", "list[constrained-str]", "function-after[check_text(), constrained-str]").
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BARE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "set", "tuple", "none"})
# Pydantic error types meaning "wrong JSON type", and what the value should have been.
_EXPECTED = {"string_type": "a string", "list_type": "a list", "dict_type": "an object", "model_type": "an object",
             "model_attributes_type": "an object", "int_type": "an integer", "int_parsing": "an integer",
             "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
             "bool_type": "a boolean", "bool_parsing": "a boolean", "literal_error": None}


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in _BARE_TAGS or not _PLAIN_NAME.match(part))


def _split_loc(error: Mapping[str, Any]) -> tuple[list[str], tuple[Any, ...] | None, Any]:
    """The field path without source and tags, where the first union on the path is, and its member's tag.

    The first name under the source is always the field (a header such as ``Idempotency-Key`` is not a tag);
    so is the last element of ``extra_forbidden``, which is a key the client sent.
    """
    loc = tuple(error.get("loc", ()))
    rest = loc[1:] if loc and loc[0] in _SOURCES else loc
    parts: list[str] = []
    union_at: tuple[Any, ...] | None = None
    member: Any = None
    for i, part in enumerate(rest):
        protected = i == 0 or (i == len(rest) - 1 and error.get("type") == "extra_forbidden")
        if not protected and _is_tag(part):
            if union_at is None:
                union_at, member = rest[:i], part
            continue
        parts.append(str(part))
    return parts, union_at, member


def _field_of(error: Mapping[str, Any]) -> str | None:
    # The first element says where the value came from (body, query, path, header); the rest is the field.
    parts = _split_loc(error)[0]
    return ".".join(parts) if parts else ("body" if tuple(error.get("loc", ()))[:1] == ("body",) else None)


def _describe(error: Mapping[str, Any], field: str | None, expected: list[str]) -> str:
    """A message naming the rule the client broke, for the common cases; pydantic's own otherwise."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    name = field or "body"
    if kind == "missing":
        return f"{name} is required"
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return f"{name} must not be empty" if least == 1 else f"{name} must have at least {least} characters"
    if kind == "string_too_long":
        return f"{name} must have at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return f"{name} must not be an empty list" if least == 1 else f"{name} must hold at least {least} items"
    if kind == "too_long":
        return f"{name} must hold at most {ctx.get('max_length')} items"
    if kind == "extra_forbidden":
        return f"{name} is not a known field"
    if expected:
        return f"{name} must be {' or '.join(expected)}"
    message = str(error.get("msg", "invalid value"))
    return f"{name}: {message}" if field else message


def _rank(error: Mapping[str, Any]) -> tuple[bool, int]:
    return error.get("type") not in _EXPECTED, len(_split_loc(error)[0])


def _closest(group: list[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], list[str]]]:
    """Of the errors one union produced, those of the member that matched the value's JSON type best.

    A member that took the value's type and failed a rule (an empty string, a control character) beats
    members of the wrong type; a deeper error beats a shallower one (``input.3`` beats ``input``). A type
    mismatch lists every type the members at that place expected ("input must be a string or a list").
    """
    members: dict[Any, list[Mapping[str, Any]]] = {}
    for error in group:
        members.setdefault(_split_loc(error)[2], []).append(error)
    chosen = max(members.values(), key=lambda errors: max(map(_rank, errors)))  # max keeps the first of equals
    result = []
    for error in chosen:
        expected: list[str] = []
        if not _rank(error)[0]:
            place = _split_loc(error)[0]
            for other in group:
                noun = _EXPECTED.get(str(other.get("type")))
                if noun and _split_loc(other)[0] == place and noun not in expected:
                    expected.append(noun)
        result.append((error, expected))
    return result


def _validation_errors(errors: list[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], str | None, str]]:
    """(error, field, message) per failed input; of each union only the closest member's errors are kept."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for index, error in enumerate(errors):
        union_at = _split_loc(error)[1]
        groups.setdefault(("union", union_at) if union_at is not None else ("error", index), []).append(error)
    result = []
    for group in groups.values():
        for error, expected in _closest(group):
            field = _field_of(error)
            result.append((error, field, _describe(error, field, expected)))
    return result


async def _api_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response(exc.body(), exc.status_code, exc.headers)


def validation_error_body(exc: RequestValidationError) -> tuple[int, dict[str, Any]]:
    """(status, error body) for a request that failed validation: 400 for broken JSON, else 422 naming the
    first offending field, every one listed under ``details``."""
    errors = list(exc.errors()) or [{"loc": ("body",), "msg": "invalid request", "type": "value_error"}]
    if errors[0].get("type") == "json_invalid":
        return 400, error_body("invalid_request_error", "invalid_json",
                               f"request body is not valid JSON: {errors[0].get('msg')}", "body")
    reported = _validation_errors(errors)
    first, field, message = reported[0]
    body = error_body("invalid_request_error", str(first.get("type", "invalid_value")), message, field)
    body["error"]["details"] = [{"field": f, "code": str(e.get("type")), "message": m} for e, f, m in reported[:20]]
    return 422, body


async def _validation_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    status, body = validation_error_body(exc)
    return json_response(body, status)


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
