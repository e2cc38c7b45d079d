"""Finding the models to serve: Python entry points and a TOML config file.

A package makes a model available with an entry point in the ``inferq.models`` group::

    [project.entry-points."inferq.models"]
    churn = "my_package.churn:ChurnModel"

or an operator names it in the file given by ``INFERQ_CONFIG_FILE``::

    [models.churn]
    class = "my_package.churn:ChurnModel"
    max_batch_size = 64        # optional: overrides the class attribute
    batch_timeout_s = 0.005    # optional
    max_retries = 3            # optional: retries of RetryableError
    soft_time_limit_s = 30     # optional
    time_limit_s = 60          # optional: hard limit, <= 1500 s
    max_deliveries = 5         # optional: deliveries before a job is dead-lettered

Entries in the config file win over entry points of the same name. Importing a model
class must be cheap: heavy imports belong in ``setup()``/``predict()``.
"""

from __future__ import annotations

import functools
import importlib
import re
import tomllib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from inferq.errors import ConfigError, ModelNotFound
from inferq.model import Model

ENTRY_POINT_GROUP = "inferq.models"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class ModelSpec:
    """A served model: its class and the batching knobs in force."""

    name: str
    cls: type[Model]
    max_batch_size: int
    batch_timeout_s: float
    max_retries: int = 3
    soft_time_limit_s: float | None = None
    time_limit_s: float = 600.0
    max_deliveries: int = 5

    @property
    def description(self) -> str:
        """The model's one-line description."""
        return self.cls.description

    @functools.cached_property
    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of one input item (computed once: requests read it)."""
        return self.cls.Input.model_json_schema()

    @functools.cached_property
    def output_schema(self) -> dict[str, Any]:
        """The JSON Schema of one output item."""
        return self.cls.Output.model_json_schema()

    @property
    def input_type(self) -> type[BaseModel]:
        """The pydantic model of one input item."""
        return self.cls.Input

    @property
    def output_type(self) -> type[BaseModel]:
        """The pydantic model of one output item."""
        return self.cls.Output


def load_class(path: str) -> type[Model]:
    """Import ``"package.module:Class"`` and check it is a usable Model subclass."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model class {path!r} must look like 'package.module:Class'")
    try:
        obj: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import model class {path!r}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Model)):
        raise ConfigError(f"{path!r} is not a subclass of inferq.Model")
    for attr_name in ("name", "Input", "Output"):
        if not hasattr(obj, attr_name):
            raise ConfigError(f"model class {path!r} has no {attr_name!r}")
    for attr_name in ("Input", "Output"):
        value = getattr(obj, attr_name)
        if not (isinstance(value, type) and issubclass(value, BaseModel)):
            raise ConfigError(f"{path}.{attr_name} must be a pydantic BaseModel")
    return obj


#: Hard time limits must stay below RabbitMQ's consumer timeout (30 min by default), or the
#: broker closes the channel under a long job (celery#6760).
MAX_TIME_LIMIT_S = 25 * 60


def _spec(name: str, cls: type[Model], overrides: dict[str, Any]) -> ModelSpec:
    if not _NAME.match(name):
        raise ConfigError(f"model {name!r} must match {_NAME.pattern}")

    def knob(key: str, kind: type) -> Any:
        value = overrides.get(key, getattr(cls, key))
        try:
            return None if value is None else kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {name!r}: bad {key}: {value!r}") from exc

    spec = ModelSpec(
        name, cls,
        max_batch_size=knob("max_batch_size", int),
        batch_timeout_s=knob("batch_timeout_s", float),
        max_retries=knob("max_retries", int),
        soft_time_limit_s=knob("soft_time_limit_s", float),
        time_limit_s=knob("time_limit_s", float),
        max_deliveries=knob("max_deliveries", int),
    )
    problems = [
        (spec.max_batch_size < 1, "max_batch_size must be >= 1"),
        (spec.batch_timeout_s < 0, "batch_timeout_s must be >= 0"),
        (spec.max_retries < 0, "max_retries must be >= 0"),
        (spec.max_deliveries < 1, "max_deliveries must be >= 1"),
        (not 0 < spec.time_limit_s <= MAX_TIME_LIMIT_S,
         f"time_limit_s must be in (0, {MAX_TIME_LIMIT_S}] (below RabbitMQ's consumer timeout)"),
        (spec.soft_time_limit_s is not None
         and not 0 < spec.soft_time_limit_s < spec.time_limit_s,
         "soft_time_limit_s must be in (0, time_limit_s)"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(f"model {name!r}: {message}")
    return spec


def discover(config_file: Path | None = None) -> dict[str, ModelSpec]:
    """Every model available: entry points, then the config file's entries over them."""
    specs: dict[str, ModelSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        specs[ep.name] = _spec(ep.name, load_class(ep.value), {})
    if config_file is not None:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        for name, entry in data.get("models", {}).items():
            if not isinstance(entry, dict):
                raise ConfigError(f"[models.{name}] must be a table")
            if "class" in entry:
                cls = load_class(str(entry["class"]))
            elif name in specs:
                cls = specs[name].cls
            else:
                raise ConfigError(f"[models.{name}] needs class = 'package.module:Class'")
            specs[name] = _spec(name, cls, entry)
    return specs


def select(specs: dict[str, ModelSpec], names: list[str] | None) -> dict[str, ModelSpec]:
    """The specs named (all of them if ``names`` is empty); unknown names raise."""
    if not names:
        return dict(specs)
    missing = [n for n in names if n not in specs]
    if missing:
        raise ModelNotFound(missing[0])
    return {n: specs[n] for n in names}
