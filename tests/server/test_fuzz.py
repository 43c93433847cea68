"""schemathesis fuzzes every operation of the OpenAPI document against the app: whatever it
sends, the service never answers 5xx, every error follows the one error schema, and every
response conforms to the document."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.failures import FailureGroup

from .conftest import World, tree_with_text


@pytest.mark.slow
def test_no_input_makes_the_service_fail(world: World) -> None:
    tree_with_text(world)
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.client.app)
    headers = world.headers(world.writer)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12  # every route of the document is fuzzed
    failures: list[str] = []
    for operation in operations:

        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(headers=headers)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, (where, response.text)
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"}, (where, body)
                assert set(body["error"]) == {"type", "message", "code"}, (where, body)
                assert body["error"]["code"] == response.status_code, (where, body)
            elif "text/event-stream" not in response.headers.get("content-type", ""):
                case.validate_response(response)

        try:
            fuzz()
        except (AssertionError, FailureGroup) as exc:  # report every failing operation
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n".join(failures)
