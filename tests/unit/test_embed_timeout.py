"""An Embedder that does not answer in time is a 503 with Retry-After, not a hung request.

FakeStuckHandle is a fake of a Serve deployment handle whose calls never finish (a replica stuck in a
pass, or gone without the handle noticing).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.embedder_client import ServeEmbedderClient
from serve_app.errors import ApiError


class _Never:
    def remote(self, *args: Any) -> Any:
        return asyncio.get_running_loop().create_future()  # never resolved


class FakeStuckHandle:
    """Fake: ``embed`` and ``embed_many`` calls that never answer."""

    embed = _Never()
    embed_many = _Never()


@pytest.mark.parametrize("texts", [["one short text"], ["long"] * 300], ids=["merged", "direct"])
def test_an_embed_timeout_answers_503_with_retry_after(texts: list[str]) -> None:
    client = ServeEmbedderClient({"m": FakeStuckHandle()}, timeout_s=0.2)

    async def main() -> ApiError:
        with pytest.raises(ApiError) as caught:
            await client.embed("m", texts, tenant="org-a")
        return caught.value

    error = asyncio.run(main())
    assert error.status_code == 503
    assert int(error.headers["Retry-After"]) >= 1
    assert "did not answer in time" in error.message
