"""Settings, read from ``INFERQ_*`` environment variables.

The defaults run everything embedded, with no server: Celery over kombu's SQLAlchemy
transport on SQLite, the job store on SQLite, blobs in a local folder -- all under
``INFERQ_HOME``. Point ``INFERQ_BROKER_URL`` at RabbitMQ (``amqp://...``) or Redis and
``INFERQ_RESULT_URL`` at Redis or PostgreSQL for production.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of an inferq process. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix="INFERQ_", extra="ignore")

    home: Path = Field(default=Path(".inferq"), description="Folder for embedded state.")
    host: str = "127.0.0.1"
    port: int = 8000
    broker_url: str = Field(default="", description="Default: SQLite under home.")
    result_url: str = Field(default="", description="Job store. Default: SQLite under home.")
    blob_url: str = Field(default="", description="fsspec URL for blobs. Default: home/blobs.")
    namespace: str = Field(
        default="inferq",
        description="Prefix of queue names, Redis keys and SQL tables, so that several "
        "deployments (or test runs) can share one broker and store.",
    )
    config_file: Path | None = Field(
        default=None, description="TOML file naming models to serve (see README)."
    )
    result_ttl_s: int = Field(default=86_400, ge=1)
    max_wait_s: float = Field(default=60.0, ge=0)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_batch_inputs: int = Field(
        default=1024, ge=1, description="Most items in one batch job ({\"inputs\": [...]})."
    )
    # --- webhooks (inferq.webhooks) ---
    webhook_secret: str = Field(
        default="",
        description="whsec_... secret that signs webhooks of jobs submitted without an API "
        "key. Default: generated once and kept in home/webhook_secret.",
    )
    webhook_allow_nets: str = Field(
        default="",
        description="Comma-separated CIDRs webhooks may reach even though they are "
        "loopback/private (e.g. 127.0.0.1/32 for tests). Default: none.",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_retry_schedule_s: str = Field(
        default="5,300,1800,7200,18000,36000,36000",
        description="Delays before each retry of a failed webhook (jitter added): about a day.",
    )
    # --- access (inferq.auth) ---
    auth: str = Field(default="on", description="'on': API keys required; 'off': open.")
    rate_limit_per_s: float = Field(default=50.0, gt=0, description="Submits per key per s.")
    max_in_flight: int = Field(default=10_000, ge=1, description="Queued+running per key.")
    max_json_depth: int = Field(default=32, ge=2)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    broker_timeout_s: float = Field(default=3.0, gt=0)
    worker_heartbeat_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        home = self.home.resolve()
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{home / 'broker.sqlite'}"
        if not self.result_url:
            self.result_url = f"sqlite:///{home / 'jobs.sqlite'}"
        if not self.blob_url:
            self.blob_url = str(home / "blobs")
        return self

    @property
    def embedded(self) -> bool:
        """True when the broker is the embedded SQLite one (a single machine)."""
        return self.broker_url.startswith("sqla+sqlite")

    def ensure_home(self) -> Path:
        """Create the home folder (for embedded files) and return it."""
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home.resolve()
