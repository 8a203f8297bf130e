"""The records optimize keeps in memory, typed: a speed measurement (`Speed`), a stored
measurement (`Measurement`, keyed by recipe id and protocol id) and one variant as the selection
and the reports see it (`Variant`). results.json holds them serialised (`to_dict`), as it did
when they were plain dicts; `from_dict` reads them back, an older file's included.

A quality measurement stays the dict `quality.judge` gives (every output's metrics, nested), and
a build record the dict `build.build` gives: they cross processes and machines as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from keras_turbo.optimize.recipe import Recipe


def _from(cls, d: dict):
    """`cls` from a dict, taking the fields it has and leaving other keys (a newer or older file's)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Speed:
    """A candidate's timing as optimize keeps it: the benchmark Result's fields that a variant
    row shows (listed here once), and where and how long it was timed."""

    ok: bool = False
    error: str | None = None
    latency_ms: dict | None = None
    throughput_per_s: float | None = None
    model_bytes: int | None = None
    init_ms: float | None = None
    peak_rss_mb: float | None = None
    signal: int | None = None          # what killed the worker (the OOM killer's SIGKILL...): worth a retry
    timed_out: bool = False
    preprocessing: str | None = None   # where a split text model's strings went
    executed: dict | None = None       # what the compute ops ran in (Predictor.executed)
    seconds: float | None = None       # the timing's own wall time
    node: dict | None = None           # where it was timed (executor's node facts)
    machine: dict | None = None
    runoff: dict | None = None         # the run-off's rounds, when this is a leader's median round

    #: the fields a benchmark Result hands over
    FROM_RESULT = ("ok", "error", "latency_ms", "throughput_per_s", "model_bytes", "init_ms", "peak_rss_mb", "signal",
                   "timed_out", "preprocessing", "executed")

    @classmethod
    def from_result(cls, result, **extra) -> "Speed":
        """From a bench.Result, with `extra` fields (seconds, node, machine)."""
        return cls(**{k: getattr(result, k) for k in cls.FROM_RESULT}, **extra)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Speed | None":
        return None if d is None else _from(cls, d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Measurement:
    """What was measured of one recipe under one protocol: quality (quality.judge's dict) and
    speed, each reused by a rerun whose quality id / speed id matches (store.py)."""

    recipe_id: str
    protocol_id: str = ""  # (a file that lacks one of these ids matches no protocol: nothing of it is reused)
    quality_id: str = ""
    speed_id: str = ""
    quality: dict | None = None
    speed: Speed | None = None
    reused: dict = field(default_factory=dict)
    at: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        return _from(cls, {**d, "speed": Speed.from_dict(d.get("speed"))})

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "speed": self.speed.to_dict() if self.speed else None}


@dataclass(frozen=True)
class Variant:
    """One candidate as the selection and the reports see it: what made it (the recipe's
    fields), how its build went, what it measured, and the verdict under the current budget.
    A variant that failed, or was skipped or stopped for lack of time, has `ok` False and says
    why in `error`."""

    id: str
    name: str
    role: str
    backend: str
    precision: str
    techniques: list
    mixed: bool
    steps: list
    ok: bool = False
    error: str | None = None
    skipped: bool = False
    stopped: bool = False
    retry: bool = False                # a signal killed its timing worker: a rerun times it again
    wave: int | None = None
    artifact: str | None = None
    label: str | None = None
    build_s: float | None = None
    kept_float: list | None = None     # an int8 repair's float layers
    technique_report: dict | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    top1_agreement: float | None = None
    max_abs_diff: float | None = None
    outputs: list | None = None
    user_metric: dict | None = None
    latency_ms: dict | None = None
    throughput_per_s: float | None = None
    model_bytes: int | None = None
    init_ms: float | None = None
    peak_rss_mb: float | None = None
    preprocessing: str | None = None
    runoff: dict | None = None
    executed: dict | None = None
    within_budget: bool | None = None
    verdict: str | None = None
    timed_on: dict | None = None
    reused: dict | None = None
    pareto: bool = False

    #: the quality measurement's fields a row shows
    QUALITY_FIELDS = ("accuracy", "accuracy_drop", "top1_agreement", "max_abs_diff", "outputs", "user_metric")
    #: the speed measurement's fields a row shows
    SPEED_FIELDS = ("latency_ms", "throughput_per_s", "model_bytes", "init_ms", "peak_rss_mb", "preprocessing", "runoff",
                    "executed")

    @classmethod
    def of(cls, r: Recipe, **fields) -> "Variant":
        """The row of recipe `r`, not yet built or measured (or with `fields` set)."""
        return cls(r.id, r.name, r.role, r.backend, r.precision, list(r.techniques),
                   any(s.kind == "fallback" for s in r.steps), [s.to_dict() for s in r.steps], **fields)

    def judged(self, quality: dict, within: bool, verdict: str) -> "Variant":
        """This row with a quality measurement and its verdict."""
        return dataclasses.replace(self, ok=True, within_budget=within, verdict=verdict,
                                   **{k: quality.get(k) for k in self.QUALITY_FIELDS})

    def timed(self, speed: Speed) -> "Variant":
        """This row with a (successful) speed measurement."""
        return dataclasses.replace(self, timed_on=speed.node, **{k: getattr(speed, k) for k in self.SPEED_FIELDS})

    def replace(self, **fields) -> "Variant":
        return dataclasses.replace(self, **fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


__all__ = ["Measurement", "Speed", "Variant"]
