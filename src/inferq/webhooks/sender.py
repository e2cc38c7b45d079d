"""The webhook sender: a process that delivers what workers queued, off the inference path.

Run it with ``run_webhook_sender(settings)`` (the CLI starts one per deployment, or more:
they share the queue and the retry schedule safely). For each delivery it:

1. reads the job from the job store and builds the body
   ``{"type": "job.<event>", "timestamp": ..., "data": <the job>}``;
2. checks the URL again (``ssrf.check_webhook_url``: DNS may have changed since submit) and
   connects to the very address it checked, with the URL's host in ``Host`` (and as TLS SNI
   for https), so a DNS answer that changes between check and connect cannot point the
   request elsewhere; redirects are never followed (a 3xx is a failed attempt);
3. signs it (Standard Webhooks, ``signing.sign``) with the owner's secret, the
   ``webhook-id`` being the same on every retry;
4. records the attempt on the job (``store.add_webhook_attempt``: time, status code, error,
   duration);
5. 2xx: done. 410: the receiver wants no more; done. Anything else, a timeout or a
   connection error: the next attempt goes into the durable retry schedule
   (``schedule.RetrySchedule``), ``INFERQ_WEBHOOK_RETRY_SCHEDULE_S[n] x uniform(0.5, 1.5)``
   seconds later (full jitter spreads a recovered receiver's load); after the last delay the
   final attempt's error says ``gave up``.

The queue message is acknowledged only after the attempt is recorded and its retry
scheduled, so a sender killed mid-attempt loses nothing: the broker hands the message to
another sender, which tries again under the same ``webhook-id`` (at-least-once; receivers
dedupe by the id).

Concurrency: one thread talks to the broker (kombu channels are not thread-safe) and polls
the schedule every ``SCHEDULE_POLL_S``; HTTP runs in a pool of ``pool_size`` (8) threads.
A hanging receiver holds one thread for at most the timeout, never the others. The broker
prefetch is twice the pool, so the pool always has the next delivery at hand.
"""

# kombu ships no type hints: calls into it are untyped by necessity.


from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from kombu import Connection, Message  # type: ignore[attr-defined]

from inferq.config import Settings
from inferq.errors import JobNotFound, StoreUnavailable
from inferq.queue.celery_app import transport_options
from inferq.queue.store import JobStore, create_store
from inferq.schemas import Job, WebhookAttempt
from inferq.webhooks.publisher import webhook_queue
from inferq.webhooks.schedule import (
    Claimed,
    Delivery,
    RetrySchedule,
    create_schedule,
    now,
    parse_retry_schedule,
)
from inferq.webhooks.signing import new_secret, secret_key, sign
from inferq.webhooks.ssrf import IPAddress, UnsafeWebhookURL, check_webhook_url

log = logging.getLogger(__name__)

#: Threads doing HTTP at once.
DEFAULT_POOL_SIZE = 8
#: How often the retry schedule is checked for due deliveries (a timer, not a client wait).
SCHEDULE_POLL_S = 0.5
#: How long one broker wait lasts; completions are acknowledged between waits.
_DRAIN_TIMEOUT_S = 0.05
#: Pause before a delivery whose job store is down goes back to the queue.
_STORE_DOWN_PAUSE_S = 1.0
#: Lower bound of a claimed retry's lease; the lease also covers 4 timeouts.
_MIN_LEASE_S = 60.0
#: Jitter bounds: the delay is multiplied by uniform(low, high).
JITTER = (0.5, 1.5)
USER_AGENT = "inferq-webhooks/1"

Outcome = Literal["delivered", "stopped", "retry", "gave_up", "dropped"]
SecretFor = Callable[[str | None], str]


def server_secret(settings: Settings) -> str:
    """The secret that signs webhooks of jobs without an API key owner.

    ``INFERQ_WEBHOOK_SECRET`` if set; else one generated on first use and kept in
    ``home/webhook_secret`` (mode 0600), so every process of the deployment signs with the
    same secret and it survives restarts. ``inferq`` shows it so receivers can verify.
    """
    if settings.webhook_secret:
        secret_key(settings.webhook_secret)  # a malformed secret fails here, not per webhook
        return settings.webhook_secret
    path = settings.ensure_home() / "webhook_secret"
    with contextlib.suppress(FileNotFoundError):
        return _read_secret(path)
    secret = new_secret()
    tmp = path.with_name(f".webhook_secret.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    try:
        # link() fails if another process won the race: then its secret is the one.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    secret = path.read_text().strip()
    secret_key(secret)
    return secret


def build_body(job: Job, event: str) -> bytes:
    """The JSON body of ``event`` of ``job`` (``webhook_attempts`` left out: it is about us)."""
    at = job.finished_at if event == "completed" else job.started_at
    payload = {
        "type": f"job.{event}",
        "timestamp": (at or datetime.now(UTC)).astimezone(UTC).isoformat(),
        "data": job.model_dump(mode="json", exclude={"webhook_attempts"}),
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def jittered(delay: float, rng: Callable[[float, float], float] = random.uniform) -> float:
    """``delay`` times uniform(0.5, 1.5): retries of many webhooks spread out."""
    return delay * rng(*JITTER)


@dataclass
class AttemptResult:
    """How one HTTP attempt went."""

    status_code: int | None
    error: str | None
    retry: bool  # False: delivered, or the receiver/URL says never again
    connect_failed: bool = False  # no connection at all: another address may work


@dataclass
class _InFlight:
    """What a running future is about: a queue message, or a claimed schedule entry."""

    message: Message | None
    generation: int
    claimed: Claimed | None


class WebhookSender:
    """Delivers webhooks from the queue and the retry schedule. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        secret_for: SecretFor | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        store: JobStore | None = None,
        schedule: RetrySchedule | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.settings = settings
        self.delays = parse_retry_schedule(settings.webhook_retry_schedule_s)
        self.pool_size = pool_size
        self.store = store or create_store(
            settings.result_url, namespace=settings.namespace, result_ttl_s=settings.result_ttl_s
        )
        self.schedule = schedule or create_schedule(settings)
        if secret_for is None:
            fallback = server_secret(settings)

            def secret_for(_owner: str | None) -> str:
                return fallback

        self.secret_for: SecretFor = secret_for
        self.lease_s = max(_MIN_LEASE_S, 4 * settings.webhook_timeout_s)
        self._pool = ThreadPoolExecutor(pool_size, thread_name_prefix="webhook")
        # One client for every thread (it is thread-safe; building one costs ~20 ms of CPU
        # for its TLS context). trust_env=False: an HTTP(S)_PROXY from the environment would
        # connect to the name again, undoing the pinning. follow_redirects=False: a redirect
        # could point anywhere; the check covered this URL only. No keep-alive: pooled
        # connections are keyed by address, and one opened (and TLS-verified) for one host
        # must never carry a request for another host on the same address.
        self._http = httpx.Client(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            trust_env=False,
            verify=verify,  # certificates are checked (against the URL's host); tests pass a CA
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )
        self._done: queue.Queue[Future[Outcome]] = queue.Queue()
        self._inflight: dict[Future[Outcome], _InFlight] = {}
        self._generation = 0
        self._next_poll = 0.0

    # --- one delivery -------------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> tuple[Outcome, tuple[Delivery, float] | None]:
        """Make one attempt at ``delivery`` and record it on the job.

        Returns the outcome and, for ``retry``, the next delivery with its due time (the
        caller schedules it). StoreUnavailable propagates: nothing was recorded.
        """
        try:
            job = self.store.get(delivery.job_id)
        except JobNotFound:
            log.info("webhook %s dropped: job %s is gone", delivery.message_id, delivery.job_id)
            return "dropped", None
        if not job.webhook:
            return "dropped", None
        started = time.monotonic()
        at = datetime.now(UTC)
        result = self.attempt(job, delivery)
        duration_ms = (time.monotonic() - started) * 1000
        number = delivery.attempt + 1
        outcome: Outcome
        retry: tuple[Delivery, float] | None = None
        error = result.error
        if not result.retry:
            outcome = "delivered" if result.error is None else "stopped"
        elif number > len(self.delays):
            outcome = "gave_up"
            error = f"{error}; gave up after {number} attempts"
        else:
            outcome = "retry"
            due = now() + jittered(self.delays[number - 1])
            retry = (replace(delivery, attempt=number), due)
        self.store.add_webhook_attempt(
            job.id,
            WebhookAttempt(
                at=at,
                event=delivery.event,
                message_id=delivery.message_id,
                status_code=result.status_code,
                error=error,
                duration_ms=round(duration_ms, 3),
            ),
        )
        level = logging.DEBUG if outcome == "delivered" else logging.WARNING
        log.log(level, "webhook %s attempt %d: %s (%s)", delivery.message_id, number, outcome,
                error or result.status_code)
        return outcome, retry

    def attempt(self, job: Job, delivery: Delivery) -> AttemptResult:
        """One signed POST of ``delivery`` to ``job.webhook``, to a checked address only."""
        assert job.webhook is not None
        try:
            addresses = check_webhook_url(job.webhook, self.settings.webhook_allow_nets)
        except UnsafeWebhookURL as exc:
            return AttemptResult(None, str(exc), retry=exc.retryable)
        try:
            secret = self.secret_for(self._owner(delivery))
            body = build_body(job, delivery.event)
            headers = sign(secret, delivery.message_id, int(time.time()), body)
        except Exception as exc:  # noqa: BLE001 - a bad secret is a failed attempt, recorded
            return AttemptResult(None, f"signing failed: {type(exc).__name__}: {exc}", True)
        headers["content-type"] = "application/json"
        headers["user-agent"] = USER_AGENT
        last = AttemptResult(None, "no address to connect to", True)
        for ip in addresses:
            last = self._post(job.webhook, ip, body, headers)
            if not last.connect_failed:
                return last
            # No connection to this address: the name may have another (IPv4 and IPv6).
        return last

    def _owner(self, delivery: Delivery) -> str | None:
        """The API key owner whose secret signs: from the message, else from the store."""
        if delivery.owner is not None:
            return delivery.owner
        owner_of = getattr(self.store, "owner_of", None)  # optional store method
        return owner_of(delivery.job_id) if callable(owner_of) else None

    def _post(self, url: str, ip: IPAddress, body: bytes, headers: dict[str, str]) -> AttemptResult:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        pinned = urlunsplit((scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
        extensions: dict[str, Any] = {}
        if scheme == "https":
            # TLS to the pinned address still names (and verifies) the URL's host.
            extensions["sni_hostname"] = host
        timeout = self.settings.webhook_timeout_s
        try:
            with self._http.stream("POST", pinned, content=body,
                                   headers={**headers, "host": parts.netloc},
                                   extensions=extensions) as response:
                # The body is never read: a receiver cannot make us buffer gigabytes.
                code = response.status_code
                location = response.headers.get("location")
        except httpx.TimeoutException as exc:
            return AttemptResult(None, f"timeout after {timeout:g} s ({type(exc).__name__})", True)
        except httpx.ConnectError as exc:
            return AttemptResult(None, f"connection to {ip} failed: {exc}", True,
                                 connect_failed=True)
        except httpx.HTTPError as exc:
            return AttemptResult(None, f"{type(exc).__name__}: {exc}", True)
        if 200 <= code < 300:
            return AttemptResult(code, None, retry=False)
        if code == 410:
            return AttemptResult(code, "410 Gone: the receiver asked for no more deliveries",
                                 retry=False)
        if 300 <= code < 400:
            return AttemptResult(code, f"redirect to {location!r} not followed", retry=True)
        return AttemptResult(code, f"HTTP {code}", retry=True)

    # --- the two sources -------------------------------------------------------------------

    def _from_queue(self, delivery: Delivery) -> Outcome:
        try:
            outcome, retry = self.deliver(delivery)
            if retry is not None:
                self.schedule.add(*retry)
        except StoreUnavailable:
            time.sleep(_STORE_DOWN_PAUSE_S)  # not a hot loop of redeliveries
            raise
        return outcome

    def _from_schedule(self, claimed: Claimed) -> Outcome:
        outcome, retry = self.deliver(claimed.delivery)
        self.schedule.done(claimed, retry)
        return outcome

    def _on_message(self, body: Any, message: Message) -> None:
        try:
            delivery = Delivery.from_dict(body)
        except ValueError as exc:
            log.error("malformed webhook message dropped: %s", exc)
            message.reject(requeue=False)
            return
        future = self._pool.submit(self._from_queue, delivery)
        self._inflight[future] = _InFlight(message, self._generation, None)
        future.add_done_callback(self._done.put)

    def _on_decode_error(self, message: Message, exc: Exception) -> None:
        log.error("webhook message that is not JSON dropped: %s", exc)
        message.reject(requeue=False)

    def _poll_schedule(self) -> None:
        if time.monotonic() < self._next_poll:
            return
        self._next_poll = time.monotonic() + SCHEDULE_POLL_S
        room = 2 * self.pool_size - len(self._inflight)
        if room <= 0:
            return
        try:
            claimed = self.schedule.claim(now(), room, self.lease_s)
        except StoreUnavailable as exc:
            log.warning("webhook retry schedule unreachable: %s", exc)
            return
        for item in claimed:
            future = self._pool.submit(self._from_schedule, item)
            self._inflight[future] = _InFlight(None, self._generation, item)
            future.add_done_callback(self._done.put)

    def _settle(self) -> None:
        """Acknowledge (or give back) what the pool finished. Broker thread only."""
        while True:
            try:
                future = self._done.get_nowait()
            except queue.Empty:
                return
            item = self._inflight.pop(future, None)
            if item is None:
                continue
            exc = None if future.cancelled() else future.exception()
            if item.claimed is not None:
                if future.cancelled() or exc is not None:
                    if exc is not None:
                        log.warning("webhook retry %s not attempted: %s",
                                    item.claimed.delivery.message_id, exc)
                    with contextlib.suppress(StoreUnavailable):
                        # Due again soon; if this fails too, the lease runs out instead.
                        self.schedule.release(item.claimed, now() + _STORE_DOWN_PAUSE_S)
                continue
            if item.message is None or item.generation != self._generation:
                continue  # its channel is gone: the broker redelivers it
            try:
                if future.cancelled():
                    item.message.requeue()
                elif exc is not None:
                    log.warning("webhook delivery failed, back to the queue: %s", exc)
                    item.message.requeue()
                else:
                    item.message.ack()
            except Exception as err:  # noqa: BLE001 - a dead channel redelivers by itself
                log.warning("could not settle a webhook message: %s", err)

    # --- the loop ------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event) -> None:
        """Consume and deliver until ``stop_event`` is set; reconnect when the broker goes."""
        backoff = 0.5
        try:
            while not stop_event.is_set():
                conn = Connection(
                    self.settings.broker_url,
                    transport_options=transport_options(self.settings.broker_url),
                    connect_timeout=self.settings.broker_timeout_s,
                    heartbeat=0,
                )
                try:
                    conn.ensure_connection(max_retries=1)
                    backoff = 0.5
                    self._consume(conn, stop_event)
                except (*conn.connection_errors, *conn.channel_errors, OSError) as exc:
                    log.warning("webhook sender lost the broker (%s); retrying in %.1f s",
                                exc, backoff)
                    self._generation += 1
                    # Retries from the schedule go on while the broker is away.
                    deadline = time.monotonic() + backoff
                    while time.monotonic() < deadline and not stop_event.is_set():
                        self._settle()
                        self._poll_schedule()
                        stop_event.wait(0.05)
                    backoff = min(backoff * 2, 10.0)
                finally:
                    with contextlib.suppress(Exception):
                        conn.release()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._generation += 1  # the connection is closed: nothing left to acknowledge
            self._settle()
            self.close()

    def close(self) -> None:
        """Release the HTTP client, the job store and the schedule."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        self.store.close()
        self.schedule.close()

    def _consume(self, conn: Connection, stop_event: threading.Event) -> None:
        channel = conn.channel()
        q = webhook_queue(self.settings.namespace).bind(channel)
        q.declare()
        with conn.Consumer([q], channel=channel, callbacks=[self._on_message], accept=["json"],
                           on_decode_error=self._on_decode_error) as consumer:
            consumer.qos(prefetch_count=2 * self.pool_size)
            log.info("webhook sender consuming %s (%d threads)", q.name, self.pool_size)
            while not stop_event.is_set():
                self._settle()
                self._poll_schedule()
                try:
                    conn.drain_events(timeout=_DRAIN_TIMEOUT_S)
                except TimeoutError:
                    pass
            consumer.cancel()  # no new messages while we finish
            self._finish_inflight(conn)

    def _finish_inflight(self, conn: Connection) -> None:
        """Stop: cancel what has not started, let running attempts end and acknowledge them."""
        for future in list(self._inflight):
            future.cancel()
        deadline = time.monotonic() + 2 * self.settings.webhook_timeout_s + 5
        while self._inflight and time.monotonic() < deadline:
            self._settle()
            time.sleep(0.02)
        self._settle()


def run_webhook_sender(
    settings: Settings,
    *,
    stop_event: threading.Event | None = None,
    secret_for: SecretFor | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
) -> None:
    """Deliver webhooks until ``stop_event`` is set (or SIGTERM/SIGINT, in a main thread).

    ``secret_for(owner)`` returns the ``whsec_`` secret of an API key's owner (None: no
    key); default: ``server_secret(settings)`` for everyone.
    """
    own_signals = stop_event is None and threading.current_thread() is threading.main_thread()
    stop = stop_event or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if own_signals:

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("webhook sender stopping (signal %d)", signum)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _stop)
    try:
        WebhookSender(settings, secret_for=secret_for, pool_size=pool_size).run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def sender_thread(settings: Settings, **kwargs: Any) -> Iterator[threading.Event]:
    """Run a sender in a thread for the block (tests, the embedded ``inferq serve``)."""
    stop = threading.Event()
    thread = threading.Thread(target=run_webhook_sender, args=(settings,),
                              kwargs={"stop_event": stop, **kwargs}, name="webhook-sender",
                              daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=2 * settings.webhook_timeout_s + 10)


def main() -> None:
    """``python -m inferq.webhooks.sender``: a sender process on ``INFERQ_*`` settings."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    if settings.embedded:
        settings.ensure_home()
    run_webhook_sender(settings)


if __name__ == "__main__":
    main()
