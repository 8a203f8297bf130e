"""A variant as data: the steps that make it, replayable, with an id that is a content hash.

A `Recipe` is the list of `Step`s that turn the user's model into a deployable variant, and the
runtime it ends on. Nothing in it is code: each step names a kind and a setting, and the
builder (build.py) turns each kind into work. Two recipes with the same model fingerprint and
the same steps have the same `id`, wherever and whenever they are made, so results, artifacts
and resumed runs can be keyed by it; every prefix of a recipe has an id of its own, which is
how a technique shared by several variants is trained once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from keras_turbo.errors import bad_param

#: what a step may do; build.py has one builder per kind
STEP_KINDS = ("train", "convert", "fallback", "runtime")


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Step:
    """One step: `kind` (train | convert | fallback | runtime), `name` (the technique, the
    conversion target, or the runtime) and its `config` (JSON-ready settings)."""

    kind: str
    name: str
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in STEP_KINDS:
            raise bad_param("kind", f"one of {', '.join(STEP_KINDS)}", self.kind)
        if not isinstance(self.name, str) or not self.name:
            raise bad_param("name", "a non-empty string", self.name)
        # A copy in canonical form: the step cannot be changed through the caller's dict, and
        # equal settings written in another order or as tuples hash the same.
        object.__setattr__(self, "config", json.loads(_canonical(dict(self.config))))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "config": dict(self.config)}

    @classmethod
    def from_dict(cls, d: dict) -> "Step":
        return cls(d["kind"], d["name"], d.get("config") or {})


@dataclass(frozen=True)
class Recipe:
    """The steps from the user's model (by its fingerprint) to a variant, and the precision it
    runs at. The last step is always the runtime.

    Example:
        >>> r = Recipe("ab12", (Step("convert", "litert", {"quantize": "int8"}), Step("runtime", "litert")), "int8")
        >>> r.name, len(r.id)
        ('litert int8', 16)
    """

    model: str  # the model's content fingerprint
    steps: tuple[Step, ...]
    precision: str = "fp32"
    label: str = ""  # an optional tag that tells apart settings of one technique (e.g. "80%"; "flops/4; 1/2 size" for two)
    role: str = "variant"  # or "probe": a short fine-tune the strength search judges, never deployed

    def __post_init__(self):
        steps = tuple(s if isinstance(s, Step) else Step.from_dict(s) for s in self.steps)
        if not steps or steps[-1].kind != "runtime":
            raise bad_param("steps", "a list ending in a runtime step", [s.kind for s in steps])
        if any(s.kind == "runtime" for s in steps[:-1]):
            raise bad_param("steps", "one runtime step, the last", [s.kind for s in steps])
        object.__setattr__(self, "steps", steps)
        if self.role not in ("variant", "probe"):
            raise bad_param("role", '"variant" or "probe"', self.role)

    @property
    def id(self) -> str:
        return prefix_id(self.model, self.steps) if self.role == "variant" else prefix_id(self.model, self.steps + ("probe",))

    def prefix_ids(self) -> list[str]:
        """The id of every prefix that makes an artifact (all steps but the runtime), shortest first."""
        return [prefix_id(self.model, self.steps[:k]) for k in range(1, len(self.steps))]

    @property
    def backend(self) -> str:
        return self.steps[-1].name

    @property
    def techniques(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps if s.kind == "train")

    @property
    def name(self) -> str:
        """A display name derived from the steps: "structured + litert int8 mixed"."""
        names = [s.name for s in self.steps if s.kind == "train"]
        # A composition's label holds one part per searched technique, "; " between them, in step
        # order; a step added after them (equalize, the int8 repair's) has no setting, so no part:
        # "resolution(1/2.8 size) + equalize + litert int8", not "... + equalize(1/2.8 size) ...".
        parts = self.label.split("; ") if self.label else []
        train = [n + (f"({parts[i]})" if i < len(parts) and parts[i] else "") for i, n in enumerate(names)]
        mixed = any(s.kind == "fallback" or s.config.get("keep_float") for s in self.steps)
        if self.role == "probe":
            return " + ".join(train) + " probe"
        return " + ".join(train + [f"{self.backend} {self.precision}" + (" mixed" if mixed else "")])

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "model": self.model, "precision": self.precision,
                "label": self.label, "role": self.role, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        return cls(d["model"], tuple(Step.from_dict(s) for s in d["steps"]), d.get("precision", "fp32"), d.get("label", ""),
                   d.get("role", "variant"))


def prefix_id(model: str, steps) -> str:
    """The content id of the model followed by `steps` (a prefix of a recipe or a whole one)."""
    doc = {"model": model, "steps": [s.to_dict() if isinstance(s, Step) else s for s in steps]}  # (a str marks a role)
    return hashlib.sha256(_canonical(doc).encode()).hexdigest()[:16]


__all__ = ["STEP_KINDS", "Recipe", "Step", "prefix_id"]
