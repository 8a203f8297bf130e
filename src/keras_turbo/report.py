"""Tables a person can read at a glance (rich), for the terminal."""

from __future__ import annotations

import html
import json
import io
import re
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keras_turbo.bench import BenchmarkReport
from keras_turbo.optimize.select import median_round, quality_key
from keras_turbo.outdir import write_file_atomically
from keras_turbo.quality import (
    DEFAULT_MAX_METRIC_DROP,
    DEFAULT_MAX_OUTPUT_ERROR,
    Budget,
    output_verdict,
    user_metric_verdict,
)
from keras_turbo.ratios import headline as ratio_line
from keras_turbo.ratios import speedups


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}")


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def with_preprocessing(backend: str, preprocessing: str | None) -> str:
    """A runtime's name, and where a split text model's strings went when they went elsewhere."""
    return f"{backend} (strings on {preprocessing})" if preprocessing else backend


def benchmark_table(report: BenchmarkReport) -> Table:
    """One row per (runtime, batch size); speedup is against keras-predict at the same batch size."""
    t = Table(title=f"{report.model}  ({report.machine.get('cpu', '?')}, threads {report.results[0].threads if report.results else '?'})")
    for col in ("backend", "runs in", "batch", "p50 ms", "p90 ms", "p99 ms", "items/s", "vs predict", "init ms", "1st ms", "peak MB",
                "size"):
        t.add_column(col, justify="left" if col == "backend" else "right")
    for r in report.results:
        if r.skipped:
            t.add_row(r.backend, "", str(r.batch_size), f"[yellow]skipped: {escape(r.skipped)}[/yellow]", *[""] * 8)
            continue
        if not r.ok:
            t.add_row(r.backend, "", str(r.batch_size), f"[red]failed: {escape(str(r.error))}[/red]", *[""] * 8)
            continue
        base = report.get("keras-predict", r.batch_size)
        speed = f"{base.latency_ms['p50'] / r.latency_ms['p50']:.1f}x" if base and base.ok else "-"
        t.add_row(with_preprocessing(r.backend, r.preprocessing), runs_in(r.executed), str(r.batch_size), _ms(r.latency_ms["p50"]), _ms(r.latency_ms["p90"]), _ms(r.latency_ms["p99"]),
                  f"{r.throughput_per_s:,.0f}", speed, _ms(r.init_ms), _ms(r.first_inference_ms),
                  f"{r.peak_rss_mb:.0f}", _size(r.model_bytes))
    t.caption = (f"harness overhead {report.harness_overhead_ms * 1000:.1f} us per call; "
                 "each runtime and batch size measured in its own process")
    return t


def print_table(table, console: Console | None = None) -> None:
    (console or Console()).print(table)


# ------------------------------------------------------------------ optimize reports

def _fmt_acc(v) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _rows(doc: dict, why: bool = False) -> list[list[str]]:
    """One row per variant (fastest first, failures last); `why` adds the verdict: each output's
    metric and the budget it was held to."""
    base = doc.get("baseline") or {}
    base_p50 = base.get("latency_ms", {}).get("p50") if base.get("ok") else None
    tf = next((v for v in doc["variants"] if v["name"] == "tf-function fp32" and v.get("ok")), None)
    tf_p50 = tf["latency_ms"]["p50"] if tf else None
    rows = []
    ok = sorted((v for v in doc["variants"] if v.get("ok")), key=lambda v: v["latency_ms"]["p50"])
    for v in ok + [v for v in doc["variants"] if not v.get("ok")]:
        if not v.get("ok"):
            rows.append([v["name"], v.get("backend", "-"), "failed" if not v.get("skipped") else "stopped" if v.get("stopped") else "skipped",
                         "", "", "", "", "", "", "", v.get("error") or ""] + (["", ""] if why else []))
            continue
        p50 = v["latency_ms"]["p50"]
        mark = ("★ " if v["name"] == doc.get("recommended") else "") + ("pareto" if v.get("pareto") else "")
        drop = "-" if v.get("accuracy_drop") is None else f"{0.0 - v['accuracy_drop'] + 0.0:+.2f}"
        rows.append([v["name"], with_preprocessing(v["backend"], v.get("preprocessing")), _fmt_acc(v.get("accuracy")), drop, _fmt_acc(v.get("top1_agreement")),
                     f"{p50:.3f}", f"{tf_p50 / p50:.2f}x" if tf_p50 else "-", f"{base_p50 / p50:.1f}x" if base_p50 else "-",
                     f"{v['throughput_per_s']:,.0f}",
                     _size(v["model_bytes"]), ("within budget" if v.get("within_budget") else "over budget") + (f", {mark}" if mark else "")]
                    + ([runs_in(v.get("executed")), v.get("verdict") or ""] if why else []))
    return rows


def runs_in(executed: dict | None) -> str:
    """What a measured variant's compute ops ran in (Predictor.executed), "-" where not recorded
    (results.json files written before it was)."""
    return (executed or {}).get("summary") or "-"


SEARCH_HEADERS = ["technique", "setting", "trained on", "accuracy", "agreement", "verdict", "seconds"]


def trained_on(row: dict) -> str:
    """What a fine-tune saw: how many samples, for how many epochs, and what it learned from
    (the labels, or the float model's outputs where the train data has none); '' for no fine-tune."""
    rep = row.get("technique_report") or {}
    t = rep.get("finetune") or rep.get("training") or {}
    if not t.get("samples"):
        return ""
    loss = str(t.get("loss") or rep.get("loss") or "")
    taught = "distillation" in loss or "teacher" in loss or not t.get("labels")
    src = ("the float model's outputs" + (" and the labels" if t.get("labels") else " (no labels)")) if taught else "labels"
    if t.get("unlabeled_samples"):  # distillation's extra unlabelled inputs, for the teacher's outputs
        src += f", and the float model's outputs on {t['unlabeled_samples']:,} unlabelled more"
    e = t.get("epochs", "?")
    out = f"{t['samples']:,} samples x {e} epoch{'' if e == 1 else 's'}, from {src}"
    undone = [c for c in (t.get("start_check"), t.get("early_stopping")) if c and c.get("start_kept")]
    if undone:  # the fine-tune cost more than it recovered: the weights before it were kept
        out += f"; undone, the weights before it scored better on {undone[0]['val_samples']:,} validation samples"
    return out


def search_rows(doc: dict) -> list[list[str]]:
    """The strength search's probes, one row each, by technique and strength."""
    rows = []
    for r in sorted(doc.get("search") or [], key=lambda r: (r["name"], r.get("label") or "")):
        rows.append([", ".join(r.get("techniques") or []), r.get("label") or "", trained_on(r), _fmt_acc(r.get("accuracy")),
                     _fmt_acc(r.get("top1_agreement")), (r.get("verdict") or r.get("error") or "").replace("|", "/"),
                     f"{r.get('build_s') or 0:.0f}"])
    return rows


def finetune_rows(doc: dict) -> list[list[str]]:
    """Each variant that was fine-tuned, and what its fine-tune saw (the report's "Fine-tunes")."""
    return [[v["name"], trained_on(v)] for v in doc["variants"] if trained_on(v)]


HEADERS = ["variant", "runtime", "accuracy", "vs float (pts)", "agreement", "p50 ms", "vs tf.function", "vs keras-predict",
           "items/s", "size", "status"]
#: the report files' extra columns: what the compute ops ran in on the timing machine, the verdict
FULL_HEADERS = ["runs in", "judged by"]


#: optimize's own plain variants that are each peer's out-of-the-box path (the LiteRT converter's
#: default with XNNPACK, an ONNX Runtime default session, OpenVINO at its CPU default precision:
#: bf16 where the CPU has it, so `openvino-bf16` when it was planned, else `openvino`)
PEER_DEFAULTS = {"litert fp32": "peer:litert", "onnxruntime fp32": "peer:onnxruntime",
                 "openvino-bf16 bf16": "peer:openvino", "openvino fp32": "peer:openvino"}


def baselines(doc: dict) -> list[dict]:
    """The run's plain TensorFlow paths and peer defaults as `ratios.speedups` reads them."""
    rows = {v["name"]: v for v in doc["variants"] if v.get("ok")}
    batch = doc["budget"]["batch_size"]
    out = [{**rows[n], "backend": rows[n]["backend"], "batch_size": batch}
           for n in ("tf-function fp32", "tf-xla fp32", "keras-predict fp32") if n in rows]
    ov = "openvino-bf16 bf16" if "openvino-bf16 bf16" in rows else "openvino fp32"
    out += [{**rows[n], "backend": PEER_DEFAULTS[n], "batch_size": batch}
            for n in ("litert fp32", "onnxruntime fp32", ov) if n in rows]
    return out


def headline(doc: dict) -> dict:
    """Recommended vs what a user would otherwise run: (a) the best plain TensorFlow path, (b') the
    fastest peer default that kept the budget and (b) the fastest whatever it kept, measured in the
    same run, (c) keras-predict; size ratio, accuracy."""
    base = doc.get("baseline") or {}
    best = next((v for v in doc["variants"] if v["name"] == doc.get("recommended")), None)
    if not best or not base.get("ok"):
        return {}
    measure = "throughput" if doc["budget"].get("objective") == "throughput" else "latency"
    r = speedups({**best, "batch_size": doc["budget"]["batch_size"]}, baselines(doc), measure)
    return {"baseline": base["name"], "recommended": best["name"],
            "speedup": base["latency_ms"]["p50"] / best["latency_ms"]["p50"], "ratios": r,
            "size_ratio": base["model_bytes"] / best["model_bytes"],
            "baseline_accuracy": doc.get("float_accuracy"), "accuracy": best.get("accuracy"),
            "agreement": best.get("top1_agreement"), "budget_met": doc.get("budget_met"), "runs_in": runs_in(best.get("executed"))}


def ratio_text(h: dict) -> str:
    """The headline's ratios (ratios.headline): (a) tf.function, (b') the fastest peer default that
    kept the budget, (b) the fastest whatever it kept (saying whether), (c) keras-predict."""
    return ratio_line(h.get("ratios") or {}, digits=3)


def runoff_text(doc: dict) -> str:
    """One sentence on the run-off, or "" where there was none: which candidates, how many
    rounds, and each one's first timing against its rounds' median."""
    ro = doc.get("runoff")
    if not ro:
        return ""
    names = ", ".join(f"`{n}`" for n in ro["candidates"])
    margin = f"{100 * ro['margin']:.0f}%"
    if not ro.get("rounds"):
        return f"Run-off: {names} were within {margin} of the fastest, not timed again: {ro.get('stopped')}."

    unit, fmt = ("items/s", "{:.1f}") if ro["objective"] == "throughput" else ("ms", "{:.4g}")
    figures = "; ".join(f"`{n}` {fmt.format(f['first'])} then {'/'.join(fmt.format(x) for x in f['rounds'])}, "
                        f"median {fmt.format(median_round(f['rounds'], ro['objective']))} {unit}"
                        for n, f in (ro.get("figures") or {}).items())
    stopped = f" ({ro['stopped']})" if ro.get("stopped") else ""
    reused = " (measured by an earlier run into this folder)" if ro.get("reused") else ""
    return (f"Run-off: {names} were within {margin} of the fastest on their first timing, so they were timed again in "
            f"{ro['rounds']} alternating rounds{stopped} and are ranked by their median round{reused}: {figures}.")


def _budget_text(doc: dict) -> str:
    b = doc["budget"]
    lim = (f"at most {b['max_accuracy_drop']} points below float accuracy" if b.get("max_accuracy_drop") is not None
           else f"top-1 agreement with float at least {b['min_agreement'] * 100:.1f}%")
    kinds = {o["kind"] for o in doc.get("outputs") or []}
    if kinds - {"multiclass", "binary", "multilabel", "segmentation"}:
        lim += f"; output error at most {b.get('max_output_error') or DEFAULT_MAX_OUTPUT_ERROR}" + \
               ("" if b.get("max_output_error") else " (default)")
    if b.get("max_metric_drop") is not None:
        lim += f"; labelled metrics (RMSE, mean IoU, F1{', the user metric' if (doc.get('config') or {}).get('metric') else ''}) " \
               f"at most {b['max_metric_drop']}% worse than float"
    elif (doc.get("config") or {}).get("metric"):
        lim += f"; the user metric at most {DEFAULT_MAX_METRIC_DROP}% below float (default)"
    return f"{lim}{_judged_on(b)}; objective {b['objective']}; batch {b['batch_size']}; {b['threads']} threads"


def _judged_on(b: dict) -> str:
    """How many held-out samples the budget was judged on, and the cap (--eval-size) when it cut
    them (results.json files from before it was recorded say nothing)."""
    used, available, cap = b.get("eval_samples"), b.get("eval_available"), b.get("eval_size")
    if not used:
        return ""
    if available and available > used:
        return f"; judged on {used:,} of the {available:,} held-out samples (a seeded sample; --eval-size {cap})"
    return f"; judged on {used:,} held-out samples"


def output_metrics_text(o: dict) -> str:
    """One output's metrics in a line: against the labels (accuracy, F1, mean IoU, RMSE / MAE)
    and against the float model (agreement, relative error, 1 - cosine)."""
    parts = []
    pct = lambda v: f"{v * 100:.2f}%"  # noqa: E731
    num = lambda v: f"{v:.4g}"  # noqa: E731
    for key, label, fmt in (("accuracy", "exact-set accuracy" if o["kind"] == "multilabel" else "accuracy", pct),
                            ("top5_accuracy", "top-5", pct), ("f1", "F1", num), ("pixel_accuracy", "pixel accuracy", pct),
                            ("miou", "mean IoU", num), ("rmse", "RMSE", num), ("mae", "MAE", num)):
        if o.get(key) is not None:
            ref = o.get("reference_" + key)
            parts.append(f"{label} {fmt(o[key])}" + (f" (float {fmt(ref)})" if ref is not None else ""))
    if "agreement" in o:
        parts.append(f"agreement {o['agreement'] * 100:.2f}%")
    elif o.get("error") is not None:
        parts.append(f"1 - cosine {o['error']:.4g}" if o["kind"] == "embedding" else f"relative error {o['error']:.4g}")
    return ", ".join(parts) or "-"


OUTPUT_HEADERS = ["output", "kind", "samples", "metrics", "held to"]


def output_rows(doc: dict) -> list[list[str]]:
    """The recommended variant's outputs, one row each: kind, samples, metrics, and the budget
    it was held to (its part of the verdict); the user metric last."""
    best = next((v for v in doc["variants"] if v["name"] == doc.get("recommended")), None)
    if not best or not best.get("outputs"):
        return []
    budget = Budget.from_dict(doc["budget"])
    rows = [[o["name"], o["kind"], str(o.get("samples", "")), output_metrics_text(o), output_verdict(o, budget)[1]]
            for o in best["outputs"]]
    if best.get("user_metric"):
        m = best["user_metric"]
        rows.append(["(metric)", m["name"], str(best["outputs"][0].get("samples", "")),
                     f"score {m['score']:.6g} (float {m['reference_score']:.6g})", user_metric_verdict(m, budget)[1]])
    return rows


def deploy_parts(doc: dict) -> dict | None:
    """What the report says of best/ without keras-turbo (runtimes/deploy.py): {"text", and where
    a predict.py was written "settings" (JSON) and "script"}; None when nothing was recommended."""
    d = doc.get("deploy")
    if not d:
        return None
    if d.get("variant") != doc.get("recommended"):
        return {"text": f"best/ holds `{d.get('variant')}`, recommended when the run finished (rejudged since: "
                        f"rerun optimize to refresh best/)."}
    if d.get("error"):
        return {"text": f"No predict.py for `{d['variant']}`: {d['error']}. `keras_turbo.load(\"best\")` serves it."}
    return {"text": f"best/ runs without keras-turbo: `{d['artifact']}` on {d['runtime']} (`{d['backend']}`), "
                    f"`pip install {' '.join(d['requirements'])}`; best/predict.py (and best/README.md) serve it in "
                    f"{d['runtime']}'s own API with the settings it was timed with at batch {d['batch_size']}:",
            "settings": json.dumps(d["settings"], default=str), "script": d["script"].rstrip()}


def write_markdown(out, doc: dict) -> str:
    h = headline(doc)
    lines = [f"# keras-turbo optimize: {doc['model']}", "", f"Budget: {_budget_text(doc)}.", ""]
    if h:
        verdict = "" if h["budget_met"] else " **No candidate met the budget; the fastest float runtime is recommended.**"
        lines += [f"**Recommended: `{h['recommended']}`** (runs in {h['runs_in']} here): {ratio_text(h)} at batch "
                  f"{doc['budget']['batch_size']}; {h['size_ratio']:.1f}x smaller, accuracy {_fmt_acc(h['accuracy'])} "
                  f"(float {_fmt_acc(h['baseline_accuracy'])}), agreement {_fmt_acc(h['agreement'])}.{verdict}", ""]
    if runoff_text(doc):
        lines += [runoff_text(doc), ""]
    dep = deploy_parts(doc)
    if dep:
        lines += ["## Deploy without keras-turbo", "", dep["text"], ""]
        if "script" in dep:
            lines += [f"Settings: `{dep['settings']}`", "", "```python", dep["script"], "```", ""]
    outs = output_rows(doc)
    if outs:
        lines += [f"Each output of `{doc['recommended']}`, and the budget it was held to:", "",
                  "| " + " | ".join(OUTPUT_HEADERS) + " |", "|" + "---|" * len(OUTPUT_HEADERS)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in outs] + [""]
    lines += ["| " + " | ".join(HEADERS + FULL_HEADERS) + " |", "|" + "---|" * (len(HEADERS) + len(FULL_HEADERS))]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in _rows(doc, why=True)]
    tuned = finetune_rows(doc)
    if tuned:
        lines += ["", "Fine-tunes (what each trained variant learned from):", "", "| variant | trained on |", "|---|---|"]
        lines += [f"| {n} | {t} |" for n, t in tuned]
    if doc.get("search"):
        lines += ["", "Technique strength search (short fine-tunes judged on a validation split of the train data, or of "
                  "the held-out data where the train data has no labels):", "",
                  "| " + " | ".join(SEARCH_HEADERS) + " |", "|" + "---|" * len(SEARCH_HEADERS)]
        lines += ["| " + " | ".join(r) + " |" for r in search_rows(doc)]
    notes = (doc.get("plan") or {}).get("notes") or []
    if notes:
        lines += ["", "Plan: " + "; ".join(notes) + "."]
    left = (doc.get("plan") or {}).get("left_out") or []
    if left:
        lines += ["", "Left out of the plan: " + "; ".join(f"`{x['name']}`: {x['reason']}" for x in left) + "."]
    if doc.get("resume_note"):
        lines += ["", f"Note: {doc['resume_note']}."]
    m = doc["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['usable_cores']} cores, flags: "
              + ", ".join(k for k, v in m["cpu_flags"].items() if v) + f"; GPUs: {', '.join(m['gpus']) or 'none'}."]
    text = "\n".join(lines) + "\n"
    write_file_atomically(out / "report.md", lambda tmp: tmp.write_text(text))
    return text


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]

    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)


def pareto_svg(doc: dict) -> str:
    """Latency vs accuracy (or agreement) for every measured variant; the front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [v for v in doc["variants"] if v.get("ok")]
    # The plot shows what the budget judges by (and what the front was computed on).
    use_acc = doc.get("float_accuracy") is not None and doc["budget"].get("min_agreement") is None
    by_agreement = not use_acc and all(v.get("top1_agreement") is not None for v in ok)
    # a first output that is not a classifier: its relative error to float, shown as -error x 100
    q = lambda v: (v["accuracy"] if use_acc else v["top1_agreement"]) * 100 if use_acc or by_agreement \
        else quality_key(v, True) * 100  # noqa: E731
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for v in ok:
        color = "#d62728" if v["name"] == doc.get("recommended") else ("#1f77b4" if v.get("within_budget") else "#999999")
        ax.scatter(v["latency_ms"]["p50"], q(v), s=60 if v.get("pareto") else 30, color=color, zorder=3)
        if v.get("pareto") or not v.get("within_budget") or v["name"] in (doc.get("recommended"), "keras-predict fp32"):
            ax.annotate(v["name"], (v["latency_ms"]["p50"], q(v)), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((v for v in ok if v.get("pareto")), key=lambda v: v["latency_ms"]["p50"])
    if len(front) > 1:
        ax.plot([v["latency_ms"]["p50"] for v in front], [q(v) for v in front], color="#1f77b4", lw=1, zorder=2)
    if use_acc and doc["budget"].get("max_accuracy_drop") is not None:
        ax.axhline(doc["float_accuracy"] * 100 - doc["budget"]["max_accuracy_drop"], color="#d62728", ls="--", lw=1,
                   label="accuracy budget")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at batch {doc['budget']['batch_size']} (ms, log scale)")
    what = "accuracy" if use_acc else "agreement" if by_agreement else "output error"
    ax.set_ylabel("accuracy (%)" if use_acc else "top-1 agreement with float (%)" if by_agreement
                  else "- relative error of the first output vs float (%)")
    ax.set_title(f"Every variant: latency vs {what} (red: recommended, grey: over budget)")
    ax.grid(alpha=0.3)
    return _svg(fig)


def sensitivity_svg(sens: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sens["layer_sensitivity"]
    float_ones = set(sens.get("kept_float", [])) | set(sens.get("carriers", []))
    if sens.get("ranking", "per-layer") == "tensors":  # one calibration pass: each output's own int8 error
        layers = layers[:20]
        vals = [r["tensor_error"] for r in layers]
        xlabel = "int8 error of this layer's output alone, averaged over channels (red: kept in float)"
    else:
        vals = [(r["accuracy_drop"] if r["accuracy_drop"] is not None else (1 - r["top1_agreement"]) * 100) for r in layers]
        xlabel = "points lost when only this layer is int8 (red: kept in float)"
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.3 * len(layers) + 1)))
    colors = ["#d62728" if r["layer"] in float_ones else "#1f77b4" for r in layers]
    ax.barh([r["layer"] for r in layers][::-1], vals[::-1], color=colors[::-1])
    ax.set_xlabel(xlabel)
    ax.set_title(f"Per-layer int8 sensitivity ({sens.get('runtime', '')})")
    return _svg(fig)


def write_html(out, doc: dict) -> str:
    """report.html: self-contained (inline SVG and CSS, no scripts or links to fetch)."""
    h = headline(doc)
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>keras-turbo report</title><style>",
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}"
             ".head{font-size:1.2em;background:#f3f7fb;padding:1em;border-radius:6px}.bad{color:#b00}",
             "</style></head><body>", f"<h1>keras-turbo optimize</h1><p>{esc(doc['model'])}</p>",
             f"<p>Budget: {esc(_budget_text(doc))}.</p>"]
    if h:
        parts.append(f"<div class='head' id='headline'><b>Recommended: {esc(h['recommended'])}</b> (runs in {esc(h['runs_in'])} here)<br>"
                     f"{esc(ratio_text(h))}; {h['size_ratio']:.1f}x smaller, accuracy "
                     f"{_fmt_acc(h['accuracy'])} (float {_fmt_acc(h['baseline_accuracy'])}), agreement {_fmt_acc(h['agreement'])}"
                     + ("" if h["budget_met"] else "<br><span class='bad'>No candidate met the budget: the fastest float "
                        "runtime is recommended.</span>") + "</div>")
    if runoff_text(doc):
        parts.append(f"<p id='runoff'>{esc(runoff_text(doc).replace('`', ''))}</p>")
    dep = deploy_parts(doc)
    if dep:
        parts.append(f"<h2>Deploy without keras-turbo</h2><p id='deploy'>{esc(dep['text'].replace('`', ''))}</p>"
                     + (f"<p>Settings: <code>{esc(dep['settings'])}</code></p><pre id='deploy-script'>{esc(dep['script'])}</pre>"
                        if "script" in dep else ""))
    outs = output_rows(doc)
    if outs:
        parts.append(f"<h2>Each output of {esc(doc['recommended'])}</h2><table id='outputs'><tr>"
                     + "".join(f"<th>{esc(c)}</th>" for c in OUTPUT_HEADERS) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in outs) + "</table>")
    parts.append("<h2>Latency vs accuracy</h2><div id='pareto-plot'>" + pareto_svg(doc) + "</div>")
    parts.append("<h2>All variants</h2><table id='variants'><tr>" + "".join(f"<th>{esc(c)}</th>" for c in HEADERS + FULL_HEADERS) + "</tr>")
    for r in _rows(doc, why=True):
        parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    parts.append("</table>")
    if doc.get("sensitivity"):
        parts.append("<h2>Per-layer quantization sensitivity</h2><div id='sensitivity-plot'>"
                     + sensitivity_svg(doc["sensitivity"]) + "</div>")
    tuned = finetune_rows(doc)
    if tuned:
        parts.append("<h2>Fine-tunes</h2><table id='finetunes'><tr><th>variant</th><th>trained on</th></tr>"
                     + "".join(f"<tr><td>{esc(n)}</td><td>{esc(t)}</td></tr>" for n, t in tuned) + "</table>")
    if doc.get("search"):
        parts.append("<h2>Technique strength search</h2><p>Short fine-tunes judged on a validation split (of the train data, or of the held-out data where the train data has no labels) "
                     "data; the strongest setting within the budget is then fine-tuned in full.</p><table id='search'><tr>"
                     + "".join(f"<th>{esc(c)}</th>" for c in SEARCH_HEADERS) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in search_rows(doc))
                     + "</table>")
    left = (doc.get("plan") or {}).get("left_out") or []
    if left:
        parts.append("<h2>Left out of the plan</h2><ul id='left-out'>"
                     + "".join(f"<li><b>{esc(x['name'])}</b>: {esc(x['reason'])}</li>" for x in left) + "</ul>")
    m = doc["machine"]
    parts.append("<h2>Machine</h2><table id='machine'>" + "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in [
            ("CPU", m["cpu"]), ("cores", m["usable_cores"]), ("flags", ", ".join(k for k, v in m["cpu_flags"].items() if v)),
            ("GPUs", ", ".join(m["gpus"]) or "none"), ("memory GB", m["memory_gb"]),
            ("libraries", ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v))]) + "</table>")
    parts.append("</body></html>")
    text = "\n".join(parts)
    write_file_atomically(out / "report.html", lambda tmp: tmp.write_text(text))
    return text


def write_reports(out, doc: dict) -> None:
    """report.md and report.html from a results.json document."""
    out = Path(out)
    write_markdown(out, doc)
    write_html(out, doc)


# ------------------------------------------------------------------ the terminal, at a glance

#: at most this many variants in the terminal summary (`--all`: every one; the reports: every one)
GLANCE = 8


def quality_text(v: dict) -> str:
    """A row's quality in a few characters: accuracy and its change in points where the data has
    labels, else top-1 agreement with float, else the worst output's error against float."""
    if v.get("accuracy") is not None:
        drop = v.get("accuracy_drop")
        return f"{v['accuracy'] * 100:.2f}%" + ("" if drop is None else f" ({0.0 - drop + 0.0:+.2f})")
    if v.get("top1_agreement") is not None:
        return f"agrees {v['top1_agreement'] * 100:.2f}%"
    errors = [o["error"] for o in v.get("outputs") or [] if o.get("error") is not None]
    return f"error {max(errors):.3g}" if errors else "-"


def glance_rows(doc: dict) -> list[tuple[dict, str]]:
    """The variants within budget that matter, fastest first, each with why it is shown: the
    recommendation, the fastest, the smallest, the Pareto front (latency vs quality); at most GLANCE."""
    key = (lambda v: -(v.get("throughput_per_s") or 0)) if doc["budget"].get("objective") == "throughput" else \
        (lambda v: v["latency_ms"]["p50"])
    within = sorted((v for v in doc["variants"] if v.get("ok") and v.get("within_budget") and v.get("role") != "probe"),
                    key=key)
    if not within:
        return []
    why: dict[str, list[str]] = {}
    smallest = min(within, key=lambda v: v.get("model_bytes") or 0)
    for v in within:
        tags = (["★"] if v["name"] == doc.get("recommended") else []) + \
               (["fastest"] if v is within[0] else []) + (["smallest"] if v is smallest else []) + \
               (["pareto"] if v.get("pareto") else [])
        if tags:
            why[v["name"]] = tags
    picked = [v for v in within if v["name"] in why]
    must = [v for v in picked if set(why[v["name"]]) - {"pareto"}]
    rest = [v for v in picked if v not in must][:max(0, GLANCE - len(must))]
    return [(v, ", ".join(why[v["name"]]).replace("★, ", "★ ")) for v in within if v in must or v in rest]


def glance_counts(doc: dict, shown: int) -> str:
    """"43 candidates: 12 within budget (6 shown; --all for every row), 28 over budget, 3 failed";
    and the runtimes left out for lack of an extra, with the pip line that brings each."""
    vs = [v for v in doc["variants"] if v.get("role") != "probe"]
    ok = [v for v in vs if v.get("ok")]
    within = sum(1 for v in ok if v.get("within_budget"))
    skipped = sum(1 for v in vs if not v.get("ok") and v.get("skipped"))
    failed = sum(1 for v in vs if not v.get("ok") and not v.get("skipped"))
    parts = [f"{within} within budget ({shown} shown{'; --all for every row' if len(vs) > shown else ''})",
             f"{len(ok) - within} over budget"] + ([f"{failed} failed"] if failed else []) + \
            ([f"{skipped} skipped"] if skipped else [])
    line = f"{len(vs)} candidates: " + ", ".join(parts) + " (the report lists every one, and why)"
    absent = [f"{x['name']} ({x['reason'].split(';')[0]})" for x in (doc.get("plan") or {}).get("left_out") or []
              if "not installed" in x["reason"]]
    return line + ("\nnot installed: " + "; ".join(absent) if absent else "")


def glance_table(doc: dict) -> Table:
    """The terminal's summary table: `glance_rows`, names whole (the column never wraps)."""
    rows = glance_rows(doc)
    tf = next((v for v in doc["variants"] if v["name"] == "tf-function fp32" and v.get("ok")), None)
    t = Table(box=box.SIMPLE_HEAD, title=f"optimize: {doc['model']}", title_justify="left", pad_edge=False,
              caption="★ recommended; vs tf.fn: speed-up against tf.function", caption_justify="left")
    # Names wrap between words where the terminal is narrow, never cut: the column is at least as
    # wide as the longest word in them. The figures never wrap.
    longest = max([len(w) for v, _ in rows for w in v["name"].split()] + [7])
    t.add_column("variant", min_width=longest, overflow="fold")
    for c in ("quality", "p50 ms", "vs tf.fn", "size"):
        t.add_column(c, justify="right", no_wrap=True)
    t.add_column("why shown", min_width=9, overflow="fold")
    for v, why in rows:
        p50 = v["latency_ms"]["p50"]
        t.add_row(escape(v["name"]), quality_text(v), f"{p50:.3f}",
                  f"{tf['latency_ms']['p50'] / p50:.1f}x" if tf else "-", _size(v.get("model_bytes")), why)
    return t


def progress_line(v: dict, done: int, total: int) -> str:
    """One plain line per finished candidate, for a log (stdout not a terminal)."""
    head = f"[{done}/{total}] {v['name']}: "
    if not v.get("ok"):
        return head + ("skipped" if v.get("skipped") else "failed") + f": {v.get('error') or ''}".rstrip(": ")
    if v.get("role") == "probe":
        return head + f"{quality_text(v)}, {'holds' if v.get('within_budget') else 'breaks'} the budget (probe)"
    return head + (f"{v['latency_ms']['p50']:.3f} ms, {quality_text(v)}, "
                   f"{'within budget' if v.get('within_budget') else 'over budget'}")


def summary_table(doc: dict) -> Table:
    t = Table(title=f"optimize: {doc['model']}")
    for c in HEADERS:
        t.add_column(c, justify="left" if c in ("variant", "runtime", "status") else "right")
    for r in _rows(doc):
        t.add_row(*map(escape, r))  # an error's text may hold [brackets] rich would read as markup
    return t
