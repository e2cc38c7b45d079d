"""Breaks the contract: returns one output fewer than it was given."""

from pydantic import BaseModel

from inferq import Model


class WrongCount(Model):
    name = "wrong-count"

    class Input(BaseModel):
        x: int

    class Output(BaseModel):
        x: int

    def predict(self, batch: list[Input]) -> list[Output]:
        return [self.Output(x=i.x) for i in batch][:-1]
