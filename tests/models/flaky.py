"""Raises RetryableError the first `fail_times` times it sees a text (counted in a file)."""

import os
from pathlib import Path

from pydantic import BaseModel

from inferq import Model
from inferq.errors import RetryableError


class Flaky(Model):
    name = "flaky"
    description = "Transient failures: RetryableError fail_times times, then succeeds."
    max_retries = 3

    class Input(BaseModel):
        text: str
        fail_times: int = 1

    class Output(BaseModel):
        text: str
        tries: int

    def _count(self, text: str) -> int:
        folder = Path(os.environ.get("FLAKY_DIR", "/tmp/inferq-flaky"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{text}.count"
        n = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(n))
        return n

    def predict(self, batch: list[Input]) -> list[Output]:
        out = []
        for item in batch:
            tries = self._count(item.text)
            if tries <= item.fail_times:
                raise RetryableError(f"transient failure {tries} of {item.fail_times}")
            out.append(self.Output(text=item.text, tries=tries))
        return out
