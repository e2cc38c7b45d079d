"""The HTTP API: ``create_app(settings)``. Imports no model framework, ever."""

from inferq.api.app import create_app

__all__ = ["create_app"]
