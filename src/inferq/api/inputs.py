"""Reading a submit request: JSON or multipart, validated against the model's Input.

Nothing here talks to the broker: a request that fails here is never enqueued.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request

from inferq.api.problems import field_errors
from inferq.errors import InvalidInput, UnsupportedMediaType
from inferq.registry import ModelSpec
from inferq.schemas import Image, SubmitRequest, WebhookEvent
from inferq.webhooks.ssrf import check_webhook_url

#: Multipart parts that are not input fields.
RESERVED_PARTS = ("webhook", "webhook_events")
_SUMMARY_STR = 256
_SUMMARY_ITEMS = 20


class Submission(BaseModel):
    """A submit request, read and checked. A batch job has ``inputs`` instead of ``input``."""

    input: BaseModel | None = None
    inputs: list[BaseModel] | None = None
    webhook: str | None = None
    webhook_events: list[WebhookEvent] = ["completed"]


def validate_input(spec: ModelSpec, data: Any, where: tuple[str | int, ...] = ("input",)
                   ) -> BaseModel:
    """``data`` as the model's Input, or InvalidInput / UnsupportedMediaType naming fields."""
    field = ".".join(map(str, where))
    if not isinstance(data, dict):
        raise InvalidInput(f"{field} must be a JSON object",
                           [{"field": field, "message": "must be an object"}])
    try:
        return spec.input_type.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc.errors(), where)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        if any(e["type"] == "not_an_image" for e in exc.errors()):
            raise UnsupportedMediaType(detail, errors) from None
        raise InvalidInput(detail, errors) from None


async def _check_webhook(url: str | None, allow_nets: str) -> str | None:
    if url is None or url == "":
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("webhook must be an http(s) URL",
                           [{"field": "webhook", "message": "must be an http(s) URL"}])
    # Refuse URLs that resolve to internal addresses (SSRF). It resolves the host: a
    # blocking call, so off the event loop.
    await run_in_threadpool(check_webhook_url, url, allow_nets)
    return url


def check_json_depth(value: Any, limit: int, field: str = "(body)") -> None:
    """InvalidInput naming ``field`` if ``value`` nests objects/arrays deeper than ``limit``.

    Iterative, so a hostile body cannot exhaust the stack here.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise _too_deep(limit, field)
        stack.extend((child, depth + 1) for child in children)


def _too_deep(limit: int, field: str = "(body)") -> InvalidInput:
    return InvalidInput(f"{field}: JSON nested deeper than {limit} levels",
                        [{"field": field, "message": f"nested deeper than {limit} levels"}])


def request_hash(model: str, payload: Any, batch: bool, webhook: str | None,
                 webhook_events: list[str]) -> str:
    """SHA-256 of a canonical JSON of what a submit asks for (for ``Idempotency-Key``).

    ``payload`` is the *validated* input as JSON, so the same input sent as JSON or as
    multipart (an image as a data: URI or as a file part) hashes alike.
    """
    canonical = json.dumps(
        {"model": model, "batch": batch, "input": payload, "webhook": webhook,
         "webhook_events": sorted(set(webhook_events)) if webhook else []},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


async def _read_json_request(req: SubmitRequest, spec: ModelSpec, max_inputs: int,
                             allow_nets: str) -> Submission:
    webhook = await _check_webhook(req.webhook, allow_nets)
    if (req.input is None) == (req.inputs is None):
        raise InvalidInput("give exactly one of input (one job) or inputs (a batch job)",
                           [{"field": "input", "message": "give input or inputs"}])
    if req.input is not None:
        return Submission(input=validate_input(spec, req.input), webhook=webhook,
                          webhook_events=req.webhook_events)
    assert req.inputs is not None
    if not 1 <= len(req.inputs) <= max_inputs:
        raise InvalidInput(
            f"inputs must hold 1 to {max_inputs} items, not {len(req.inputs)}",
            [{"field": "inputs", "message": f"1 to {max_inputs} items"}],
        )
    items = [validate_input(spec, item, ("inputs", i)) for i, item in enumerate(req.inputs)]
    return Submission(inputs=items, webhook=webhook, webhook_events=req.webhook_events)


async def read_submission(
    request: Request,
    spec: ModelSpec,
    max_inputs: int,
    *,
    max_json_depth: int = 32,
    webhook_allow_nets: str = "",
) -> Submission:
    """Parse and validate the body of ``POST /v1/models/{model}/jobs``.

    JSON nested deeper than ``max_json_depth`` is refused (422) before validation.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except RecursionError:
            raise _too_deep(max_json_depth) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"the body is not valid JSON: {exc}",
                               [{"field": "(body)", "message": "invalid JSON"}]) from None
        check_json_depth(body, max_json_depth)
        try:
            req = SubmitRequest.model_validate(body)
        except ValidationError as exc:
            errors = field_errors(exc.errors())
            raise InvalidInput("; ".join(f"{e['field']}: {e['message']}" for e in errors),
                               errors) from None
        return await _read_json_request(req, spec, max_inputs, webhook_allow_nets)
    if content_type == "multipart/form-data":
        return await _read_multipart(request, spec, max_json_depth, webhook_allow_nets)
    raise UnsupportedMediaType(
        f"send application/json or multipart/form-data, not {content_type or 'nothing'!r}",
        [{"field": "(body)", "message": "unsupported Content-Type"}],
    )


async def _read_multipart(request: Request, spec: ModelSpec, max_json_depth: int,
                          allow_nets: str) -> Submission:
    properties = spec.input_schema.get("properties", {})
    try:
        form = await request.form(max_files=32, max_fields=256)
    except Exception as exc:  # noqa: BLE001 - the multipart parser raises several types
        raise InvalidInput(f"the multipart body cannot be read: {exc}",
                           [{"field": "(body)", "message": "invalid multipart body"}]) from None
    data: dict[str, Any] = {}
    webhook: str | None = None
    events: list[str] = ["completed"]
    try:
        for key, value in form.multi_items():
            if key == "webhook" and isinstance(value, str):
                webhook = value
            elif key == "webhook_events" and isinstance(value, str):
                events = [e.strip() for e in value.split(",") if e.strip()]
            elif isinstance(value, UploadFile):
                data[key] = await value.read()
            else:
                data[key] = _form_value(properties.get(key, {}), value, max_json_depth)
    finally:
        await form.close()
    # As deep as the same input sent as JSON: {"input": {field: ...}}.
    check_json_depth({"input": data}, max_json_depth)
    checked_webhook = await _check_webhook(webhook, allow_nets)
    try:
        sub = Submission.model_validate(
            {"input": validate_input(spec, data), "webhook": checked_webhook,
             "webhook_events": events}
        )
    except ValidationError as exc:
        errors = field_errors(exc.errors())
        raise InvalidInput("; ".join(f"{e['field']}: {e['message']}" for e in errors),
                           errors) from None
    return sub


def _form_value(schema: dict[str, Any], value: str, max_json_depth: int) -> Any:
    # Form parts are strings; scalars are coerced by pydantic's lax mode, but objects and
    # arrays arrive as JSON text.
    if schema.get("type") in ("object", "array"):
        try:
            return json.loads(value)
        except RecursionError:
            raise _too_deep(max_json_depth) from None
        except ValueError:
            return value
    return value


def summarize(value: Any) -> Any:
    """What a job record keeps of an input: images described, long values shortened."""
    if isinstance(value, Image):
        return value.summary()
    if isinstance(value, BaseModel):
        return {k: summarize(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): summarize(v) for k, v in list(value.items())[:_SUMMARY_ITEMS]}
    if isinstance(value, list | tuple):
        items = [summarize(v) for v in value[:_SUMMARY_ITEMS]]
        if len(value) > _SUMMARY_ITEMS:
            items.append(f"... {len(value) - _SUMMARY_ITEMS} more")
        return items
    if isinstance(value, str) and len(value) > _SUMMARY_STR:
        return value[:_SUMMARY_STR] + f"... ({len(value)} chars)"
    if isinstance(value, bytes):
        return {"type": "bytes", "bytes": len(value)}
    return value
