"""int8 repair on CNNs whose activation outlier passes through MaxPooling2D or a residual Add.

For `reference_models.outlier_digits_cnn(via="pool" | "add")` on LiteRT, ONNX Runtime and OpenVINO: full int8,
the tensor-level fallback (ranked from one calibration pass), and cross-layer equalization then
full int8. Accuracy on builtin:digits:test; the budget is 1 point on builtin:digits:val.

Writes the `int8-repair` section of BENCHMARKS.md and benchmarks/results/repair.json.
Run: `.venv/bin/python benchmarks/repair.py` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, WORK, cpu_kind, machine_line, write_section  # noqa: E402

os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))

import keras_turbo  # noqa: E402
from keras_turbo.convert import ConvertConfig, convert  # noqa: E402
from keras_turbo.runtimes import FAMILIES  # noqa: E402
from keras_turbo.machine import facts  # noqa: E402
from keras_turbo.techniques.repair import FallbackConfig, quantize_with_fallback  # noqa: E402
from keras_turbo.techniques import equalize  # noqa: E402
from tests.reference_models import outlier_digits_cnn  # noqa: E402
from keras_turbo.quality import Budget  # noqa: E402


def main() -> None:
    rows, raw = [], {}
    for via in ("pool", "add"):
        model, float_acc = outlier_digits_cnn(via)
        eq = equalize.apply(model).model
        for to in ("litert", "onnx", "openvino"):
            t0 = time.perf_counter()
            fr = quantize_with_fallback(model, ConvertConfig(to=to, quantize="int8"), "builtin:digits:train",
                                        "builtin:digits:val", FallbackConfig(budget=Budget(max_accuracy_drop=1.0)))
            seconds = time.perf_counter() - t0
            test = keras_turbo.evaluate(fr.result.load(), "builtin:digits:test")["accuracy"]
            full = keras_turbo.evaluate(convert(model, ConvertConfig(to=to, quantize="int8"), "builtin:digits:train").load(),
                                        "builtin:digits:test")["accuracy"]
            eq_acc = keras_turbo.evaluate(convert(eq, ConvertConfig(to=to, quantize="int8"), "builtin:digits:train").load(),
                                          "builtin:digits:test")["accuracy"]
            p = fr.result.load()
            p(keras_turbo.data.load_digits(p.inputs, "test").x[0][:1])
            runs_in = p.executed().summary
            raw[f"{via}/{to}"] = {"float": float_acc, "full_int8": full, "repaired": test, "equalized_int8": eq_acc,
                                  "repair_seconds": seconds, "fallback": fr.to_dict(), "runs_in": runs_in}
            rows.append(f"| {via} | {FAMILIES[to].runtime} | {float_acc * 100:.2f} | {full * 100:.2f} | {test * 100:.2f} | "
                        f"{', '.join(fr.kept_float) or '-'} | {', '.join(fr.carriers) or '-'} | "
                        f"{len(fr.quantized_layers)} of {len(fr.quantized_layers) + len(fr.kept_float)} | "
                        f"{len(fr.steps) - 1} | {seconds:.1f} | {runs_in} | {eq_acc * 100:.2f} |")
    machine = facts()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "repair.json").write_text(json.dumps({"machine": machine, "runs": raw}, indent=2))
    body = "\n".join([
        "## int8 repair: outliers through pooling and residual Add",
        "",
        "Reproduce: `.venv/bin/python benchmarks/repair.py` (raw: `benchmarks/results/repair.json`). "
        "`reference_models.outlier_digits_cnn`: a digits CNN (16x16) trained normally, then one channel scaled up 1000x and the reading "
        "layer's weights for it scaled down (the float function is unchanged). In `pool` the outlier reaches the next "
        "convolution through BatchNorm, ReLU and MaxPooling2D; in `add` through a residual Add, ReLU and MaxPooling2D. "
        "Accuracy in % on the test split; budget: 1 point on the validation split. The fallback ranks tensors from one "
        "calibration pass and keeps each bad tensor's writers and readers float, with the parameter-free ops between "
        "them; equalization is `techniques.equalize` then plain full int8 (nothing float). \"runs in\": the repaired "
        "artifact's compute ops as the runtime executes them on this machine (`Predictor.executed`). Which layers stay "
        "float depends on the model's trained weights, so on the CPU that trained it; the head reads the flattened "
        "feature map since issue 26 (a global-average head left the network on a knife's edge).",
        "",
        f"Machine ({cpu_kind(machine)}): {machine_line(machine)}.",
        "",
        "| outlier via | runtime | float | full int8 | repaired | kept float | ops kept float with them | weighted layers int8 | "
        "fallback steps | repair s | runs in | equalized, full int8 |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | --- | ---: |",
        *rows,
    ])
    write_section("int8-repair", body)
    print(body)


if __name__ == "__main__":
    main()
