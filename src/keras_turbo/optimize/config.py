"""`OptimizeConfig`: the user's budget, objective and serving setting, and how hard to look."""

from __future__ import annotations

from dataclasses import dataclass, replace

from keras_turbo.config import TechniqueConfig
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.optimize.plan import TECHNIQUE_SETTINGS
from keras_turbo.quality import KINDS, Budget, load_metric, metric_name
from keras_turbo.runtimes import BACKENDS
from keras_turbo.timing import OPTIMIZE

OBJECTIVES = ("latency", "throughput", "size")
#: candidate families the planner knows, besides the training techniques (plan.TECHNIQUE_SETTINGS)
FAMILIES = ("runtimes", "fp16", "bf16", "int8", "fallback")


@dataclass(frozen=True)
class OptimizeConfig(TechniqueConfig):
    """The budget, the objective and how hard to look.

    Attributes:
        budget: how much quality a variant may give up (quality.Budget). Without a classification
            budget the held-out data decides (`resolved`): labelled data gets
            quality.DEFAULT_MAX_ACCURACY_DROP points, unlabelled data quality.DEFAULT_MIN_AGREEMENT.
        metric: the user's own metric: "FILE.py:function" or a callable (module-level, so worker
            processes can import it), called with (float outputs, variant outputs, labels or
            None) on the whole evaluation set, higher is better (quality.judge_metric).
        output_kinds: (output name, kind) pairs that override the detected kinds.
        objective: "latency" (batch p50), "throughput" (items/s) or "size" (bytes).
        batch_size / threads: the serving setting every candidate is timed at.
        techniques: which candidate families to try (see FAMILIES, and with train data the
            training techniques); empty means all that apply.
        runtimes: which runtimes to try (keras-predict, the baseline, always runs); empty: all.
        time_budget_s: no new candidate starts after this many seconds.
        calibration_size / eval_size: samples for int8 calibration and for judging accuracy.
        min_runs / min_seconds: the benchmark's timed loop per candidate.
        runoff_rounds: the candidates within the budget whose first timing is within
            select.RUNOFF_MARGIN of the fastest are timed again in this many alternating rounds
            (each a fresh worker, as the first) and ranked by their median round: one timing per
            candidate can misrank near-equal candidates on a busy machine. 0: one timing each.
    """

    budget: Budget = Budget()
    metric: object = None
    output_kinds: tuple[tuple[str, str], ...] = ()
    objective: str = "latency"
    batch_size: int = 1
    threads: int | None = None
    techniques: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ()
    time_budget_s: float = 1800.0
    calibration_size: int = 300
    eval_size: int = 1000
    min_runs: int = OPTIMIZE.min_runs
    min_seconds: float = OPTIMIZE.min_seconds
    runoff_rounds: int = 3

    def __post_init__(self):
        if isinstance(self.budget, dict):  # from_dict (a results.json's config)
            object.__setattr__(self, "budget", Budget.from_dict(self.budget))
        if not isinstance(self.budget, Budget):
            raise bad_param("budget", "a quality.Budget", self.budget)
        if self.metric is not None and not callable(self.metric):
            load_metric(self.metric)  # a bad FILE.py:function fails now, not in a worker
        kinds = tuple(tuple(p) for p in self.output_kinds)
        bad = [f"{n}={k}" for n, k in kinds if k not in KINDS]
        if bad:
            raise KerasTurboError(f"--output-kind: unknown kind in {', '.join(bad)} (expected one of {', '.join(KINDS)})")
        object.__setattr__(self, "output_kinds", kinds)
        if self.objective not in OBJECTIVES:
            raise bad_param("objective", f"one of {', '.join(OBJECTIVES)}", self.objective)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise bad_param("batch_size", "an integer >= 1", self.batch_size)
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise bad_param("threads", "an integer >= 1", self.threads)
        if not isinstance(self.runoff_rounds, int) or self.runoff_rounds < 0:
            raise bad_param("runoff_rounds", "an integer >= 0", self.runoff_rounds)
        if not self.time_budget_s > 0:
            raise bad_param("time_budget_s", "a positive number of seconds", self.time_budget_s)
        known = set(FAMILIES) | set(TECHNIQUE_SETTINGS)
        unknown = [t for t in self.techniques if t not in known]
        if unknown:
            raise KerasTurboError(f"--techniques: unknown {', '.join(unknown)} (expected some of {', '.join(sorted(known))})")
        object.__setattr__(self, "techniques", tuple(self.techniques))

        bad = [r for r in self.runtimes if r not in BACKENDS]
        if bad:
            raise KerasTurboError(f"--runtimes: unknown {', '.join(bad)} (expected some of {', '.join(BACKENDS)})")
        object.__setattr__(self, "runtimes", tuple(self.runtimes))

    def resolved(self, labelled: bool) -> "OptimizeConfig":
        """This config with its budget's classification part decided for the data (Budget.resolved)."""
        return replace(self, budget=self.budget.resolved(labelled))

    def wants(self, family: str) -> bool:
        return not self.techniques or family in self.techniques

    def to_dict(self) -> dict:
        return {**super().to_dict(), "metric": metric_name(self.metric)}
