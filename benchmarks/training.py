"""Training-based techniques on the digits data: distillation, quantization-aware training, clustering.

Writes the `training` section of BENCHMARKS.md and benchmarks/results/training.json.
Run: `.venv/bin/python benchmarks/training.py`; a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, WORK, machine_line, write_section  # noqa: E402

os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))

import keras_turbo  # noqa: E402
from keras_turbo.bench import BenchmarkConfig  # noqa: E402
from keras_turbo.convert import ConvertConfig, convert  # noqa: E402
from keras_turbo.data import load_data  # noqa: E402
from keras_turbo.runtimes.keras_runtimes import _infos  # noqa: E402
from keras_turbo.techniques import cluster, distill, qat  # noqa: E402
from keras_turbo.zoo import digits_model_path, outlier_digits_mlp  # noqa: E402

STUDENT = "width:0.48"  # 0.5 rounds to 26% of the FLOPs; 0.48 gives 8/15/31 filters, under a quarter
DISTILL = dict(student=STUDENT, epochs=40, learning_rate=5e-3, temperature=4.0, alpha=0.1, seed=0)
SUBSET = 300  # the small-data setting, where a teacher's soft labels are worth the most
OUTLIER_SCALE = 200.0


def digits(model, split):
    return load_data(f"builtin:digits:{split}", _infos(model.inputs))


def pct(v):
    return f"{100 * v:.2f}%"


def main() -> None:
    started = time.time()
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw: dict = {}
    teacher = keras_turbo.load_model(digits_model_path())
    train, test = digits(teacher, "train"), digits(teacher, "test")

    # -- distillation: the full train split, and a 300-sample subset
    rows = []
    for label, data in (("full train split", train), (f"{SUBSET}-sample subset", train.take(SUBSET, seed=0))):
        kd = distill.apply(teacher, distill.DistillConfig(**DISTILL), data, test)
        base = distill.apply(teacher, distill.DistillConfig(**DISTILL, labels_only=True), data, test)
        rows.append({"data": label, "samples": len(data), **{k: kd.report[k] for k in
                     ("teacher_accuracy", "student_accuracy", "flops_ratio", "teacher_flops", "student_flops", "student")},
                     "labels_only_accuracy": base.report["student_accuracy"]})
        print(f"[{time.time() - started:5.0f}s] distill {label}: {rows[-1]}", flush=True)
        if data is train:
            student_path = WORK / "digits_student.keras"
            WORK.mkdir(parents=True, exist_ok=True)
            kd.model.save(student_path)
    cfg = BenchmarkConfig(warmup_runs=3, warmup_seconds=0.5, min_runs=200, min_seconds=2.0)
    lat = {}
    for name, path in (("teacher", digits_model_path()), ("student", student_path)):
        rep = keras_turbo.benchmark(path, backends=["litert"], batch_sizes=[1], config=cfg)
        r = rep.get("litert", 1)
        lat[name] = r.latency_ms["p50"] if r and r.ok else None
        m = rep.machine
    raw["distill"] = {"config": DISTILL, "runs": rows, "litert_b1_p50_ms": lat}
    print(f"[{time.time() - started:5.0f}s] latency {lat}", flush=True)

    # -- QAT on a model that full int8 PTQ breaks
    model, float_acc = outlier_digits_mlp(scale=OUTLIER_SCALE)
    qtrain, qtest = digits(model, "train"), digits(model, "test")
    ptq = convert(model, ConvertConfig(to="litert", quantize="int8"), qtrain)
    ptq_acc = keras_turbo.evaluate(ptq.path, qtest)["accuracy"]
    r = qat.apply(model, qat.QATConfig(epochs=10), qtrain, qtest)
    tfl = qat.export_tflite(r, WORK / "outlier_mlp_qat_int8.tflite")
    tfl_acc = keras_turbo.evaluate(tfl, qtest)["accuracy"]
    raw["qat"] = {"model": f"zoo.outlier_digits_mlp(scale={OUTLIER_SCALE})", "float": float_acc, "ptq_int8": ptq_acc,
                  "fake_quant_before": r.report["accuracy_fake_quant_before"], "qat_fake_quant": r.report["accuracy_fake_quant"],
                  "qat_tflite": tfl_acc, "config": r.config.to_dict(), "float_layers": r.report["float_layers"]}
    print(f"[{time.time() - started:5.0f}s] qat {raw['qat']}", flush=True)

    # -- clustering the digits CNN
    c = cluster.apply(teacher, cluster.ClusterConfig(clusters=16, epochs=2), train, test)
    size = c.report["size"]
    raw["cluster"] = {"accuracy_before": c.report["accuracy_before"], "accuracy_after": c.report["accuracy_after"],
                      "size": size, "distinct_values": cluster.distinct_values(c.model)}
    print(f"[{time.time() - started:5.0f}s] cluster {raw['cluster']}", flush=True)

    raw["machine"] = m
    (RESULTS / "training.json").write_text(json.dumps(raw, indent=2, default=str))

    d = raw["distill"]
    dist_rows = "\n".join(
        f"| {r['data']} ({r['samples']}) | {pct(r['teacher_accuracy'])} | {pct(r['student_accuracy'])} | "
        f"{pct(r['labels_only_accuracy'])} | {r['flops_ratio']:.3f} |" for r in d["runs"])
    speed = (f"{lat['teacher']:.3f} ms vs {lat['student']:.3f} ms, {lat['teacher'] / lat['student']:.2f}x"
             if lat["teacher"] and lat["student"] else "not measured")
    q = raw["qat"]
    body = (
        "## Training-based techniques on digits: distillation, QAT, clustering\n\n"
        "Reproduce: `.venv/bin/python benchmarks/training.py` (raw data in `benchmarks/results/training.json`). "
        "Accuracy on `builtin:digits:test` (270 images: one image is 0.37 points).\n"
        + (f"Machine: {machine_line(m)}.\n" if m else "") + "\n"
        f"**Distillation** (`keras_turbo.techniques.distill`): teacher the built-in digits CNN, student `{STUDENT}` "
        f"(a width-scaled copy), {DISTILL['epochs']} epochs, T={DISTILL['temperature']}, alpha={DISTILL['alpha']}, seed 0; "
        "the baseline is the same student, same seed and epochs, trained on the labels alone.\n\n"
        "| train data | teacher | distilled student | student, labels only | student FLOPs / teacher |\n"
        "| --- | ---: | ---: | ---: | ---: |\n" + dist_rows + "\n\n"
        + "".join(f"On the {r['data']}, distillation {'beat' if r['student_accuracy'] > r['labels_only_accuracy'] else 'did NOT beat'} "
                  f"the labels-only student ({pct(r['student_accuracy'])} vs {pct(r['labels_only_accuracy'])}). " for r in d["runs"])
        + "With this teacher (99.6%) the labels are nearly as informative as its soft outputs; no setting tuned to make "
        "distillation win is reported here.\n\n"
        f"LiteRT batch-1 p50, teacher vs student (same run): {speed}.\n\n"
        f"**QAT** (`keras_turbo.techniques.qat`) on `zoo.outlier_digits_mlp(scale={OUTLIER_SCALE:g})`: a digits MLP "
        "trained normally, then one hidden channel scaled up 200x and the next layer's weights scaled down to match "
        "(the same float function; an activation range one channel dominates). 10 epochs.\n\n"
        "| float | PTQ full int8 (LiteRT) | fake-quant before QAT | QAT fake-quant (Keras) | QAT exported .tflite (LiteRT, int8) |\n"
        "| ---: | ---: | ---: | ---: | ---: |\n"
        f"| {pct(q['float'])} | {pct(q['ptq_int8'])} | {pct(q['fake_quant_before'])} | {pct(q['qat_fake_quant'])} | {pct(q['qat_tflite'])} |\n\n"
        "**Weight clustering** (`keras_turbo.techniques.cluster`), digits CNN, 16 clusters per kernel, 2 epochs of "
        "fine-tuning. It buys compressed size only: the model has the same shape and runs at the same speed.\n\n"
        "| | accuracy | .keras gzip bytes | weights gzip bytes | clustered kernels gzip bytes |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"| before | {pct(raw['cluster']['accuracy_before'])} | {size['before']['gzip_bytes']} | {size['before']['weights_gzip_bytes']} | {size['kernels_gzip']['before']} |\n"
        f"| after | {pct(raw['cluster']['accuracy_after'])} | {size['after']['gzip_bytes']} | {size['after']['weights_gzip_bytes']} | {size['kernels_gzip']['after']} |\n"
        f"| ratio | | {size['keras_gzip_ratio']:.2f}x | {size['weights_gzip_ratio']:.2f}x | {size['kernels_gzip']['ratio']:.2f}x |\n"
    )
    write_section("training", body)
    print(f"wrote BENCHMARKS.md in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
