"""Sleeps for the seconds it is given: keeps a worker busy so that other jobs stay queued."""

import time

from pydantic import BaseModel, Field

from inferq import Model


class SlowPredict(Model):
    name = "slow-predict"
    description = "Sleeps for `seconds`, then answers."

    class Input(BaseModel):
        seconds: float = Field(ge=0, le=30)

    class Output(BaseModel):
        slept: float

    def predict(self, batch: list[Input]) -> list[Output]:
        for item in batch:
            time.sleep(item.seconds)
        return [self.Output(slept=i.seconds) for i in batch]
