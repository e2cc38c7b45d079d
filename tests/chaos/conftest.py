"""Fixtures of the fault-injection tests: the integration tests' services, and a summary.

The helpers (``Stack``, ``Counts``, ``SteadyLoad``, ...) are in ``tests/chaos/chaoslib.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tests.chaos.chaoslib import REPORTED, unique_namespace
from tests.integration.conftest import (  # noqa: F401 - fixtures, re-exported
    amqp_url,
    pg_schema,
    pg_url,
    redis_namespace,
    redis_url,
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Repeat every chaos test's counts at the end of the run (the CI log shows them)."""
    if REPORTED:
        terminalreporter.section("chaos counts")
        for counts in REPORTED:
            terminalreporter.write_line(counts.line())


@pytest.fixture
def shared_services(amqp_url: str, redis_url: str, redis_namespace: str  # noqa: F811
                    ) -> Callable[[str], dict[str, str]]:
    """``amqp_url``/``result_url``/``namespace`` for a Stack on the shared RabbitMQ and
    Redis; the namespace lies under the session's, so its Redis keys are deleted after."""

    def make(tag: str) -> dict[str, str]:
        return {"amqp_url": amqp_url, "result_url": redis_url,
                "namespace": unique_namespace(redis_namespace, tag)}

    return make
