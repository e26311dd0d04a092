"""Property-based fuzzing of every operation in the app's OpenAPI schema: no input may cause a 5xx
other than a documented 503 refusal (overload), and the app still serves afterwards.

Bounded: 15 examples per operation and mode (valid and invalid inputs), no example database, no
shrinking beyond Hypothesis' defaults, a dev token for one fuzzing tenant.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from tests.conftest import ServeApp
from tests.serve.helpers import auth

pytestmark = [pytest.mark.serve]

EXAMPLES = 15


def test_fuzz_every_operation_no_server_errors(serve_app: ServeApp) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{serve_app.url}/openapi.json", timeout=30)
    headers = auth("org-fuzz")
    failures: list[str] = []
    exercised: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case) -> None:  # type: ignore[no-untyped-def]
                response = case.call(base_url=serve_app.url, headers=headers, timeout=60)
                if response.status_code >= 500 and response.status_code != 503:
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                    f"{response.text[:200]} body={str(case.body)[:200]!r}")
                if response.status_code == 503:
                    assert "Retry-After" in response.headers, response.text

            try:
                fuzz()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # e.g. no parameters at all: nothing invalid to send
        exercised.append(f"{operation.method.upper()} {operation.path}")
    assert len(exercised) >= 10, exercised
    assert not failures, "\n".join(failures[:20])
    assert httpx.get(f"{serve_app.url}/readyz", timeout=30).status_code == 200
