"""How a latency is measured: the one timing-settings type (`BenchmarkConfig`), the settings each
caller times with, and how far apart two timings on these shared machines may be by noise alone.

`keras-turbo benchmark` times with `BenchmarkConfig()` (its flags override fields), optimize with
OPTIMIZE (its `min_runs` / `min_seconds` override those), and the int8 repair's steps briefly with
BRIEF, in the build process. Every timing goes through bench.measure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from keras_turbo.errors import bad_param


@dataclass(frozen=True)
class BenchmarkConfig:
    """How to measure. The defaults suit small and mid-sized models on a CPU.

    Attributes:
        warmup_runs / warmup_seconds: warm-up lasts until both are reached.
        min_runs / min_seconds: the timed loop lasts until both are reached.
        rotate: how many distinct random input batches the loop cycles through.
        device: "auto" (a GPU for the TensorFlow runtimes when present), "cpu" or "gpu".
        timeout_s: a (runtime, batch size) that takes longer is stopped and recorded as failed.
        seed: for the random inputs.
        input_shapes: one sample shape (no batch dimension) per model input, in name order, that
            random inputs are made in; () takes the model's own shapes, which must then be fixed
            (a dynamic dimension has no size to time at: `benchmark` asks for one).
        input_names: the model input each of `input_shapes` is for (the CLI's NAME=SHAPE); ()
            means name order.
    """

    warmup_runs: int = 5
    warmup_seconds: float = 0.5
    min_runs: int = 50
    min_seconds: float = 2.0
    rotate: int = 4
    device: str = "auto"
    timeout_s: float = 900.0
    seed: int = 0
    input_shapes: tuple[tuple[int, ...], ...] = ()
    input_names: tuple[str, ...] = ()

    def __post_init__(self):
        try:  # JSON gives lists back: normalise to tuples, so configs compare and hash alike
            shapes = tuple(tuple(int(d) for d in shape) for shape in self.input_shapes)
        except (TypeError, ValueError):
            raise bad_param("input_shapes", "one tuple of integers per input", self.input_shapes) from None
        if any(d < 1 for shape in shapes for d in shape):
            raise bad_param("input_shapes", "sizes >= 1", self.input_shapes)
        object.__setattr__(self, "input_shapes", shapes)
        object.__setattr__(self, "input_names", tuple(str(n) for n in self.input_names))
        if self.input_names and len(self.input_names) != len(shapes):
            raise bad_param("input_names", "one name per input shape", self.input_names)
        for name in ("warmup_runs", "min_runs"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (1 if name == "min_runs" else 0):
                raise bad_param(name, "an integer >= " + ("1" if name == "min_runs" else "0"), v)
        for name in ("warmup_seconds", "min_seconds"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0:
                raise bad_param(name, "a number of seconds >= 0", v)
        if not isinstance(self.rotate, int) or self.rotate < 1:
            raise bad_param("rotate", "an integer >= 1", self.rotate)
        if self.device not in ("auto", "cpu", "gpu"):
            raise bad_param("device", 'one of "auto", "cpu", "gpu"', self.device)
        if not self.timeout_s > 0:
            raise bad_param("timeout_s", "a positive number of seconds", self.timeout_s)

    def to_dict(self) -> dict:
        return asdict(self)


#: optimize's timing of every candidate (each in a fresh process): shorter warm-up than a
#: benchmark's, and the loop optimize's `min_runs` / `min_seconds` set (these are the defaults)
OPTIMIZE = BenchmarkConfig(warmup_runs=5, warmup_seconds=0.3, min_runs=30, min_seconds=1.0)
#: the int8 repair's brief timing of a step that failed the budget, in the build process: only to
#: tell whether it already runs slower than the best variant within budget (NOISE_MARGIN)
BRIEF = BenchmarkConfig(warmup_runs=3, warmup_seconds=0.2, min_runs=10, min_seconds=0.5)
#: timings of one path on these shared 2-core machines differ by up to this fraction from run to
#: run: optimize times again (its run-off) the candidates whose first timing is within it of the
#: fastest, and the repair ends a walk only once a step is slower than the best by more than it
NOISE_MARGIN = 0.15


def protocol_fields(cfg: BenchmarkConfig) -> dict:
    """The fields of a timing that a speed measurement is keyed by (optimize/measure.Protocol)."""
    return {"warmup_runs": cfg.warmup_runs, "warmup_seconds": cfg.warmup_seconds, "min_runs": cfg.min_runs,
            "min_seconds": cfg.min_seconds}


__all__ = ["BRIEF", "NOISE_MARGIN", "OPTIMIZE", "BenchmarkConfig", "protocol_fields"]
