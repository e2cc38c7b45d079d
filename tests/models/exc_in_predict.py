"""Raises in predict when the input says so; otherwise echoes."""

from pydantic import BaseModel

from inferq import Model


class ExcInPredict(Model):
    name = "exc-in-predict"
    description = "Raises ValueError for text 'boom'."

    class Input(BaseModel):
        text: str

    class Output(BaseModel):
        text: str

    def predict(self, batch: list[Input]) -> list[Output]:
        for item in batch:
            if item.text == "boom":
                raise ValueError("the model exploded on 'boom'")
        return [self.Output(text=i.text) for i in batch]
