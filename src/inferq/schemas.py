"""The data that crosses process boundaries: jobs, their states, model descriptions.

Everything here is plain pydantic and JSON. The client SDK imports this module and
``errors`` only, so nothing here may import a server-side dependency.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema


def new_job_id() -> str:
    """A new job id: a UUIDv7 (RFC 9562), so ids sort by creation time.

    Listing newest-first and cursor pagination rely on that order.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & (2**62 - 1))
    return str(uuid.UUID(int=value))


class JobStatus(StrEnum):
    """Where a job is in its life: ``queued → running → succeeded | failed | canceled``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        """True for the states a job never leaves."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class JobError(BaseModel):
    """Why a job failed: the exception's type name and message, as data."""

    type: str
    message: str


class JobMetrics(BaseModel):
    """Timings of one job, in milliseconds, and the size of the batch it ran in."""

    queue_ms: float | None = None
    inference_ms: float | None = None
    batch_size: int | None = None


WebhookEvent = Literal["start", "completed"]
_DEFAULT_EVENTS: tuple[WebhookEvent, ...] = ("completed",)


class WebhookAttempt(BaseModel):
    """One try at delivering a webhook: when, for which event, and how it went."""

    at: datetime
    event: str
    message_id: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None


class Job(BaseModel):
    """A job as the API shows it. ``input`` is a summary (images are described, not echoed).

    ``attempts`` counts the times a worker started it (more than one after a crash or a
    retry); ``duplicate_executions`` counts runs that finished after the terminal state
    was already written (at-least-once delivery: counted, never written).
    """

    id: str
    model: str
    status: JobStatus
    input: dict[str, Any] = Field(default_factory=dict)
    output: Any = None
    error: JobError | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    webhook: str | None = None
    webhook_events: list[WebhookEvent] = Field(default_factory=list)
    attempts: int = 0
    duplicate_executions: int = 0
    webhook_attempts: list[WebhookAttempt] = Field(default_factory=list)


@dataclass
class FinishItem:
    """One terminal write of ``JobStore.finish_many``: the arguments of ``finish``."""

    job_id: str
    status: JobStatus
    output: Any = None
    error: JobError | None = None
    metrics: JobMetrics | None = None
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class JobPage(BaseModel):
    """One page of ``GET /v1/jobs``: newest first; pass ``next_cursor`` to get the next."""

    jobs: list[Job]
    next_cursor: str | None = None


class SubmitRequest(BaseModel):
    """The JSON body of ``POST /v1/models/{model}/jobs``: ``input``, or ``inputs`` for a
    batch job whose output is the list of outputs in order."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] | None = None
    inputs: list[dict[str, Any]] | None = None
    webhook: str | None = None
    webhook_events: list[WebhookEvent] = Field(default_factory=lambda: list(_DEFAULT_EVENTS))


class ModelInfo(BaseModel):
    """What ``GET /v1/models/{model}`` says about a served model."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    max_batch_size: int
    batch_timeout_s: float
    workers_online: int


class WorkerInfo(BaseModel):
    """A worker's heartbeat, as kept in the job store."""

    id: str
    models: list[str]
    hostname: str
    pid: int
    device: str = "cpu"
    last_seen: datetime


# --- Image fields -----------------------------------------------------------------------

#: Formats an image field accepts, by the magic bytes that start the file.
IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
ALLOWED_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.I)


def sniff_image_type(data: bytes) -> str | None:
    """The media type of ``data`` judged by its first bytes, or None if it is no image we take.

    Content-Type headers and file names are never trusted: only the bytes are.
    """
    for magic, media_type in IMAGE_SIGNATURES:
        if data.startswith(magic):
            return media_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class Image:
    """An image given to a model: its bytes and sniffed media type.

    In JSON an image is a ``data:`` URI (``data:image/png;base64,...``); in a multipart
    upload it is a file part. Only PNG, JPEG, WebP and GIF are taken, judged by the
    bytes. ``open()`` decodes it with Pillow, imported only then.
    """

    __slots__ = ("data", "media_type")

    def __init__(self, data: bytes, media_type: str | None = None) -> None:
        sniffed = sniff_image_type(data)
        if sniffed is None:
            raise PydanticCustomError(
                "not_an_image",
                "not an image: expected PNG, JPEG, WebP or GIF bytes",
            )
        self.data = data
        self.media_type = media_type if media_type in ALLOWED_IMAGE_TYPES else sniffed
        if media_type is not None and media_type != sniffed:
            self.media_type = sniffed

    def __repr__(self) -> str:
        return f"Image({self.media_type}, {len(self.data)} bytes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def to_data_uri(self) -> str:
        """The image as a ``data:`` URI, the form it takes in JSON."""
        return f"data:{self.media_type};base64," + base64.b64encode(self.data).decode("ascii")

    def open(self) -> Any:
        """Decode with Pillow (imported here so the API can describe images without it)."""
        import io

        from PIL import Image as PILImage

        img = PILImage.open(io.BytesIO(self.data), formats=["PNG", "JPEG", "WEBP", "GIF"])
        img.load()
        return img

    def summary(self) -> dict[str, Any]:
        """What a job record shows instead of the bytes."""
        return {"type": "image", "media_type": self.media_type, "bytes": len(self.data)}

    @classmethod
    def _validate(cls, value: Any) -> Image:
        if isinstance(value, Image):
            return value
        if isinstance(value, bytes | bytearray):
            return cls(bytes(value))
        if isinstance(value, str):
            match = _DATA_URI.match(value)
            if match is None:
                raise PydanticCustomError(
                    "image_uri",
                    "expected an image as a data: URI (data:image/png;base64,...) "
                    "or as a file upload",
                )
            try:
                data = base64.b64decode(value[match.end() :], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise PydanticCustomError(
                    "image_uri", "the data: URI does not hold valid base64"
                ) from exc
            return cls(data, match.group("mime"))
        raise PydanticCustomError("image_type", "expected an image (data: URI or file upload)")

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.to_data_uri(), when_used="json"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "format": "data-url",
            "contentMediaType": "image/*",
            "contentEncoding": "base64",
            "x-inferq-image": True,
            "description": "An image (PNG, JPEG, WebP or GIF): a data: URI in JSON, "
            "or a file part in multipart/form-data.",
        }
