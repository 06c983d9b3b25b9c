"""schemathesis against the server's own OpenAPI schema: no 5xx, no hang (bounded run).

Runs against `pdserve serve dummy:tiny-llama` (a real worker process with a tiny random model,
token-id prompts only) so that every generated request finishes in milliseconds.
"""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.server.conftest import TINY_MODEL

MAX_EXAMPLES = 40  # per operation
REQUEST_TIMEOUT_S = 15  # a hang fails the test instead of stalling CI


def fuzz(op, url: str, failures: list) -> None:
    """Send MAX_EXAMPLES generated requests to one operation; record any 5xx."""

    @given(case=op.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case):
        if isinstance(case.body, dict) and case.body.get("model"):
            case.body["model"] = TINY_MODEL  # reach past the 404 into generation
        response = case.call(base_url=url, timeout=REQUEST_TIMEOUT_S)
        if response.status_code >= 500:
            failures.append((op.path, case.body, response.status_code, response.text[:300]))

    check()


def test_fuzz_finds_no_server_error_and_no_hang(tiny_server):
    schema = schemathesis.openapi.from_url(f"{tiny_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions"}
    failures: list = []
    for op in operations:
        fuzz(op, tiny_server.url, failures)
    assert failures == []
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200
    assert tiny_server.check_integrity() == {"ok": True}
