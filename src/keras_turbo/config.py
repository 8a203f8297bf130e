"""What every technique shares: a frozen config that round-trips to a dict, and a result.

A technique is one module with one public function `apply(model, config, data) -> TechniqueResult`.
It never changes its input model: it builds and returns a new one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from keras_turbo.errors import KerasTurboError


@dataclass(frozen=True)
class TechniqueConfig:
    """Base for technique configs: frozen, typed, validated in `__post_init__`."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise KerasTurboError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)} (expected {', '.join(sorted(names))})")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)


@dataclass
class TechniqueResult:
    """The new model, the config that made it, and a JSON-ready report (per-layer details,
    what was skipped and why, accuracy before and after when data was given)."""

    technique: str
    model: Any
    config: TechniqueConfig
    report: dict = field(default_factory=dict)
