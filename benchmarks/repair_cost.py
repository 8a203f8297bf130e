"""What the int8 repair costs on ResNet50: `quantize_with_fallback` alone, step by step.

The peers benchmark's ResNet50 (`weights=None`, BatchNorm statistics from photo crops,
benchmarks/peers.py builds it and its crops under benchmarks/.work) with a 99% top-1 agreement
budget, for one runtime: prints when each step starts, the agreement of each step, and the whole
time. No table in BENCHMARKS.md: the figures are in docs/status.md (tenth session).

Run: `.venv/bin/python benchmarks/repair_cost.py openvino` (or litert, onnx); about 4 minutes for
OpenVINO, 9 for LiteRT on 2 cores. `--requantize` makes every step quantize again from the float
model, as before `convert.MIXED_METHOD` 2 (NNCF's ignored scope; the LiteRT quantization debugger,
which calibrates again): run both in one session to compare. Set KERAS_TURBO_CACHE to an empty
folder to time the first conversions too.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import WORK  # noqa: E402

import importlib  # noqa: E402

from keras_turbo.convert import ConvertConfig  # noqa: E402
from keras_turbo.techniques.repair import FallbackConfig, quantize_with_fallback  # noqa: E402
from keras_turbo.quality import Budget  # noqa: E402


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--requantize"]
    to = args[0] if args else "openvino"
    if "--requantize" in sys.argv:
        importlib.import_module("keras_turbo.convert").DERIVE_MIXED = False
    model, crops = WORK / "resnet50_224_probe.keras", WORK / "peers" / "resnet50_crops.npz"
    if not (model.exists() and crops.exists()):
        sys.exit(f"{model} or {crops} is missing: run benchmarks/peers.py first")
    t0 = time.monotonic()
    fr = quantize_with_fallback(model, ConvertConfig(to=to, quantize="int8", calibration_size=300), crops, crops,
                                FallbackConfig(budget=Budget(min_agreement=0.99), eval_size=500),
                                progress=lambda m: print(f"[{time.monotonic() - t0:6.1f}s] {m}", flush=True))
    for s in fr.steps:
        print(f"{len(s['kept_float']):3d} layers float: top-1 agreement {s['top1_agreement']:.4f}")
    way = "quantized again per step" if "--requantize" in sys.argv else "derived per step"
    print(f"{to} ({way}): {fr.seconds:.0f} s, budget met: {fr.met}, {len(fr.kept_float)} of "
          f"{len(fr.kept_float) + len(fr.quantized_layers)} layers float")


if __name__ == "__main__":
    main()
