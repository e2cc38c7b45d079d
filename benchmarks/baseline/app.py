"""The one-task-per-request baseline, API side (see ``tasks.py``): the tutorials' design.

``POST /predict`` (multipart, field ``image``) sends one Celery task and answers its id;
``GET /result/{task_id}`` reads Celery's Redis result backend (``AsyncResult``). The
client polls that every 0.1 s (``client.py``). Run it with::

    cd benchmarks && uvicorn baseline.app:app --port 8100
"""

from __future__ import annotations

import base64
from typing import Any

from baseline.tasks import TASK_NAME, celery_app
from celery.result import AsyncResult
from fastapi import FastAPI, File, UploadFile

app = FastAPI(title="one-task-per-request baseline")


@app.post("/predict")
def predict(image: UploadFile = File(...)) -> dict[str, str]:  # noqa: B008 - FastAPI idiom
    """Queue one task for the uploaded image; answer its id."""
    data = image.file.read()
    task = celery_app.send_task(TASK_NAME, args=[base64.b64encode(data).decode("ascii")])
    return {"task_id": task.id}


@app.get("/result/{task_id}")
def result(task_id: str) -> dict[str, Any]:
    """The task's Celery state, and its result or error once it is ready."""
    res = AsyncResult(task_id, app=celery_app)
    body: dict[str, Any] = {"task_id": task_id, "status": res.state}
    if res.successful():
        body["result"] = res.result
    elif res.failed():
        body["error"] = repr(res.result)
    return body
