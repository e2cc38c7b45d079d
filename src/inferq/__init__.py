"""inferq: serve machine-learning models asynchronously.

The names most users need::

    from inferq import Model, Image       # write a model
    from inferq import Client             # use a running service
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inferq.model import Model
from inferq.schemas import Image, Job, JobStatus

if TYPE_CHECKING:
    from inferq.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "Image", "Job", "JobStatus", "Model", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The client pulls in httpx; load it only when asked for.
    if name in ("Client", "AsyncClient"):
        import inferq.client

        return getattr(inferq.client, name)
    raise AttributeError(f"module 'inferq' has no attribute {name!r}")
