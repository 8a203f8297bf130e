"""Which int8 calibration holds on trained networks (issue 29, point 3): ONNX Runtime's static
int8 with each of its calibration methods, beside keras-turbo's bias correction.

The two shared ImageNet-trained models (../shared/imagenet), exported to ONNX by keras-turbo,
quantized by ONNX Runtime's `quantize_static` with the settings keras-turbo's exporter uses (QDQ,
per-channel symmetric int8 weights, asymmetric int8 activations) and each `CalibrationMethod`:
MinMax (ONNX Runtime's default and keras-turbo's), Percentile 99.99 and Entropy; then MinMax again
on the model after `techniques/biascorrect.py`. Calibrated on the 300 seeded photos optimize sets
apart, top-1 on the other 1,000 (the split of `benchmarks/trained.py`).

Run: `.venv/bin/python benchmarks/calibration.py` (about 15 minutes on 2 cores); writes
BENCHMARKS.md "calibration" and benchmarks/results/calibration.json (`--render`: the table again
from that JSON). Accuracy only: nothing here is timed.
"""

from __future__ import annotations

import sys
import time

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from _common import RESULTS, WORK, imagenet_model, imagenet_split, machine_line, publish, rendered_again  # noqa: E402

from tests.reference_models import IMAGENET_MODELS, SHARED_IMAGENET  # noqa: E402

MODELS = {"mobilenet_v1_0.75": "MobileNet v1 0.75 (trained in float)", "mobilenet_v2_1.0": "MobileNetV2 1.0"}
STRIDE = 50              # calibration samples per pass of the calibrator (a divisor of the 300)
#: (row label, CalibrationMethod name, extra_options, bias-corrected first)
METHODS = [("MinMax (ONNX Runtime's default, keras-turbo's)", "MinMax", {}, False),
           ("Percentile 99.99", "Percentile", {"CalibPercentile": 99.99}, False),
           ("Entropy", "Entropy", {}, False),
           ("MinMax after keras-turbo's bias correction", "MinMax", {}, True)]
RAW = RESULTS / "calibration.json"
OUT = WORK / "calibration"


def top1(path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    pred = np.concatenate([s.run(None, {name: x[i:i + 50]})[0].argmax(-1) for i in range(0, len(x), 50)])
    return float((pred == y).mean())


def quantized(float_onnx, out, samples: list, method: str, extra: dict):
    """`quantize_static` as keras-turbo's ONNX exporter calls it, with `method` in its place."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from keras_turbo.exporters.onnx import preprocessed

    class Reader(CalibrationDataReader):
        """Fed to the calibrator STRIDE samples at a time (`CalibStridedMinMax`): the histogram
        methods otherwise hold every activation of every sample at once (MobileNetV2's 300 ran
        this 23 GB machine out of memory); the histograms and ranges merge across the strides."""

        def __init__(self):
            self.it = iter(samples)

        def __len__(self):
            return len(samples)

        def set_range(self, start_index: int, end_index: int):
            self.it = iter(samples[start_index:end_index])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(preprocessed(float_onnx)), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "CalibStridedMinMax": STRIDE, **extra})
    return out


def measure(key: str, x, y, cal, judged, log) -> dict:
    import keras_turbo
    from keras_turbo.convert import ConvertConfig
    from keras_turbo.data import Dataset
    from keras_turbo.techniques import biascorrect

    path = SHARED_IMAGENET / "models" / IMAGENET_MODELS[key]
    dest = OUT / key
    dest.mkdir(parents=True, exist_ok=True)
    model = imagenet_model(key)
    corrected = dest / "biascorrected.keras"
    biascorrect.apply(model, None, Dataset((x[cal],), None, "calibration")).model.save(corrected)
    floats = {False: keras_turbo.convert(str(path), ConvertConfig(to="onnx"), output=dest / "float.onnx").path,
              True: keras_turbo.convert(str(corrected), ConvertConfig(to="onnx"), output=dest / "corrected.onnx").path}
    import onnxruntime as ort

    name = ort.InferenceSession(str(floats[False]), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    samples = [{name: x[i:i + 1]} for i in cal]
    row = {"title": MODELS[key], "float": top1(floats[False], x[judged], y[judged]), "rows": []}
    for label, method, extra, corrected_first in METHODS:
        t0 = time.time()
        q = quantized(floats[corrected_first], dest / f"{method}{'-bc' if corrected_first else ''}.onnx", samples, method, extra)
        row["rows"].append({"label": label, "top1": top1(q, x[judged], y[judged]), "seconds": round(time.time() - t0, 1)})
        log(f"{key} {label}: {100 * row['rows'][-1]['top1']:.1f}%")
    return row


def render(raw: dict) -> str:
    lines = ["## int8 calibration methods on trained networks", "",
             "`.venv/bin/python benchmarks/calibration.py`: each shared ImageNet-trained model exported to ONNX by "
             "keras-turbo, quantized by ONNX Runtime's `quantize_static` as keras-turbo's exporter calls it (QDQ, "
             "per-channel symmetric int8 weights, asymmetric int8 activations) with each calibration method (fed {raw.get('stride', 50)} "
             "samples at a time, the ranges and histograms merged across), and once "
             f"more after `techniques/biascorrect.py`; calibrated on {raw['calibration']} photos, top-1 on "
             f"{raw['judged']} others. Accuracy only.", "",
             f"Machine: {machine_line(raw['machine'])}.", "",
             "| model | calibration | top-1 | points vs float |", "| --- | --- | ---: | ---: |"]
    for m in raw["models"].values():
        lines.append(f"| {m['title']} | float (no int8) | {100 * m['float']:.1f}% | |")
        for r in m["rows"]:
            lines.append(f"| {m['title']} | {r['label']} | {100 * r['top1']:.1f}% | {100 * (r['top1'] - m['float']):+.1f} |")
    lines += ["", "A wider or entropy-chosen activation range does not repair int8 on the network trained in float: "
              "the error is in the rounded weights, whose average shift of each layer's output bias correction takes out "
              "(Nagel et al. 2019, section 4.2). That is why keras-turbo's repair is bias correction, not another "
              "calibration method."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if rendered_again(argv, "calibration", RAW, render):
        return 0
    from keras_turbo.machine import facts

    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    x, y, cal, judged = imagenet_split()
    raw = {"machine": facts(), "calibration": len(cal), "judged": len(judged), "stride": STRIDE,
           "models": {k: measure(k, x, y, cal, judged, log) for k in MODELS}}
    publish("calibration", RAW, raw, render)
    log("wrote BENCHMARKS.md \"calibration\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
