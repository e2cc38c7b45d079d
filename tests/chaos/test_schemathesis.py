"""Fault #8: Schemathesis against the live API's OpenAPI spec: no 5xx, whatever the input.

A real ``inferq api`` (INFERQ_AUTH=off) on the shared RabbitMQ and Redis, in a namespace
of its own, with one ``echo`` worker so that submitted jobs also run. Schemathesis reads
``/openapi.json`` and generates up to ``MAX_EXAMPLES`` requests per operation and mode -- valid
(positive) and invalid (negative) -- and
every answer must not be a server error (check ``not_a_server_error``). It prints how
many cases ran and the status codes seen. (Schemathesis's own pytest integration,
``schemathesis.pytest.from_fixture``, breaks on pytest 9; the test drives hypothesis with
each operation's strategy instead: positive cases, then negative ones.)

Traffic stays on 127.0.0.1: a generated webhook URL naming a host (which the API would
resolve, for its SSRF check) gets the host ``127.0.0.1`` instead; the API refuses it.

Bounded: ``MAX_EXAMPLES`` per operation, a request timeout, at most ``BUDGET_S`` in all.
``INFERQ_CHAOS_SCHEMATHESIS_EXAMPLES`` changes the count.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from tests.chaos.chaoslib import Counts, Stack, env_int

pytestmark = pytest.mark.chaos

MAX_EXAMPLES = env_int("INFERQ_CHAOS_SCHEMATHESIS_EXAMPLES", 80)
MIN_CASES = 300
BUDGET_S = 600.0


@pytest.fixture
def live_api(tmp_path: Path, shared_services: Callable[[str], dict[str, str]]
             ) -> Iterator[Stack]:
    with Stack(tmp_path, models=["echo"], workers=1, api_loglevel="warning",
               **shared_services("st")) as stack:
        yield stack


def _local_only(body: Any) -> None:
    """Point a generated webhook URL with a host name at 127.0.0.1 (no DNS, no egress)."""
    if not isinstance(body, dict) or not isinstance(body.get("webhook"), str):
        return
    try:
        parts = urlsplit(body["webhook"])
        host = parts.hostname
    except ValueError:
        return
    if host is None:
        return
    try:
        ipaddress.ip_address(host)
        return  # a literal address: no lookup
    except ValueError:
        pass
    body["webhook"] = urlunsplit(parts._replace(netloc="127.0.0.1"))


def test_no_server_error_on_generated_requests(
    live_api: Stack, record_property: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    deadline = started + BUDGET_S
    schema = schemathesis.openapi.from_url(f"{live_api.url}/openapi.json")
    codes: Counter[int] = Counter()
    per_operation: Counter[str] = Counter()
    server_errors: list[str] = []

    def check(case: Any) -> None:
        assert time.monotonic() < deadline, f"over the {BUDGET_S:g} s budget"
        _local_only(case.body)
        response = case.call(timeout=20)
        codes[response.status_code] += 1
        per_operation[f"{case.method} {case.path}"] += 1
        if response.status_code >= 500:
            server_errors.append(f"{response.status_code} {case.as_curl_command()}\n"
                                 f"  -> {response.text[:300]}")
            return  # keep generating: collect every distinct 5xx, report at the end
        case.validate_response(response, checks=[not_a_server_error])

    operations = [r.ok() for r in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                           suppress_health_check=list(HealthCheck))(
                given(case=operation.as_strategy(generation_mode=mode))(check))
            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): positive cases only.
                assert mode == GenerationMode.NEGATIVE
    cases = sum(codes.values())
    counts = Counts("schemathesis", submitted=cases)
    counts.extra.update(operations=len(operations), cases=cases,
                        server_errors=len(server_errors), codes=dict(sorted(codes.items())),
                        seconds=round(time.monotonic() - started))
    counts.report(record_property)
    log = (live_api.tmp / "api.log").read_text(errors="replace")
    assert not server_errors, "\n".join(server_errors[:10])
    assert "Traceback" not in log, log[-3000:]
    assert cases >= MIN_CASES, f"only {cases} cases ran: {dict(per_operation)}"
