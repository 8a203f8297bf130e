"""keras-turbo on ImageNet-trained networks and real labelled photos, against every peer runtime's
out-of-the-box path (issue 29).

The models and photos are `../shared/imagenet` (its README: MobileNetV2 1.0 and MobileNet v1 0.75
trained on ImageNet, 1,300 labelled validation photos, preprocessed as Keras' `preprocess_input`:
`tests/reference_models.imagenet_photos`). For each model:

1. `keras-turbo optimize MODEL --data photos.npz --max-accuracy-drop 1 --time-budget 10m`, the CLI as
   a user runs it, without train data: optimize sets a seeded 300 of the photos apart for int8
   calibration and judges on the other 1,000 against their labels (a 1-point budget is then 10
   photos). And the budget without labels: `--min-agreement 0.99` on the same photos without
   their labels. Batch 32: the same --out rerun at `--batch-size 32` (builds and quality reused).
2. keras-turbo's pick and every peer's default (`peers.PEERS`: OpenVINO's `compile_model` with no
   config, the LiteRT converter's default and `Optimize.DEFAULT`, an ONNX Runtime default session,
   `tf.function`) timed in alternating rounds, each (path, batch size) in a fresh process
   (`peers.alternating_rows`), each with its own top-1 accuracy and agreement with the float model
   on the same 1,000 judged photos. A peer keeps the budget when its accuracy is at most 1 point
   below the float model's on them (under the agreement budget: when it agrees on 99% of them).
3. The machine's limit: the fp32 / bf16 / int8 peaks of `peers.json` (`benchmarks/peers.py --stage
   peak`), each model's floor, each pick's share of it.

Run: `.venv/bin/python benchmarks/trained.py` (about 45 minutes a budget on 2 cores; `--only
mobilenet_v2`, `--budget accuracy|agreement`, `--stage optimize|time|render`; raw results in
benchmarks/results/trained.json). Writes the
`trained` and `headline` sections of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from _common import RESULTS, ROOT, WORK, cpu_kind, machine_line, write_section  # noqa: E402

from tests.reference_models import IMAGENET_MODELS, SHARED_IMAGENET, imagenet_photos  # noqa: E402

MODELS = {"mobilenet_v2": ("mobilenet_v2_1.0", "MobileNetV2 1.0 (ImageNet-trained)"),
          "mobilenet_v1": ("mobilenet_v1_0.75", "MobileNet v1 0.75 (ImageNet-trained)")}
MAX_DROP = 1.0           # points of top-1 accuracy: the budget with labels
MIN_AGREEMENT = 0.99     # top-1 agreement with the float model: the budget without labels
#: the two budgets a user states: with labels (--data holds y) and without (photos only)
BUDGETS = {"accuracy": (["--max-accuracy-drop", f"{MAX_DROP:g}"], f"`--max-accuracy-drop {MAX_DROP:g}` (labels)"),
           "agreement": (["--min-agreement", f"{MIN_AGREEMENT:g}"], f"`--min-agreement {MIN_AGREEMENT:g}` (no labels)")}
CALIBRATION = 300        # photos optimize sets apart (OptimizeConfig.calibration_size); the rest are judged
TIME_BUDGET = "10m"
OUT = WORK / "trained"
RAW = RESULTS / "trained.json"


def prepare(key: str) -> dict:
    """The photos as optimize's DATA (x, y: all 1,300) and the judged 1,000 as the peers' quality
    file (x, the float model's top-1, y), the same seeded split optimize makes
    (`optimize.measure.DataRef`: the head of a seed-0 permutation calibrates, the tail is judged)."""
    from keras_turbo import _tf
    from keras_turbo.describe import describe_keras
    from keras_turbo.model import as_ref, load_keras

    OUT.mkdir(parents=True, exist_ok=True)
    model = SHARED_IMAGENET / "models" / IMAGENET_MODELS[MODELS[key][0]]
    data, quality = OUT / "photos.npz", OUT / f"{key}_quality.npz"
    if not data.exists():
        x, y, _ = imagenet_photos()
        np.savez(data, x=x, y=y)
    if not (OUT / "photos_unlabelled.npz").exists():  # the agreement budget's DATA: the same photos, no y
        np.savez(OUT / "photos_unlabelled.npz", x=np.load(data)["x"])
    z = np.load(data)
    x, y = z["x"], z["y"]
    judged = np.random.default_rng(0).permutation(len(x))[CALIBRATION:]
    keras_model = load_keras(as_ref(model))
    if not quality.exists():
        top1 = np.asarray(keras_model.predict(x[judged], batch_size=32, verbose=0)).argmax(-1)
        np.savez(quality, x=x[judged], top1=top1, y=y[judged])
    q = np.load(quality)
    d = describe_keras(keras_model)
    del keras_model
    _tf.keras().backend.clear_session()
    return {"key": key, "title": MODELS[key][1], "model": str(model), "data": str(data), "quality": str(quality),
            "unlabelled": str(OUT / "photos_unlabelled.npz"),
            "flops_per_sample": d["flops_per_sample"], "params": d["params"], "photos": int(len(x)),
            "judged": int(len(judged)), "float_accuracy": float((q["top1"] == q["y"]).mean())}


def optimize_b1(prep: dict, out: Path, budget: str = "accuracy") -> dict:
    """`keras-turbo optimize` as a user runs it (the CLI, its defaults), timed from outside."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    flags = [*BUDGETS[budget][0], "--time-budget", TIME_BUDGET]
    data = prep["data"] if budget == "accuracy" else prep["unlabelled"]
    cmd = [sys.executable, "-c", "import sys; from keras_turbo.cli import main; sys.exit(main())", "optimize",
           prep["model"], "--data", data, *flags, "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    t0, load = time.time(), os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    return {"command": " ".join(["keras-turbo optimize", Path(prep["model"]).name, "--data", Path(data).name,
                                 *flags, "--out", out.name]),
            "exit": proc.returncode, "wall_s": round(time.time() - t0, 1),
            "load_before_after": [round(load, 1), round(os.getloadavg()[0], 1)],
            "stdout_tail": proc.stdout.strip().splitlines()[-8:], "stderr_tail": proc.stderr.strip().splitlines()[-4:]}


def optimize_rerun(prep: dict, out: Path, batch: int, budget: str = "accuracy") -> dict:
    """The same --out at another batch size: builds and quality reused, speed measured again."""
    import keras_turbo
    from keras_turbo.optimize import OptimizeConfig
    from keras_turbo.quality import Budget

    b = Budget(max_accuracy_drop=MAX_DROP) if budget == "accuracy" else Budget(min_agreement=MIN_AGREEMENT)
    cfg = OptimizeConfig(budget=b, batch_size=batch, time_budget_s=600.0, min_runs=5, min_seconds=1.0)
    t0 = time.time()
    keras_turbo.optimize(prep["model"], prep["data" if budget == "accuracy" else "unlabelled"], None, cfg, out, force=True)
    return {"command": f"keras_turbo.optimize(..., OptimizeConfig({b!r}, "
                       f"batch_size={batch}, min_runs=5, min_seconds=1.0), same out)",
            "exit": 0, "wall_s": round(time.time() - t0, 1)}


TECH_DROP = 3.0          # points: the technique run's budget (a common edge trade-off)
TECH_TIME = "20m"


def optimize_techniques(prep: dict, out: Path, time_budget: str = TECH_TIME) -> dict:
    """Issue 29, point 4: the photos the accuracy runs calibrate on (the seeded 300) given as
    unlabelled --train-data, the other 1,000 as labelled --data, `--max-accuracy-drop 3`: the
    fine-tunes learn from the float model's outputs; probes are judged on a seeded 15% of --data,
    the variants on the rest."""
    import shutil

    train, data = split_files(prep)
    shutil.rmtree(out, ignore_errors=True)
    flags = ["--max-accuracy-drop", f"{TECH_DROP:g}", "--time-budget", time_budget]
    cmd = [sys.executable, "-c", "import sys; from keras_turbo.cli import main; sys.exit(main())", "optimize",
           prep["model"], "--data", str(data), "--train-data", str(train), *flags, "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    return {"command": " ".join(["keras-turbo optimize", Path(prep["model"]).name, "--data", data.name,
                                 "--train-data", train.name, *flags, "--out", out.name]),
            "exit": proc.returncode, "wall_s": round(time.time() - t0, 1),
            "stdout_tail": proc.stdout.strip().splitlines()[-8:], "stderr_tail": proc.stderr.strip().splitlines()[-4:],
            "summary": technique_summary(out)}


def technique_summary(out: Path) -> dict:
    """From the run's results.json: the best variant that needs no training, and each technique's
    fastest variant within 3 points and within 1 point (re-read from the same judged photos), with
    what its fine-tune saw; the run's own timings (its run-off re-times the leaders)."""
    from keras_turbo.report import trained_on

    doc = json.loads((out / "results.json").read_text())
    ok = [v for v in doc["variants"] if v.get("ok") and v.get("accuracy_drop") is not None and v.get("latency_ms")]

    def fastest(rows, drop):
        rows = [v for v in rows if v["accuracy_drop"] <= drop + 1e-9]
        return min(rows, key=lambda v: v["latency_ms"]["p50"], default=None)

    def brief(v):
        return None if v is None else {"name": v["name"], "p50_ms": v["latency_ms"]["p50"], "accuracy": v["accuracy"],
                                       "accuracy_drop": v["accuracy_drop"], "trained_on": trained_on(v),
                                       "label": v.get("label")}

    plain = [v for v in ok if not v["techniques"]]
    out_ = {"recommended": doc["recommended"], "float_accuracy": doc.get("float_accuracy"),
            "eval_samples": doc["data"]["eval_samples"], "notes": doc["plan"]["notes"], "elapsed_s": doc["elapsed_s"],
            "no_train": {str(d): brief(fastest(plain, d)) for d in (TECH_DROP, MAX_DROP)}, "techniques": {},
            "search": [{"name": p["name"], "accuracy_drop": p.get("accuracy_drop"), "within_budget": p.get("within_budget"),
                        "trained_on": trained_on(p)} for p in doc.get("search") or []],
            "failed": [{"name": v["name"], "error": (v.get("error") or "")[:200]} for v in doc["variants"]
                       if v["techniques"] and not v.get("ok")]}
    for t in sorted({t for v in ok for t in v["techniques"]}):
        rows = [v for v in ok if t in v["techniques"]]
        out_["techniques"][t] = {str(d): brief(fastest(rows, d)) for d in (TECH_DROP, MAX_DROP)}
    # What bounds each point fully fine-tuned: its most accurate export and its fastest one,
    # within the budget or not (the accuracy a technique gives up per step of strength).
    out_["points"] = [{"point": f"{g[0]['techniques'][0]} {g[0].get('label') or ''}".strip(),
                       "best": brief(min(g, key=lambda v: v["accuracy_drop"])),
                       "fastest": brief(min(g, key=lambda v: v["latency_ms"]["p50"]))}
                      for g in _by_point([v for v in ok if v["techniques"]])]
    return out_


def _by_point(rows: list) -> list[list]:
    """Variants grouped by what was trained (the first technique and its strength; the repairs
    after it are among its exports), in first-seen order."""
    groups: dict = {}
    for v in rows:
        groups.setdefault((v["techniques"][0], v.get("label")), []).append(v)
    return list(groups.values())


def render_techniques(raw: dict) -> str:
    """The technique section: per model, the no-train pick and each technique's best point at 3
    and at 1 point, as ratios within the run; what bounds each point fully fine-tuned."""
    commands = [t.get("command", "").split() for t in (raw.get("techniques") or {}).values()]
    budget = next((c[c.index("--time-budget") + 1] for c in commands if "--time-budget" in c), TECH_TIME)
    lines = ["## On ImageNet-trained networks with unlabelled photos as train data: the techniques", "",
             f"Reproduce: `.venv/bin/python benchmarks/trained.py --stage techniques --technique-time {budget}` (raw: "
             f"`benchmarks/results/trained.json`, `techniques`). `keras-turbo optimize MODEL --data "
             f"judged_labelled_1000.npz --train-data train_unlabelled_300.npz --max-accuracy-drop {TECH_DROP:g} "
             f"--time-budget {budget}`: the 300 photos the other sections calibrate on, without their labels, "
             "are the train data (the fine-tunes learn from the float model's outputs, and int8 calibrates on them); "
             "the other 1,000, labelled, are --data: the strength search judges its probes on a seeded 15% of "
             "them, the variants are judged on the rest. Each technique's best point is its fastest variant within "
             f"{TECH_DROP:g} points, and within {MAX_DROP:g} point re-read from the same judged photos (the search "
             f"itself was steered by the {TECH_DROP:g}-point budget). Ratios are against the fastest variant that "
             "needs no training under the same budget, from the run's own timings (its run-off re-times the "
             "leaders). Above 1.00x the technique is faster.", ""]
    mach = raw.get("machine") or {}
    if mach:
        lines += [f"Machine: {machine_line(mach)}.", ""]
    lines += ["| model | budget | fastest without training | technique | its best point | accuracy drop | p50 ms | vs no-train | trained on |",
              "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
    for key, t in (raw.get("techniques") or {}).items():
        s = t.get("summary") or {}
        title = MODELS[key][1]
        for d in (TECH_DROP, MAX_DROP):
            base = (s.get("no_train") or {}).get(str(d))
            bt = f"`{base['name']}` {peers._ms(base['p50_ms'])} ms ({base['accuracy_drop']:+.1f})" if base else "none"
            techs = s.get("techniques") or {}
            for name, pts in techs.items():
                v = pts.get(str(d))
                if v is None:
                    lines.append(f"| {title} | -{d:g} pt | {bt} | {name} | none within budget | | | | |")
                    continue
                ratio = f"**{base['p50_ms'] / v['p50_ms']:.2f}x**" if base else "-"
                lines.append(f"| {title} | -{d:g} pt | {bt} | {name} | `{v['name']}` | {v['accuracy_drop']:+.1f} | "
                             f"{peers._ms(v['p50_ms'])} | {ratio} | {v['trained_on']} |")
            if not techs:
                lines.append(f"| {title} | -{d:g} pt | {bt} | (no technique variant was measured) | | | | | |")
    lines.append("")
    for key, t in (raw.get("techniques") or {}).items():
        s = t.get("summary") or {}
        probes = "; ".join(f"{p['name']} {p['accuracy_drop']:+.1f}" + ("" if p["within_budget"] else " (over)")
                           for p in s.get("search") or [] if p.get("accuracy_drop") is not None)
        fails = "; ".join(f"{f['name']}: {f['error']}" for f in s.get("failed") or [])
        lines.append(f"- {MODELS[key][1]}: `{t['command']}` exited {t['exit']} after {t['wall_s']:.0f} s; recommended "
                     f"`{s.get('recommended')}`; variants judged on {s.get('eval_samples')} photos; probes: "
                     f"{probes or 'none'}" + (f"; failed: {fails}" if fails else "") + ".")
        bounds = "; ".join(f"{p['point']}: most accurate `{p['best']['name']}` {p['best']['accuracy_drop']:+.1f} at "
                           f"{peers._ms(p['best']['p50_ms'])} ms, fastest `{p['fastest']['name']}` "
                           f"{peers._ms(p['fastest']['p50_ms'])} ms at {p['fastest']['accuracy_drop']:+.1f}"
                           for p in s.get("points") or [])
        if bounds:
            lines.append(f"- What bounds each point fully fine-tuned (points lost, within the budget or not): {bounds}.")
    return "\n".join(lines)


def split_files(prep: dict) -> tuple[Path, Path]:
    """The seeded split as two files: the 300 calibration photos without labels, the 1,000 judged
    ones with theirs (the same split optimize makes of photos.npz)."""
    z = np.load(prep["data"])
    perm = np.random.default_rng(0).permutation(len(z["x"]))
    calib, judged = OUT / "train_unlabelled_300.npz", OUT / "judged_labelled_1000.npz"
    if not calib.exists():
        np.savez(calib, x=z["x"][perm[:CALIBRATION]])
        np.savez(judged, x=z["x"][perm[CALIBRATION:]], y=z["y"][perm[CALIBRATION:]])
    return calib, judged


def repair(prep: dict, to: str, out: Path, extra: tuple = ()) -> dict:
    """Issue 29, point 3: `keras-turbo convert --quantize int8 --max-accuracy-drop 1` on one
    runtime, calibrated on the 300 photos and judged on the 1,000: the repair's result, and which
    layers stayed float."""
    calib, judged = split_files(prep)
    out.mkdir(parents=True, exist_ok=True)
    suffix = {"litert": ".tflite", "onnx": ".onnx", "openvino": ".xml"}[to]
    args = ["convert", prep["model"], "--to", to, "--quantize", "int8", "--calibration-data", str(calib),
            "--eval-data", str(judged), "--eval-size", "1000", "--max-accuracy-drop", f"{MAX_DROP:g}", "-o", str(out / f"model{suffix}"),
            "--json", str(out / "convert.json"), "--force", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", "import sys; from keras_turbo.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    res = {"command": "keras-turbo " + " ".join([a if not a.startswith("/") else Path(a).name for a in args]),
           "exit": proc.returncode, "wall_s": round(time.time() - t0, 1), "stderr_tail": proc.stderr.strip().splitlines()[-3:]}
    if proc.returncode == 0:
        fb = json.loads((out / "convert.json").read_text())["fallback"]
        res.update(met=fb["budget_met"], kept_float=fb["kept_float"], carriers=fb["carriers"],
                   quantized=len(fb["quantized_layers"]), float_accuracy=fb["float_accuracy"],
                   full_int8=fb["full_quantization"]["accuracy"], final=fb["final"]["accuracy"], seconds=fb["seconds"],
                   eval_samples=fb["eval_samples"],
                   steps=[{"kept": len(st["kept_float"]), "accuracy": st["accuracy"]} for st in fb["steps"]],
                   top_ranked=[r["layer"] for r in fb["layer_sensitivity"][:5]])
    return res


def kept(row: dict, float_accuracy: float, budget: str = "accuracy") -> bool | None:
    """Whether a path kept the budget on the judged photos (None: not checked): at most 1 point
    of accuracy below float, or (the budget without labels) 99% top-1 agreement with it."""
    if budget == "agreement":
        agree = row.get("top1_agreement")
        return None if agree is None else agree >= MIN_AGREEMENT - 1e-9
    acc = row.get("accuracy")
    return None if acc is None else (float_accuracy - acc) * 100 <= MAX_DROP + 1e-9


# ------------------------------------------------------------------ tables

def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _cells(m: dict, b: str) -> tuple[dict, dict, dict] | None:
    cell = m.get("batches", {}).get(b) or {}
    rows, opt = cell.get("rows") or {}, cell.get("optimize_summary") or {}
    rec = rows.get("keras-turbo")
    if not (rec and rec.get("ok")):
        return None
    return rows, opt, rec


def ratios(m: dict, b: str) -> dict | None:
    """(a), (b) and (b') of one model and batch size, each peer row marked with its verdict."""
    from keras_turbo.ratios import speedups

    got = _cells(m, b)
    if not got:
        return None
    rows, opt, rec = got
    base = [{**r, "backend": n, "batch_size": int(b), "within_budget": kept(r, m["float_accuracy"], m.get("budget", "accuracy"))}
            for n, r in rows.items() if n != "keras-turbo"]
    return speedups({**rec, "batch_size": int(b)}, base)


def render(raw: dict) -> str:
    mach = raw.get("machine") or {}
    lines = ["## On ImageNet-trained networks: keras-turbo's pick against the peers' defaults", "",
             "Reproduce: `.venv/bin/python benchmarks/trained.py` (raw: `benchmarks/results/trained.json`). The "
             "models and photos are `../shared/imagenet` (ImageNet-trained MobileNetV2 1.0 and MobileNet v1 0.75, "
             "1,300 labelled validation photos, centre crop 224, `x / 127.5 - 1`). keras-turbo's pick is what "
             f"`keras-turbo optimize MODEL --data photos.npz BUDGET --time-budget {TIME_BUDGET}` recommends without "
             f"train data, for each of the two budgets a user states: {BUDGETS['accuracy'][1]} on the photos with "
             f"their labels, and {BUDGETS['agreement'][1]} on the same photos without them. It calibrates int8 on a "
             f"seeded {CALIBRATION} photos and judges on the other 1,000 (batch 32: the same --out rerun at "
             "`--batch-size 32`). Every peer runs "
             "its out-of-the-box path from the same SavedModel; all paths of a row ran in alternating rounds, each in "
             "a fresh process (warm-up, at least 10 calls and 2 s); each cell is the lower p50 of its rounds, in ms. "
             "Every path's accuracy is its own top-1 on the same 1,000 judged photos, its agreement its top-1 "
             f"agreement with the float model on them; a peer keeps the budget when it is at most {MAX_DROP:g} point "
             f"below the float model's accuracy (or, under the agreement budget, agrees on {MIN_AGREEMENT:.0%}). (a) "
             "is against `tf.function`, the best plain "
             "TensorFlow path here; (b) against the fastest peer default whatever it kept; (b') against the fastest "
             "peer default that kept the budget. Above 1.00x keras-turbo is faster.", ""]
    if mach:
        lines += [f"Machine: {machine_line(mach)}.", ""]
    lines += ["| model | budget | batch | keras-turbo's pick | its accuracy (float), agreement | p50 | (a) vs tf.function "
              "| (b) vs the fastest peer default | (b') vs the fastest peer default within budget | every peer (p50, "
              "accuracy, agreement) |",
              "| --- | --- | ---: | --- | ---: | ---: | ---: | --- | --- | --- |"]
    for key, m in raw.get("models", {}).items():
        for b in sorted(m.get("batches", {}), key=int):
            got, r = _cells(m, b), ratios(m, b)
            if not got or not r:
                continue
            rows, opt, rec = got
            a, p, w = r["vs_tf_function"], r["vs_peer_default"], r["vs_peer_within_budget"]
            every = "; ".join(
                f"{n.removeprefix('peer:')} {peers._ms(x['latency_ms']['p50'])} ({_pct(x.get('accuracy'))}, "
                f"{_pct(x.get('top1_agreement'))}"
                f"{'' if kept(x, m['float_accuracy'], m.get('budget', 'accuracy')) is not False else ', over budget'})" if x.get("ok")
                else f"{n.removeprefix('peer:')} failed: {(x.get('error') or '')[:80]}"
                for n, x in rows.items() if n != "keras-turbo")
            lines.append(
                f"| {m['title']} | {_budget(m)} | {b} | `{opt.get('recommended')}` | {_pct(rec.get('accuracy'))} "
                f"({_pct(m['float_accuracy'])}), {_pct(rec.get('top1_agreement'))} | "
                f"{peers._ms(rec['latency_ms']['p50'])} | {a['ratio']:.2f}x | "
                + (f"**{p['ratio']:.2f}x** ({p['against'].removeprefix('peer:')}, "
                   f"{'kept' if p['within_budget'] else 'over'} budget)" if p else "-") + " | "
                + (f"**{w['ratio']:.2f}x** ({w['against'].removeprefix('peer:')})" if w else "no peer default kept it")
                + f" | {every} |")
    lines += [""]
    for key, m in raw.get("models", {}).items():
        b1 = (raw.get("optimize_runs", {}).get(key) or {}).get("1") or {}
        s = b1.get("summary") or {}
        lines.append(f"- {m['title']}, {_budget(m)}: {m['params'] / 1e6:.2f} M parameters, {m['flops_per_sample'] / 1e9:.3g} GFLOPs "
                     f"per sample; float top-1 {_pct(m['float_accuracy'])} on the {m['judged']} judged photos."
                     + (f" `{b1['command']}` exited {b1['exit']} after {b1['wall_s']:.0f} s wall; recommended "
                        f"`{s.get('recommended')}`. " + peers._repair_text(s) if b1 else ""))
    lines += ["", _floor_table(raw), "", _repair_table(raw)]
    return "\n".join(lines)


def _repair_table(raw: dict) -> str:
    """Point 3: full int8 and the repair on each runtime, calibrated on the 300 photos, judged on the 1,000."""
    reps = raw.get("repairs") or {}
    if not reps:
        return ""
    lines = ["**int8 on networks trained in float, and its repair** (`benchmarks/trained.py --stage repair`: "
             f"`keras-turbo convert MODEL --to RUNTIME --quantize int8 --calibration-data train_unlabelled_300.npz "
             f"--eval-data judged_labelled_1000.npz --eval-size 1000 --max-accuracy-drop {MAX_DROP:g}`; accuracy on "
             "the 1,000 judged photos; the layers ranked by their output tensor's int8 error in one calibration pass, kept float in "
             "that order until the budget holds). \"after bias correction\": the same command with `--bias-correct` "
             "(`techniques/biascorrect.py` on the calibration photos first: int8 weight rounding's mean error taken out of "
             "each layer's bias; what optimize tries where int8 breaks the budget), judged against the model as given:", "",
             "| model | runtime | photos judged | float | full int8 | repaired | layers kept float (of the quantizable) "
             "| steps (float layers: accuracy) | seconds |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for key, per in reps.items():
        for to, r in per.items():
            if r.get("exit") != 0:
                lines.append(f"| {MODELS[key][1]} | {to} | failed: {' '.join(r.get('stderr_tail') or [])[:120]} | | | | | | |")
                continue
            kept = r["kept_float"] or []
            steps = ", ".join(f"{st['kept']}: {_pct(st['accuracy'])}" for st in r["steps"]) or "none (full int8 held)"
            lines.append(f"| {MODELS[key][1]} | {to} | {r.get('eval_samples', '?')} | {_pct(r['float_accuracy'])} | "
                         f"{_pct(r['full_int8'])} | "
                         f"{_pct(r['final'])}{'' if r['met'] else ' (budget not met)'} | "
                         f"{len(kept)} of {len(kept) + r['quantized']}" + (f": {', '.join(kept)}" if kept else "")
                         + (f" (+ {', '.join(r['carriers'])} between them)" if r.get("carriers") else "")
                         + f" | {steps} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def _budget(m: dict) -> str:
    return {"accuracy": f"-{MAX_DROP:g} pt", "agreement": f"{MIN_AGREEMENT:.0%} agreement"}[m.get("budget", "accuracy")]


def _floor_table(raw: dict) -> str:
    peaks = raw.get("peaks") or {}
    if not peaks:
        return ""
    lines = ["The machine's limit (peaks from `benchmarks/peers.py --stage peak`, the same CPU kind): "
             + ", ".join(f"{p} {v['gflops']:.0f} GFLOP/s" for p, v in peaks.items() if v.get("gflops"))
             + ". Floor = FLOPs per batch / the peak of the pick's arithmetic; share = floor / its p50.", "",
             "| model | budget | batch | keras-turbo's pick | its arithmetic | p50 ms | floor ms | share |",
             "| --- | --- | ---: | --- | --- | ---: | ---: | ---: |"]
    for key, m in raw.get("models", {}).items():
        for b in sorted(m.get("batches", {}), key=int):
            got = _cells(m, b)
            if not got:
                continue
            _, opt, rec = got
            prec = peers.arithmetic_of(opt.get("rec_precision"), opt.get("rec_backend"))
            if opt.get("rec_precision") == "int8":
                prec = "int8"
            peak = (peaks.get(prec) or {}).get("gflops")
            if not peak:
                continue
            floor = m["flops_per_sample"] * int(b) / (peak * 1e9) * 1e3
            p50 = rec["latency_ms"]["p50"]
            lines.append(f"| {m['title']} | {_budget(m)} | {b} | `{opt.get('recommended')}` | {prec}"
                         + (f" (mixed: some layers {'bf16' if 'bf16' in (opt.get('rec_backend') or '') else 'fp32'})"
                            if "mixed" in (opt.get("recommended") or "") else "")
                         + f" | {peers._ms(p50)} | {peers._ms(floor)} | {floor / p50:.0%} |")
    return "\n".join(lines)


def headline(raw: dict) -> str:
    """BENCHMARKS.md's headline: the trained-network rows, (a), (b) with its verdict, (b')."""
    mach = raw.get("machine") or {}
    lines = ["## Headline: on trained networks, against what a user would otherwise run", "",
             f"From the trained-network section below (`benchmarks/trained.py`; {cpu_kind(mach) if mach else '?'}): "
             f"`keras-turbo optimize MODEL --data photos.npz BUDGET --time-budget {TIME_BUDGET}` without train data "
             f"on ImageNet-trained MobileNets, judged on 1,000 photos, BUDGET {BUDGETS['accuracy'][1]} or "
             f"{BUDGETS['agreement'][1]}; every path timed in the same alternating "
             "rounds. The random-weight architectures further down (`benchmarks/peers.py`) are a stress test of the "
             "machinery, not evidence of quality.", "",
             "| model | budget | batch | keras-turbo's pick | accuracy (float) | (a) vs tf.function | (b) vs the fastest "
             "peer default | (b') vs the fastest peer default within budget |",
             "| --- | --- | ---: | --- | ---: | ---: | --- | --- |"]
    for key, m in raw.get("models", {}).items():
        for b in sorted(m.get("batches", {}), key=int):
            got, r = _cells(m, b), ratios(m, b)
            if not got or not r:
                continue
            _, opt, rec = got
            a, p, w = r["vs_tf_function"], r["vs_peer_default"], r["vs_peer_within_budget"]
            lines.append(f"| {m['title']} | {_budget(m)} | {b} | `{opt.get('recommended')}` {peers._ms(rec['latency_ms']['p50'])} ms | "
                         f"{_pct(rec.get('accuracy'))} ({_pct(m['float_accuracy'])}) | {a['ratio']:.2f}x | "
                         + (f"**{p['ratio']:.2f}x** ({p['against'].removeprefix('peer:')} {peers._ms(p['baseline'])} ms, "
                            f"{'kept' if p['within_budget'] else 'over'} budget)" if p else "-") + " | "
                         + (f"**{w['ratio']:.2f}x** ({w['against'].removeprefix('peer:')} {peers._ms(w['baseline'])} ms)"
                            if w else "no peer default kept the budget") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=tuple(MODELS), action="append")
    ap.add_argument("--stage", choices=("optimize", "time", "render", "repair", "techniques"), action="append",
                    help="default: optimize, time and render (repair and techniques, issue 29 points 3 and 4, only when named)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", choices=tuple(BUDGETS), action="append", help="default: both")
    ap.add_argument("--technique-time", default=TECH_TIME, help=f"the techniques stage's --time-budget (default {TECH_TIME})")
    args = ap.parse_args(argv)
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))
    from keras_turbo.machine import default_threads, facts
    from keras_turbo.timing import BenchmarkConfig

    stages = set(args.stage or ("optimize", "time", "render"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = json.loads(RAW.read_text()) if RAW.exists() else {}
    save = lambda: RAW.write_text(json.dumps(raw, indent=2, default=str))  # noqa: E731
    raw.setdefault("models", {})
    raw.setdefault("optimize_runs", {})
    threads, cfg = default_threads(), BenchmarkConfig(min_runs=10, min_seconds=2.0)
    todo = [(k, b) for b in (args.budget or BUDGETS) for k in (args.only or MODELS)]
    for key, budget in todo if stages & {"optimize", "time"} else ():
        log(f"{key}: preparing")
        prep = prepare(key)
        mk = key if budget == "accuracy" else f"{key}-{budget}"  # the entry of this model under this budget
        m = raw["models"].setdefault(mk, {})
        m.update({k: prep[k] for k in ("title", "flops_per_sample", "params", "photos", "judged", "float_accuracy")},
                 budget=budget)
        out, runs = OUT / f"optimize-{mk}", raw["optimize_runs"].setdefault(mk, {})
        for b in args.batch:
            cell = m.setdefault("batches", {}).setdefault(str(b), {})
            if "optimize" in stages:
                log(f"{mk}: optimize at batch {b}")
                run = optimize_b1(prep, out, budget) if b == 1 else optimize_rerun(prep, out, b, budget)
                run = peers.record_run(run, out, raw, runs, cell, b)
                save()
                log(f"{mk} b{b}: recommended {run['summary']['recommended']} in {run['wall_s']:.0f} s")
            if "time" in stages:
                opt = cell.get("optimize_summary") or {}
                if not opt.get("rec_artifact"):
                    log(f"{mk} b{b}: no recommendation to time")
                    continue
                kt = "kt:" + opt["rec_backend"]
                paths = {kt: opt["rec_artifact"], **peers.peer_artifacts(prep["model"])}
                # every path's accuracy on the judged photos: at batch 32 (fast), and keras-turbo's pick at each
                q = {n: prep["quality"] for n in paths if b == max(args.batch) or n == kt}
                rows = peers.alternating_rows(paths, b, threads, cfg, args.rounds, q, progress=log)
                rows["keras-turbo"] = rows.pop(kt)
                for bb, other in m["batches"].items():  # a peer's accuracy does not depend on the batch size
                    src, dst = (other.get("rows") or {}, rows) if b != max(args.batch) else (rows, other.get("rows") or {})
                    for n in peers.PEERS:
                        if bb != str(b) and n in src and n in dst:
                            for k in ("top1_agreement", "accuracy"):
                                dst[n][k] = src[n].get(k)
                cell["rows"] = rows
                raw.setdefault("machine", facts())
                save()
    for key in (args.only or MODELS) if "repair" in stages else ():
        for to in ("litert", "onnx", "openvino"):
            log(f"{key}: the int8 repair on {to}")
            r = repair(prepare(key), to, OUT / f"repair-{key}-{to}")
            raw.setdefault("repairs", {}).setdefault(key, {})[to] = r
            save()
            log(f"{key} {to}: exit {r['exit']}, met {r.get('met')}, float: {r.get('kept_float')}")
        for to in ("litert", "onnx"):   # NNCF corrects biases for OpenVINO itself
            log(f"{key}: the int8 repair on {to} after bias correction")
            r = repair(prepare(key), to, OUT / f"repair-{key}-{to}-biascorrect", ("--bias-correct",))
            raw["repairs"][key][f"{to} after bias correction"] = r
            save()
            log(f"{key} {to} after bias correction: exit {r['exit']}, met {r.get('met')}, float: {r.get('kept_float')}")
    for key in (args.only or MODELS) if "techniques" in stages else ():
        log(f"{key}: optimize with unlabelled train data, --max-accuracy-drop {TECH_DROP:g}")
        run = optimize_techniques(prepare(key), OUT / f"techniques-{key}", args.technique_time)
        raw.setdefault("techniques", {})[key] = run
        save()
        log(f"{key}: recommended {run['summary']['recommended']} in {run['wall_s']:.0f} s")
    # The floor needs the peaks of this CPU kind: peers.json's, where they were measured on one like it.
    src = json.loads(peers.RAW.read_text()) if peers.RAW.exists() else {}
    same = src.get("machine") and raw.get("machine") and cpu_kind(src["machine"]) == cpu_kind(raw["machine"])
    raw["peaks"] = src.get("peaks") if same else None
    save()
    write_section("trained", render(raw))
    write_section("headline", headline(raw))
    if raw.get("techniques"):
        write_section("trained-techniques", render_techniques(raw))
    log("wrote the trained and headline sections of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
