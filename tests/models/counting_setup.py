"""Appends its process id to $COUNTING_SETUP_FILE each time setup() runs, and reports the pid."""

import os

from pydantic import BaseModel

from inferq import Model


class CountingSetup(Model):
    name = "counting-setup"
    description = "Counts setup() calls per process."

    class Input(BaseModel):
        n: int = 0

    class Output(BaseModel):
        pid: int

    def setup(self) -> None:
        path = os.environ.get("COUNTING_SETUP_FILE")
        if path:
            with open(path, "a") as f:
                f.write(f"{os.getpid()}\n")

    def predict(self, batch: list[Input]) -> list[Output]:
        return [self.Output(pid=os.getpid()) for _ in batch]
