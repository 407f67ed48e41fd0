"""schemathesis against the service's OpenAPI document, a bounded number of examples
per operation: no request, however malformed, gets a 5xx, and every error answer is
``application/problem+json``. Runs as the admin, so the operator endpoints are
exercised too (a logout gets a throwaway session of its own)."""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.fix_service import ADMIN_PASSWORD, ServiceProcess

EXAMPLES = 12
STATUSES: list[int] = []


@schemathesis.check
def errors_are_problems(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code >= 400:
        kind = response.headers.get("content-type", [""])
        kind = kind[0] if isinstance(kind, list) else kind
        if not kind.startswith("application/problem+json"):
            raise AssertionError(
                f"{case.method} {case.path}: {response.status_code} answered as {kind!r}, "
                "not application/problem+json"
            )
    return None


def login(service: ServiceProcess) -> str:
    response = httpx.post(
        f"{service.base}/sessions",
        json={"username": "admin", "password": ADMIN_PASSWORD},
        timeout=30,
    )
    return str(response.json()["token"])


def test_no_server_errors_and_problem_json(service: ServiceProcess) -> None:
    # (schemathesis' own pytest plugin does not run under this pytest, so the
    # operations are driven with hypothesis here.)
    schema = schemathesis.openapi.from_url(f"{service.base}/openapi.json")
    token = login(service)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20

    for operation in operations:
        run_operation(service, operation, token)
    # Both accepted and refused requests were made, many of each.
    assert sum(1 for s in STATUSES if s < 300) >= len(operations)
    assert sum(1 for s in STATUSES if 400 <= s < 500) >= len(operations)


def run_operation(service: ServiceProcess, operation: Any, token: str) -> None:
    logout = operation.method.upper() == "DELETE" and operation.path == "/sessions/current"

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        bearer = login(service) if logout else token
        response = case.call(
            base_url=service.base, headers={"Authorization": f"Bearer {bearer}"}, timeout=60
        )
        STATUSES.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, errors_are_problems])

    run()
