"""Texts that are embedded refuse NUL, the other C0 control characters but tab/LF/CR, and DEL (in-process, no Ray).

One rule (serve_app.schemas.check_text) for /v1/embeddings ``input``, /vectors/embed and
/vectors/embed:batch ``text``, /vectors/mock ``text`` and /vectors/search ``query``: 422
``control_characters`` naming the exact input. PostgreSQL text cannot hold NUL, so an accepted NUL would
break the write path there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serve_app.db import Job
from serve_app.db.database import Database
from serve_app.settings import Settings
from tests.unit.test_api_inprocess import ALL_ROUTERS, bearer, make_client

SEGMENT = {"asset_id": "a", "segment_id": "s"}
REFUSED = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x0e", "\x1b", "\x1f", "\x7f"]
ALLOWED = ["\t", "\n", "\r", "\u0085", "é", "\u2028"]


def routes(text: str) -> list[tuple[str, dict[str, Any], str]]:
    """(path, body, field) for every route that embeds a text, with ``text`` in the named field."""
    batch = [{**SEGMENT, "segment_id": f"s{i}", "text": "ok"} for i in range(3)]
    return [
        ("/v1/embeddings", {"input": text}, "input"),
        ("/v1/embeddings", {"input": ["ok", "ok", text]}, "input.2"),
        ("/vectors/embed", {**SEGMENT, "text": text}, "text"),
        ("/vectors/embed:batch", {"segments": [*batch, {**SEGMENT, "text": text}]}, "segments.3.text"),
        ("/vectors/mock", {**SEGMENT, "text": text}, "text"),
        ("/vectors/search", {"query": text}, "query"),
    ]


@pytest.mark.parametrize(("path", "body", "field"), routes("before\x00after"),
                         ids=[f"{p} {f}" for p, _, f in routes("")])
async def test_nul_is_refused_naming_the_exact_input(tmp_path: Path, path: str, body: dict[str, Any],
                                                     field: str) -> None:
    async with make_client(tmp_path, routers=ALL_ROUTERS) as client:
        response = await client.post(path, json=body, headers=bearer())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"], error["type"]) == ("control_characters", field, "invalid_request_error")
    assert "U+0000" in error["message"] and "position 6" in error["message"] and field in error["message"]
    with Database(Settings(data_dir=tmp_path).resolved_database_url).sessions() as session:
        assert session.query(Job).count() == 0, "a refused write recorded a job"


@pytest.mark.parametrize("character", REFUSED, ids=[f"U+{ord(c):04X}" for c in REFUSED])
async def test_every_refused_control_character(tmp_path: Path, character: str) -> None:
    async with make_client(tmp_path, routers=ALL_ROUTERS) as client:
        for path, body, field in routes(f"a{character}b"):
            response = await client.post(path, json=body, headers=bearer())
            assert response.status_code == 422, (path, response.text)
            assert response.json()["error"]["code"] == "control_characters", (path, response.text)
            assert response.json()["error"]["field"] == field


@pytest.mark.parametrize("character", ALLOWED, ids=[f"U+{ord(c):04X}" for c in ALLOWED])
async def test_tab_newlines_and_other_characters_are_text(tmp_path: Path, character: str) -> None:
    async with make_client(tmp_path) as client:
        embedded = await client.post("/v1/embeddings", json={"input": [f"line one{character}line two"]})
        assert embedded.status_code == 200, embedded.text
        accepted = await client.post("/vectors/embed", headers=bearer(),
                                     json={**SEGMENT, "text": f"line one{character}line two"})
        assert accepted.status_code == 202, accepted.text
