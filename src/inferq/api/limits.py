"""Size limits: the request body, enforced before it is buffered (FastAPI has none), and
the pixels of an image, checked from its header before anything decodes it."""

from __future__ import annotations

import io
import json
import struct
import warnings
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferq.api import problems
from inferq.errors import UnsupportedMediaType
from inferq.schemas import Image


class BodyTooLarge(Exception):
    """Raised inside ``receive`` once a streamed body passes the limit."""


def _problem_bytes(limit: int) -> bytes:
    return json.dumps({
        "type": "urn:inferq:problem:payload-too-large",
        "title": "Payload too large",
        "status": 413,
        "detail": f"the request body is larger than {limit} bytes",
    }).encode()


class BodyLimitMiddleware:
    """Answer 413 when Content-Length, or the bytes actually streamed, exceed ``limit``."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0
        exceeded = False
        replaced = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app makes of the aborted body (frameworks turn it into a 400
            # or 500), the client is told the truth: 413.
            nonlocal replaced
            if exceeded:
                if not replaced:
                    replaced = True
                    await self._reject(send)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not replaced:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = _problem_bytes(self.limit)
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/problem+json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})


# --- image pixel limit ---------------------------------------------------------------------

#: Formats an image field may hold (the same as ``inferq.schemas.Image`` sniffs).
_PIL_FORMATS = ["PNG", "JPEG", "WEBP", "GIF"]


def _images(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[str, Image]]:
    """Every Image inside a validated input, with the dotted field that holds it."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, Image):
            yield ".".join(map(str, where)), item
        elif isinstance(item, BaseModel):
            stack.extend((getattr(item, name), (*where, name))
                         for name in type(item).model_fields)
        elif isinstance(item, dict):
            stack.extend((v, (*where, str(k))) for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((v, (*where, i)) for i, v in enumerate(item))


def check_image(image: Image, field: str, max_pixels: int) -> None:
    """Refuse a decompression bomb (413) or bytes Pillow cannot read (415), naming ``field``.

    Only the header is parsed and the chunks checked (``verify``); nothing is decoded.
    Pillow merely *warns* between ``MAX_IMAGE_PIXELS`` and twice that, so the warning is
    made an error, and the pixel count is compared here as well.
    """
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        saved = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = max_pixels
        try:
            with PILImage.open(io.BytesIO(image.data), formats=_PIL_FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise PILImage.DecompressionBombError(f"{width * height} pixels")
                img.verify()
        except (PILImage.DecompressionBombWarning, PILImage.DecompressionBombError):
            raise problems.too_large(
                field, f"the image has more than {max_pixels} pixels"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                struct.error) as exc:
            raise UnsupportedMediaType(
                f"{field}: the image is truncated or corrupt ({exc})",
                [{"field": field, "message": "truncated or corrupt image"}],
            ) from None
        finally:
            PILImage.MAX_IMAGE_PIXELS = saved


def check_images(value: Any, where: tuple[str | int, ...], max_pixels: int) -> None:
    """``check_image`` on every image of a validated input (``where``: ``("input",)``)."""
    for field, image in _images(value, where):
        check_image(image, field, max_pixels)
