"""Structured pruning of five keras.applications architectures (`weights=None`, 48x48): each
comes out smaller and its pruned model converts to LiteRT with the same outputs as Keras.

tests/test_structured.py prunes all five but converts only MobileNet, MobileNetV3Small and
EfficientNetB0 (the conversion is most of each case's time); this script converts all five,
MobileNetV2 and ResNet50 included. It prints one line per architecture and exits 1 if any
check fails. Nothing is written to BENCHMARKS.md.

Run: `.venv/bin/python benchmarks/structured_apps.py [NAME ...]`; about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import WORK  # noqa: E402

os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))

import numpy as np  # noqa: E402

import keras_turbo  # noqa: E402
from keras_turbo.techniques import structured  # noqa: E402
from tests.reference_models import application  # noqa: E402

NAMES = ("mobilenet", "mobilenetv2", "mobilenetv3small", "efficientnetb0", "resnet50")
SIZE = 48


def check(name: str) -> list[str]:
    """The checks of test_applications_come_out_smaller_and_convert, conversion included: the failed ones."""
    model = application(name, input_shape=(SIZE, SIZE, 3))
    res = structured.apply(model, structured.StructuredConfig(sparsity=0.5, finetune=False))
    rep = res.report
    failed = []
    if not rep["params_after"] < 0.5 * rep["params_before"]:
        failed.append(f"params {rep['params_before']} -> {rep['params_after']}")
    if not rep["flops_reduction"] > 2.5:
        failed.append(f"FLOPs reduction {rep['flops_reduction']:.2f}")
    if not len(rep["groups"]) >= 10:
        failed.append(f"{len(rep['groups'])} groups")
    if not all("model output" in g["reason"] or "predictions" in g["reason"] for g in rep["unpruned_groups"]):
        failed.append(f"unpruned: {[g['reason'] for g in rep['unpruned_groups']]}")
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype="float32")
    want = np.asarray(res.model(x, training=False))
    t0 = time.time()
    got = keras_turbo.load(res.model, backend="litert", threads=2)(x)
    convert_s = time.time() - t0
    try:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    except AssertionError as e:
        failed.append(f"LiteRT differs: {str(e).strip().splitlines()[-1]}")
    print(f"{name:18s} FLOPs /{rep['flops_reduction']:.2f}  params {rep['params_before'] / 1e6:.2f}M -> "
          f"{rep['params_after'] / 1e6:.2f}M  {len(rep['groups'])} groups  LiteRT {convert_s:.1f} s  "
          f"{'ok' if not failed else 'FAILED: ' + '; '.join(failed)}", flush=True)
    return failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(NAMES)} (default: all)")
    args = ap.parse_args()
    unknown = set(args.names) - set(NAMES)
    if unknown:
        ap.error(f"unknown architecture(s) {', '.join(sorted(unknown))} (expected some of {', '.join(NAMES)})")
    bad = [name for name in (args.names or NAMES) if check(name)]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
