"""Kills its own worker process (``os._exit``) when the text is "kill": a poison job."""

import os

from pydantic import BaseModel

from inferq import Model


class KillWorker(Model):
    name = "kill-worker"
    description = "os._exit(137) on 'kill'; echoes otherwise."
    max_batch_size = 8
    batch_timeout_s = 0.05
    max_deliveries = 3

    class Input(BaseModel):
        text: str

    class Output(BaseModel):
        text: str
        pid: int

    def predict(self, batch: list[Input]) -> list[Output]:
        if any(item.text == "kill" for item in batch):
            os._exit(137)
        return [self.Output(text=i.text, pid=os.getpid()) for i in batch]
