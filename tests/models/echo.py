"""Returns its input: the smallest model that exercises the whole path."""

from pydantic import BaseModel, Field

from inferq import Model


class Echo(Model):
    name = "echo"
    description = "Returns the text it was given, and the batch size it ran in."

    class Input(BaseModel):
        text: str = Field(max_length=10_000)
        repeat: int = Field(default=1, ge=1, le=10)

    class Output(BaseModel):
        text: str
        batch_size: int

    def predict(self, batch: list[Input]) -> list[Output]:
        return [self.Output(text=i.text * i.repeat, batch_size=len(batch)) for i in batch]
