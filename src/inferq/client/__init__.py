"""The Python client of the inferq HTTP API: ``Client`` (blocking) and ``AsyncClient``.

::

    from inferq.client import Client

    with Client("http://127.0.0.1:8000") as client:
        print(client.run("mnist", {"image": Path("digit.png")}, timeout=30))

It needs httpx and pydantic only: no server dependency is imported. Errors come from
``inferq.errors``, plus ``HTTPError`` (an error status with no meaning of its own) and
``JobFailed`` (``run()`` found the job failed or canceled).
"""

from inferq.client._async import AsyncClient
from inferq.client._common import HTTPError, JobFailed
from inferq.client._sync import Client

__all__ = ["AsyncClient", "Client", "HTTPError", "JobFailed"]
