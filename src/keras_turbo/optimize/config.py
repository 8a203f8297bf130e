"""`OptimizeConfig`: the user's budget, objective and serving setting, and how hard to look."""

from __future__ import annotations

from dataclasses import dataclass

from keras_turbo.config import TechniqueConfig
from keras_turbo.errors import KerasTurboError, bad_param

OBJECTIVES = ("latency", "throughput", "size")
#: the accuracy budget (points) where the user gave none and the held-out data has labels
DEFAULT_MAX_ACCURACY_DROP = 1.0
#: candidate families the planner knows, besides the training techniques (plan.TECHNIQUE_SETTINGS)
FAMILIES = ("runtimes", "fp16", "bf16", "int8", "fallback")


@dataclass(frozen=True)
class OptimizeConfig(TechniqueConfig):
    """The budget, the objective and how hard to look.

    Attributes:
        max_accuracy_drop: allowed accuracy loss in points against the float model (needs labels).
        min_agreement: alternatively, required top-1 agreement with the float model, in (0, 1]
            (for every classification-like output: per sample, per label, per position).
            With neither given, the held-out data decides (`resolved`): labelled data gets
            DEFAULT_MAX_ACCURACY_DROP, unlabelled data quality.DEFAULT_MIN_AGREEMENT.
        max_output_error: for regression and embedding outputs: RMSE of the difference from the
            float output over that output's standard deviation (1 - cosine for embeddings);
            default quality.DEFAULT_MAX_OUTPUT_ERROR.
        max_metric_drop: for labelled metrics other than accuracy (RMSE of regression outputs,
            mean IoU of segmentation, F1 of multi-label) and for the user's `metric`: allowed
            drop relative to the float model's value, in percent (RMSE: its rise). Without it,
            those outputs are judged label-free (`max_output_error`, `min_agreement`) and the
            user metric by quality.DEFAULT_MAX_METRIC_DROP.
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

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    max_output_error: float | None = None
    max_metric_drop: float | None = None
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
    min_runs: int = 30
    min_seconds: float = 1.0
    runoff_rounds: int = 3

    def __post_init__(self):
        from keras_turbo.optimize.plan import TECHNIQUE_SETTINGS

        if self.min_agreement is not None:
            object.__setattr__(self, "max_accuracy_drop", None)
            if not (0 < self.min_agreement <= 1):
                raise bad_param("min_agreement", "a fraction in (0, 1]", self.min_agreement)
        elif self.max_accuracy_drop is not None and not (0 <= self.max_accuracy_drop <= 100):
            raise bad_param("max_accuracy_drop", "a number of points in [0, 100]", self.max_accuracy_drop)
        if self.max_output_error is not None and not (0 < self.max_output_error < 10):
            raise bad_param("max_output_error", "a relative error in (0, 10)", self.max_output_error)
        if self.max_metric_drop is not None and not (0 <= self.max_metric_drop <= 100):
            raise bad_param("max_metric_drop", "a percentage in [0, 100]", self.max_metric_drop)
        if self.metric is not None and not callable(self.metric):
            from keras_turbo.quality import load_metric

            load_metric(self.metric)  # a bad FILE.py:function fails now, not in a worker
        from keras_turbo.quality import KINDS

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
        from keras_turbo.runtimes import BACKENDS

        bad = [r for r in self.runtimes if r not in BACKENDS]
        if bad:
            raise KerasTurboError(f"--runtimes: unknown {', '.join(bad)} (expected some of {', '.join(BACKENDS)})")
        object.__setattr__(self, "runtimes", tuple(self.runtimes))

    def resolved(self, labelled: bool) -> "OptimizeConfig":
        """This config with the classification budget decided where the user gave none: a
        `DEFAULT_MAX_ACCURACY_DROP`-point accuracy budget on labelled data, top-1 agreement of at
        least quality.DEFAULT_MIN_AGREEMENT with the float model on unlabelled data."""
        from dataclasses import replace

        from keras_turbo.quality import DEFAULT_MIN_AGREEMENT

        if self.max_accuracy_drop is not None or self.min_agreement is not None:
            return self
        if labelled:
            return replace(self, max_accuracy_drop=DEFAULT_MAX_ACCURACY_DROP)
        return replace(self, min_agreement=DEFAULT_MIN_AGREEMENT)

    def wants(self, family: str) -> bool:
        return not self.techniques or family in self.techniques

    def budget(self) -> dict:
        """The part of the config that judges quality (applied at selection time, never stored as a verdict)."""
        return {"max_accuracy_drop": self.max_accuracy_drop, "min_agreement": self.min_agreement,
                "max_output_error": self.max_output_error, "max_metric_drop": self.max_metric_drop}

    def to_dict(self) -> dict:
        from keras_turbo.quality import metric_name

        return {**super().to_dict(), "metric": metric_name(self.metric)}
