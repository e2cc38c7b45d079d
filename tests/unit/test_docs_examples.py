"""The examples in README.md run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_own_model_example_serves_through_the_runtime(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from inferq.queue.store import create_store
    from inferq.registry import ModelSpec
    from inferq.schemas import Job, JobStatus, new_job_id
    from inferq.worker.runtime import WorkerRuntime, WorkItem

    (block,) = [b for b in _python_blocks() if "class Doubler(Model)" in b]
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    doubler = namespace["Doubler"]
    store = create_store(f"sqlite:///{tmp_path}/jobs.sqlite", namespace="doc", result_ttl_s=60)
    spec = ModelSpec("doubler", doubler, doubler.max_batch_size, doubler.batch_timeout_s)
    runtime = WorkerRuntime({"doubler": spec}, store, "w", device="cpu")
    job = Job(id=new_job_id(), model="doubler", status=JobStatus.QUEUED,
              created_at=datetime.now(UTC))
    store.create(job)
    runtime.run_batch("doubler", [WorkItem(job.id, {"x": 21})])
    assert store.get(job.id).output == {"y": 42.0}


def test_the_client_example_names_only_public_api() -> None:
    (block,) = [b for b in _python_blocks() if "Client(" in b]
    import inferq

    assert "from inferq import Client" in block
    assert hasattr(inferq, "Client")
    for method in re.findall(r"client\.(\w+)\(", block):
        assert hasattr(inferq.Client, method), method
