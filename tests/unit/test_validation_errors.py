"""Validation errors name the exact input and the rule it broke (in-process app, no Ray).

Pydantic reports a union member or constrained type as part of the location
(``input.constrained-str``, ``input.list[...].3``) and reports every member of a union, the wrong
ones first; the error handler keeps the member that matched the value's JSON type and drops the tags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_api_inprocess import ALL_ROUTERS, bearer, make_client

SEGMENT = {"asset_id": "a", "segment_id": "s"}

# (path, body, field, code, message)
CASES: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("/v1/embeddings", {"input": ""}, "input", "string_too_short", "input must not be empty"),
    ("/v1/embeddings", {"input": [""]}, "input.0", "string_too_short", "input.0 must not be empty"),
    ("/v1/embeddings", {"input": ["ok", "ok", "ok", ""]}, "input.3", "string_too_short", "input.3 must not be empty"),
    ("/v1/embeddings", {"input": []}, "input", "too_short", "input must not be an empty list"),
    ("/v1/embeddings", {"input": 3}, "input", "string_type", "input must be a string or a list"),
    ("/v1/embeddings", {"input": ["ok", 3]}, "input.1", "string_type", "input.1 must be a string"),
    ("/v1/embeddings", {"input": [[1, 2, 3]]}, "input.0", "string_type", "input.0 must be a string"),
    ("/v1/embeddings", {}, "input", "missing", "input is required"),
    ("/v1/embeddings", {"input": "x", "temperature": 1}, "temperature", "extra_forbidden",
     "temperature is not a known field"),
    ("/vectors/embed", {**SEGMENT, "text": ""}, "text", "string_too_short", "text must not be empty"),
    ("/vectors/embed:batch", {"segments": [{**SEGMENT, "text": "ok"}, {**SEGMENT, "text": ""}]},
     "segments.1.text", "string_too_short", "segments.1.text must not be empty"),
    ("/vectors/embed:batch", {"segments": []}, "segments", "too_short", "segments must not be an empty list"),
    ("/vectors/mock", {**SEGMENT, "text": ""}, "text", "string_too_short", "text must not be empty"),
    ("/vectors/search", {"query": ""}, "query", "string_too_short", "query must not be empty"),
    ("/vectors/search", {"query": "q" * 2001}, "query", "string_too_long", "query must have at most 2000 characters"),
]


@pytest.mark.parametrize(("path", "body", "field", "code", "message"), CASES,
                         ids=[f"{c[0]} {c[1]}"[:80] for c in CASES])
async def test_validation_error_names_the_input_and_the_rule(tmp_path: Path, path: str, body: dict[str, Any],
                                                             field: str, code: str, message: str) -> None:
    async with make_client(tmp_path, routers=ALL_ROUTERS) as client:
        response = await client.post(path, json=body, headers=bearer())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["field"], error["param"], error["code"], error["message"]) == (field, field, code, message)
    assert error["type"] == "invalid_request_error"
    # One entry per failed input: the union members that did not match the value's type are not listed.
    assert error["details"][0] == {"field": field, "code": code, "message": message}


async def test_every_failed_input_is_listed_once_without_union_tags(tmp_path: Path) -> None:
    async with make_client(tmp_path) as client:
        response = await client.post("/v1/embeddings", json={"input": ["", "ok", 3, ""]})
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert [(d["field"], d["code"]) for d in details] == [
        ("input.0", "string_too_short"), ("input.2", "string_type"), ("input.3", "string_too_short")]


async def test_a_key_the_client_sent_is_never_taken_for_a_union_tag(tmp_path: Path) -> None:
    async with make_client(tmp_path) as client:
        response = await client.post("/v1/embeddings", json={"input": "x", "list[x]": 1})
        assert response.json()["error"]["field"] == "list[x]"
        response = await client.post("/vectors/embed:batch", headers=bearer(),
                                     json={"segments": [{**SEGMENT, "text": "t", "constrained-str": 1}]})
        assert response.json()["error"]["field"] == "segments.0.constrained-str"
