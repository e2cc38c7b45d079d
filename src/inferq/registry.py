"""Finding the models to serve: Python entry points and a TOML config file.

A package makes a model available with an entry point in the ``inferq.models`` group::

    [project.entry-points."inferq.models"]
    churn = "my_package.churn:ChurnModel"

or an operator names it in the file given by ``INFERQ_CONFIG_FILE``::

    [models.churn]
    class = "my_package.churn:ChurnModel"
    max_batch_size = 64        # optional: overrides the class attribute
    batch_timeout_s = 0.005    # optional

Entries in the config file win over entry points of the same name. Importing a model
class must be cheap: heavy imports belong in ``setup()``/``predict()``.
"""

from __future__ import annotations

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

    @property
    def description(self) -> str:
        """The model's one-line description."""
        return self.cls.description

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


def _spec(name: str, cls: type[Model], overrides: dict[str, Any]) -> ModelSpec:
    if not _NAME.match(name):
        raise ConfigError(f"model name {name!r} must match {_NAME.pattern}")
    try:
        max_batch_size = int(overrides.get("max_batch_size", cls.max_batch_size))
        batch_timeout_s = float(overrides.get("batch_timeout_s", cls.batch_timeout_s))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r}: bad batching knob: {exc}") from exc
    if max_batch_size < 1 or batch_timeout_s < 0:
        raise ConfigError(f"model {name!r}: max_batch_size >= 1 and batch_timeout_s >= 0")
    return ModelSpec(name, cls, max_batch_size, batch_timeout_s)


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
