"""Which layers cost accuracy under quantization, and a mixed-precision variant that keeps just
those in float until the accuracy budget is met.

Method (the same on LiteRT, ONNX Runtime and OpenVINO):
  1. For each quantizable layer (convolutions, dense), build a variant where only that layer is
     quantized and everything else stays float; measure it on held-out data against the float
     model: accuracy drop (with labels), top-1 agreement and the output's normalised error.
     This isolates each layer's own damage, including layers that only break together (an
     activation outlier breaks both the layer that makes it and the one that reads it).
  2. Rank the layers by that damage.
  3. Starting from the fully quantized model, keep the most damaging layers in float, one at a
     time, until the budget (`max_accuracy_drop` points, or `min_agreement`) is met.
"""

from __future__ import annotations

from dataclasses import dataclass, field


import numpy as np

from keras_turbo.convert import ConvertConfig, ConvertResult, convert, graph_nodes, layer_nodes, quantizable_layers
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.config import TechniqueConfig


@dataclass(frozen=True)
class FallbackConfig(TechniqueConfig):
    """The accuracy budget and how far to go to meet it.

    Attributes:
        max_accuracy_drop: allowed drop in accuracy, in points (needs labels).
        min_agreement: required top-1 agreement with the float model, in [0, 1] (no labels needed).
        eval_size: held-out samples used to judge each variant.
        max_float_layers: give up after keeping this many layers in float (None: no limit).
    """

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    eval_size: int = 500
    max_float_layers: int | None = None
    seed: int = 0

    def __post_init__(self):
        if (self.max_accuracy_drop is None) == (self.min_agreement is None):
            raise KerasTurboError("give one accuracy budget: --max-accuracy-drop POINTS or --min-agreement FRACTION")
        if self.max_accuracy_drop is not None and not (0 <= self.max_accuracy_drop <= 100):
            raise bad_param("max_accuracy_drop", "a number of points in [0, 100]", self.max_accuracy_drop)
        if self.min_agreement is not None and not (0 < self.min_agreement <= 1):
            raise bad_param("min_agreement", "a fraction in (0, 1]", self.min_agreement)
        if not isinstance(self.eval_size, int) or self.eval_size < 1:
            raise bad_param("eval_size", "an integer >= 1", self.eval_size)


@dataclass
class Measured:
    accuracy: float | None
    agreement: float
    nmse: float  # mean squared output error / mean squared float output

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "top1_agreement": self.agreement, "output_nmse": self.nmse}


@dataclass
class FallbackResult:
    """Per-layer sensitivity, the steps of the fallback, and the variant it ended with."""

    float_accuracy: float | None
    full: Measured                     # everything quantized
    layers: list[dict]                 # ranked, most damaging first
    steps: list[dict]                  # each: layers kept in float so far, and what that measured
    kept_float: list[str]
    final: Measured
    result: ConvertResult
    met: bool
    quantized_layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"float_accuracy": self.float_accuracy, "full_quantization": self.full.to_dict(),
                "layer_sensitivity": self.layers, "steps": self.steps, "kept_float": self.kept_float,
                "quantized_layers": self.quantized_layers, "final": self.final.to_dict(), "budget_met": self.met,
                "artifact": self.result.to_dict()}


def _top1(a: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1)
    return (a[:, 0] > 0.5).astype(int) if a.shape[1] == 1 else a.argmax(1)


def _measure(result: ConvertResult, xs, y, ref_out) -> Measured:
    p = result.load()
    out = p.predict(list(xs), batch_size=64)
    out = out[0] if isinstance(out, list) else out
    acc = float(np.mean(_top1(out) == y)) if y is not None else None
    agree = float(np.mean(_top1(out) == _top1(ref_out)))
    nmse = float(np.mean((out - ref_out) ** 2) / max(np.mean(ref_out ** 2), 1e-12))
    p.close()
    return Measured(acc, agree, nmse)


def quantize_with_fallback(model, config: ConvertConfig, calibration, eval_data, budget: FallbackConfig,
                           progress=None, unsafe: bool = False, cache_dir=None) -> FallbackResult:
    """Quantize, find the layers that break accuracy, and keep just those in float.

    Args:
        model: a Keras-family model path or keras.Model (never changed).
        config: the conversion (`to` and `quantize`, e.g. litert / int8).
        calibration: DATA spec or Dataset for calibration.
        eval_data: held-out DATA spec or Dataset to judge accuracy on (labels for
            `max_accuracy_drop`; any inputs for `min_agreement`).
        budget: the accuracy budget (`FallbackConfig`).
        progress: optional callable(str) told what is being measured.

    Returns:
        A `FallbackResult` whose `result` is the mixed-precision artifact (or the fully quantized
        one, when that already meets the budget); `met` says whether the budget was met.

    Raises:
        KerasTurboError: bad data, or a budget in accuracy points without labels.
    """
    from keras_turbo.api import as_ref, io_specs, load
    from keras_turbo.data import Dataset, check, load_data

    note = progress or (lambda msg: None)
    ref = as_ref(model, unsafe=unsafe, cache_dir=cache_dir)
    inputs, outputs = io_specs(ref)
    ds = check(eval_data, inputs, outputs, "--eval-data") if isinstance(eval_data, Dataset) else \
        load_data(eval_data, inputs, outputs, default_split="val", arg="--eval-data")
    ds = ds.take(budget.eval_size, budget.seed)
    if budget.max_accuracy_drop is not None and ds.y is None:
        raise KerasTurboError("--max-accuracy-drop needs labelled --eval-data; use --min-agreement for unlabelled data")
    xs, y = ds.x, ds.y

    ref_p = load(ref, backend="tf-function")
    ref_out = ref_p.predict(list(xs), batch_size=64)
    ref_out = ref_out[0] if isinstance(ref_out, list) else ref_out
    float_acc = float(np.mean(_top1(ref_out) == y)) if y is not None else None

    def ok(m: Measured) -> bool:
        if budget.max_accuracy_drop is not None:
            return (float_acc - m.accuracy) * 100 <= budget.max_accuracy_drop + 1e-9
        return m.agreement >= budget.min_agreement

    cfg = ConvertConfig(**{**config.to_dict(), "keep_float": ()})
    note("quantizing every layer")
    full_res = convert(ref, cfg, calibration, cache_dir=cache_dir)
    full = _measure(full_res, xs, y, ref_out)

    from keras_turbo.models import load_keras

    keras_model = load_keras(ref)
    layers = quantizable_layers(keras_model)
    nodes = [name for name, _ in graph_nodes(ref, _target(cfg), cache_dir)]
    by_layer = layer_nodes(ref, _target(cfg), keras_model, layers, cache_dir)
    layers = [name for name in layers if by_layer[name]]
    ranked = []
    for i, layer in enumerate(layers, 1):
        note(f"sensitivity {i}/{len(layers)}: only {layer} quantized")
        own = set(by_layer[layer])
        res = convert(ref, cfg, calibration, keep_float_nodes=[n for n in nodes if n not in own], cache_dir=cache_dir)
        m = _measure(res, xs, y, ref_out)
        drop = None if m.accuracy is None else (float_acc - m.accuracy) * 100
        ranked.append({"layer": layer, "accuracy": m.accuracy, "accuracy_drop": drop, "top1_agreement": m.agreement,
                       "output_nmse": m.nmse, "ops": len(own)})
    ranked.sort(key=lambda r: (-(r["accuracy_drop"] or 0.0), r["top1_agreement"], -r["output_nmse"]))

    kept: list[str] = []
    steps = [{"kept_float": [], **full.to_dict()}]
    final, final_res = full, full_res
    limit = budget.max_float_layers if budget.max_float_layers is not None else len(ranked)
    for r in ranked[:limit]:
        if ok(final):
            break
        kept.append(r["layer"])
        note(f"fallback: keeping {', '.join(kept)} in float")
        keep_nodes = [n for layer in kept for n in by_layer[layer]]
        final_res = convert(ref, ConvertConfig(**{**cfg.to_dict(), "keep_float": tuple(kept)}), calibration,
                            keep_float_nodes=keep_nodes, cache_dir=cache_dir)
        final = _measure(final_res, xs, y, ref_out)
        steps.append({"kept_float": list(kept), **final.to_dict()})
    return FallbackResult(float_acc, full, ranked, steps, kept, final, final_res, ok(final),
                          quantized_layers=[name for name in layers if name not in kept])


def _target(cfg: ConvertConfig):
    from keras_turbo.convert import TARGETS

    return TARGETS[cfg.to]


__all__ = ["FallbackConfig", "FallbackResult", "quantize_with_fallback"]
