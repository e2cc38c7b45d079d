"""Reports the size of the image it is given: exercises image fields without a framework."""

from pydantic import BaseModel

from inferq import Image, Model


class ImageSize(Model):
    name = "image-size"
    description = "Width and height of an image."

    class Input(BaseModel):
        image: Image
        label: str = ""

    class Output(BaseModel):
        width: int
        height: int
        label: str

    def predict(self, batch: list[Input]) -> list[Output]:
        out = []
        for item in batch:
            img = item.image.open()
            out.append(self.Output(width=img.width, height=img.height, label=item.label))
        return out
