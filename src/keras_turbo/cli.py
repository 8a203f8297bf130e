"""The command line: a thin shell that parses arguments and calls the Python API.

Errors the user can fix print one line and exit with code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import signal
import sys

# Which signal stopped the run (its exit code is 128 + it); set by the handlers below.
_stopped_by: list[int] = []


def _note_signal(signum, frame):
    """Until `main` runs, a Ctrl-C or SIGTERM is only noted, and `main` stops on it at once: an
    exception here would unwind through the imports below and print a traceback."""
    _stopped_by.append(signum)


# Run as a program (`python -m keras_turbo.cli`, or the `keras-turbo` script): meet a signal
# from this line on.
if __name__ == "__main__" or sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] in ("keras-turbo", "keras-turbo.exe"):
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, _note_signal)

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

from keras_turbo.errors import KerasTurboError  # noqa: E402

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        print(f"keras-turbo: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _positive_int(name, least: int = 1):
    def parse(v):
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= {least}, received {v!r}") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= {least}, received {v!r}")
        return n
    return parse


def _factor(v):
    """--factor: a number > 1, kept an int where it is whole (2, not 2.0: pooling, and its name)."""
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--factor must be a number > 1, received {v!r}") from None
    if not 1.0 < f <= 64:
        raise argparse.ArgumentTypeError(f"--factor must be a number > 1 (and at most 64), received {v!r}")
    return int(f) if f.is_integer() else f


def _write_json(path: str | None, obj) -> None:
    if path:
        from keras_turbo.outdir import write_file_atomically

        text = json.dumps(obj, indent=2, default=str)
        write_file_atomically(path, lambda tmp: tmp.write_text(text))


def _check_outputs(args, *inputs, files=("json",)) -> None:
    """Every output file the command will write, checked before any work starts: not an input,
    not an existing file without --force, not a folder, in a writable place."""
    from keras_turbo.outdir import check_output_file

    paths = {name: getattr(args, name, None) for name in files}
    given = [p for p in paths.values() if p]
    if len(given) != len({str(Path(p).absolute()) for p in given}):
        raise KerasTurboError(f"{', '.join(given)}: two outputs name the same file")
    for name, path in paths.items():
        flag = "-o" if name == "output" else f"--{name}"
        check_output_file(path, inputs, getattr(args, "force", False), flag)


def _console():
    from rich.console import Console

    out = Console()
    if not out.is_terminal:  # piped or in CI: do not squeeze the tables into 80 columns
        out = Console(width=160)
    return out, Console(stderr=True)


# ------------------------------------------------------------------------- commands

def cmd_inspect(args) -> int:
    import keras_turbo

    _check_outputs(args, args.model)
    info = keras_turbo.inspect(args.model, unsafe=args.unsafe)
    _write_json(args.json, info)
    out, _ = _console()
    from rich.table import Table

    out.print(f"[bold]{info['path']}[/bold]  ({info['format']}, {info['size_bytes']:,} bytes on disk)")
    t = Table("", "name", "shape", "dtype", box=None)
    for kind in ("inputs", "outputs"):
        for x in info[kind]:
            t.add_row(kind[:-1], x["name"], str(tuple(x["shape"])).replace("None", "batch", 1), x["dtype"])
    out.print(t)
    params = info.get("params")
    out.print(f"parameters: {params:,}" if params is not None else "parameters: -")
    flops = info.get("flops_per_sample")
    out.print(f"FLOPs per sample: {flops:,} ({flops / 1e6:.2f} MFLOPs)" if flops is not None else "FLOPs per sample: -")
    out.print(f"  counted as {info['flops_method']}")
    if "layer_types" in info:
        out.print("layer types: " + ", ".join(f"{k} {v}" for k, v in info["layer_types"].items()))
        for k, why in info["notable"].items():
            out.print(f"  {k}: {why}")
        if info["custom_layers"]:
            out.print(f"  custom layers (left alone by the techniques): {', '.join(info['custom_layers'])}")
    else:
        out.print("ops: " + ", ".join(f"{k} {v}" for k, v in info["op_types"].items()))
    return 0


def _given(args, *names: str, **renamed: str) -> dict:
    """The flags of `names` the user gave (argparse's None: not given), by their config field
    names (`renamed`: field=flag): everything else keeps the config's own default."""
    given = vars(args)
    pairs = [(n, n) for n in names] + list(renamed.items())
    return {field: given[flag] for field, flag in pairs if given.get(flag) is not None}


def _bench_config(args):
    from keras_turbo.timing import BenchmarkConfig
    from keras_turbo.bench import parse_named_shape

    named = [parse_named_shape(t) for t in getattr(args, "input_shape", None) or []]
    names, shapes = [n for n, _ in named], [s for _, s in named]
    if any(names) and not all(names):
        raise KerasTurboError("--input-shape: name every input (NAME=SHAPE) or none (shapes in input-name order)")
    if len({s[0] for s in shapes}) > 1:
        raise KerasTurboError(f"--input-shape: every input's leading size is the batch, and they differ "
                              f"({', '.join('x'.join(map(str, s)) for s in shapes)})")
    if shapes and not args.batch_size:
        args.batch_size = [shapes[0][0]]  # --input-shape's leading size is the batch
    return BenchmarkConfig(**_given(args, "warmup_runs", "warmup_seconds", "min_runs", "min_seconds", "device",
                                    timeout_s="timeout"),
                           input_shapes=tuple(x[1:] for x in shapes), input_names=tuple(names) if any(names) else ())


def _run_benchmark(model, backends, batch_sizes, threads, cfg, unsafe=False, data=None):
    import keras_turbo
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    _, err = _console()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("benchmark", total=1)

        def progress(what, done, total):
            bar.update(task, description=f"measuring {what}", completed=done, total=total)

        return keras_turbo.benchmark(model, backends=backends, batch_sizes=batch_sizes, threads=threads,
                                     config=cfg, unsafe=unsafe, progress=progress, data=data)


def cmd_benchmark(args) -> int:
    from keras_turbo.report import benchmark_table

    _check_outputs(args, args.model, args.data)
    cfg = _bench_config(args)
    report = _run_benchmark(args.model, args.backend, args.batch_size or [1], args.threads, cfg, args.unsafe, args.data)
    out, _ = _console()
    out.print(benchmark_table(report))
    if args.json:
        report.write_json(args.json)
        out.print(f"results written to {args.json}")
    failed = [r for r in report.results if not r.ok]
    if len(failed) == len(report.results):
        why = "was skipped or failed" if any(r.skipped for r in failed) else "failed"
        print(f"keras-turbo: error: nothing was measured: every runtime {why} (reasons in the table)", file=sys.stderr)
        return 1
    return 0


def _budget(args):
    """The budget flags a command took, as a quality.Budget (which validates them)."""
    from keras_turbo.quality import Budget

    given = vars(args)
    return Budget(**{k: given.get(k) for k in ("max_accuracy_drop", "min_agreement", "max_output_error", "max_metric_drop")})


def cmd_evaluate(args) -> int:
    import keras_turbo

    _check_outputs(args, args.model, args.data, args.reference)
    budget = _budget(args)
    if budget == type(budget)():
        budget = None
    elif args.reference is None:
        raise KerasTurboError("--min-agreement / --max-accuracy-drop / --max-output-error / --max-metric-drop judge "
                              "MODEL against --reference MODEL: give one")
    res = keras_turbo.evaluate(args.model, args.data, reference=args.reference, backend=args.backend,
                               reference_backend=args.reference_backend, unsafe=args.unsafe,
                               output_kinds=_output_kinds(args.output_kind), budget=budget, metric=args.metric,
                               **_given(args, "batch_size"))
    _write_json(args.json, res)
    out, _ = _console()
    out.print(f"{args.model} on {res['backend']}: {res['samples']} samples from {args.data}")
    if res["accuracy"] is not None:
        out.print(f"  accuracy        {res['accuracy'] * 100:.2f}%")
    else:
        out.print("  accuracy        - (the data has no labels)")
    if res["top1_agreement"] is not None:
        out.print(f"  top-1 agreement {res['top1_agreement'] * 100:.2f}% with {args.reference} on {res['reference_backend']}")
        out.print(f"  max |diff|      {res['max_abs_diff']:.3g}")
        out.print(f"  mean |diff|     {res['mean_abs_diff']:.3g}")
    for o in res.get("outputs") or []:
        from keras_turbo.report import output_metrics_text

        out.print(f"  {o['name']} ({o['kind']}): {output_metrics_text(o)}")
    if res.get("user_metric"):
        m = res["user_metric"]
        vs = f" (reference {m['reference_score']:.6g}, drop {m['drop']:.2f}%)" if "reference_score" in m else ""
        out.print(f"  metric {m['name']}: {m['score']:.6g}{vs}")
    if "within_budget" in res:
        out.print(f"  {'within budget' if res['within_budget'] else 'OVER BUDGET'}: {res['verdict']}")
        return 0 if res["within_budget"] else 1
    return 0


def cmd_devices(args) -> int:
    import keras_turbo

    _check_outputs(args)
    info = keras_turbo.devices()
    _write_json(args.json, info)
    out, _ = _console()
    out.print(f"CPU: {info['cpu']} ({info['logical_cores']} logical cores, {info['usable_cores']} usable, {info['memory_gb']} GB)")
    out.print("  features: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["cpu_flags"].items()))
    fast = info.get("accelerated_precisions", {})
    out.print("  accelerates: fp32" + "".join(f", {p} ({' / '.join(f)})" for p, f in fast.items()))
    out.print("GPUs: " + ("; ".join(info["gpus"]) if info["gpus"] else "none found"))
    from rich.markup import escape
    from rich.table import Table

    t = Table("runtime", "asks for", "runs in here", "usable", "devices / providers", "what it is")
    for name, r in info["runtimes"].items():
        usable = f"[yellow]skipped: {escape(r['not_installed'])}[/yellow]" if r.get("not_installed") else \
            f"[red]no: {escape(str(r['error']))}[/red]" if not r["usable"] else \
            f"[yellow]skipped: {escape(r['skip_reason'])}[/yellow]" if r.get("skip_reason") else "yes"
        runs = (r.get("executes") or {}).get("summary") or "-"
        t.add_row(name, r.get("precision", "fp32"), runs, usable, ", ".join(r["devices"]), r["summary"])
    out.print(t)
    return 0


def _copy_artifact(src: Path, dst: Path) -> None:
    import shutil

    from keras_turbo.outdir import write_file_atomically

    # .bin first: an .xml never stands beside a half-written .bin.
    if src.suffix == ".xml":
        write_file_atomically(dst.with_suffix(".bin"), lambda tmp: shutil.copy(src.with_suffix(".bin"), tmp))
    write_file_atomically(dst, lambda tmp: shutil.copy(src, tmp))


def cmd_convert(args) -> int:
    import keras_turbo
    from keras_turbo.convert import ConvertConfig
    from keras_turbo.runtimes import FAMILIES

    out, _ = _console()
    cfg = ConvertConfig(to=args.to, int8_io=args.int8_io, keep_float=tuple(args.keep_float or ()), sparse=args.sparse,
                        **_given(args, "quantize", "calibration_size"))
    if args.output and Path(args.output).suffix != FAMILIES[args.to].suffix:
        raise KerasTurboError(f"-o {args.output}: a {args.to} artifact needs the suffix {FAMILIES[args.to].suffix}")
    _check_outputs(args, args.model, args.calibration_data, args.eval_data, files=("output", "json"))
    doc: dict = {"model": args.model, "config": cfg.to_dict()}
    repair = args.max_accuracy_drop is not None or args.min_agreement is not None
    with tempfile.TemporaryDirectory(prefix="keras-turbo-bias-") as tmp:
        source = _bias_corrected(args, cfg, doc, Path(tmp)) if args.bias_correct else args.model
        if repair:
            result = _convert_with_fallback(args, cfg, doc, source)
        else:
            result = keras_turbo.convert(source, cfg, args.calibration_data, unsafe=args.unsafe)
    if args.output:
        _copy_artifact(result.path, Path(args.output))
        result.path = Path(args.output)
    doc["artifact"] = result.to_dict()
    out.print(f"wrote {result.path} ({result.model_bytes:,} bytes, runs on {result.backend})")
    if args.eval_data and not repair:
        ev = keras_turbo.evaluate(result.load(), args.eval_data, reference=args.model, reference_backend="tf-function",
                                  unsafe=args.unsafe)
        doc["evaluation"] = ev
        acc = "-" if ev["accuracy"] is None else f"{ev['accuracy'] * 100:.2f}%"
        out.print(f"  on {ev['samples']} samples: accuracy {acc}, top-1 agreement with float "
                  f"{ev['top1_agreement'] * 100:.2f}%, max |diff| {ev['max_abs_diff']:.3g}")
    if args.benchmark:
        doc["benchmark"] = _convert_benchmark(args.model, result, cfg.quantize)
    _write_json(args.json, doc)
    return 0


def _bias_corrected(args, cfg, doc: dict, tmp: Path) -> str:
    """--bias-correct: the model with int8 weight rounding's mean error taken out of its biases,
    measured on the calibration data (techniques/biascorrect.py), saved in `tmp`."""
    from keras_turbo.data import load_data
    from keras_turbo.model import io_specs, load_keras, resolve
    from keras_turbo.techniques import biascorrect

    if cfg.quantize != "int8" or cfg.to not in ("litert", "onnx"):
        raise KerasTurboError("--bias-correct applies to --quantize int8 on --to litert or onnx "
                              "(OpenVINO's NNCF corrects biases itself)")
    if not args.calibration_data:
        raise KerasTurboError("--bias-correct measures each layer's input mean: it needs --calibration-data")
    ref = resolve(args.model, unsafe=args.unsafe)
    data = load_data(args.calibration_data, io_specs(ref)[0], arg="--calibration-data").take(cfg.calibration_size, cfg.seed)
    res = biascorrect.apply(load_keras(ref), train=data)
    path = tmp / "bias_corrected.keras"
    res.model.save(path)
    doc["bias_correction"] = res.report
    _console()[1].print(f"[dim]bias correction: {res.report['corrected']} layers on {res.report['samples']} samples[/dim]")
    return str(path)


def _convert_with_fallback(args, cfg, doc: dict, source: str):
    """convert with a budget: the int8 repair (quantize_with_fallback), its ranking and steps shown;
    judged against the model as given even where `source` is its bias-corrected copy."""
    from keras_turbo.techniques.repair import FallbackConfig, quantize_with_fallback

    out, err = _console()
    if not args.eval_data:
        raise KerasTurboError("--max-accuracy-drop / --min-agreement need held-out --eval-data")
    fr = quantize_with_fallback(source, cfg, args.calibration_data, args.eval_data,
                                FallbackConfig(_budget(args), **_given(args, "eval_size")),
                                unsafe=args.unsafe, progress=lambda msg: err.print(f"[dim]{msg}[/dim]"),
                                reference=args.model)
    doc["fallback"] = fr.to_dict()
    out.print(_ranking_table(fr, f"{args.to} {cfg.quantize}"))
    for step in fr.steps:
        acc = "-" if step["accuracy"] is None else f"{step['accuracy'] * 100:.2f}%"
        out.print(f"  kept in float: {', '.join(step['kept_float']) or 'none'} -> accuracy {acc}, "
                  f"agreement {step['top1_agreement'] * 100:.2f}%")
    status = "met" if fr.met else "[red]NOT met[/red]"
    out.print(f"budget {status} on {fr.eval_samples} samples: kept in float: {', '.join(fr.kept_float) or 'nothing'}"
              f"{' (with ' + ', '.join(fr.carriers) + ' between them)' if fr.carriers else ''}; "
              f"still {cfg.quantize}: {', '.join(fr.quantized_layers) or 'none'}")
    return fr.result


def _ranking_table(fr, what: str):
    """The repair's ranking: each layer's output tensor's int8 error (one calibration pass), or
    each layer quantized alone (per-layer)."""
    from rich.table import Table

    if fr.ranking == "tensors":
        t = Table("rank", "layer", "kind", "int8 tensor error", "kept float to repair it",
                  title=f"each layer's output quantized alone, one calibration pass ({what})")
        for i, r in enumerate(fr.layers[:15], 1):
            t.add_row(str(i), r["layer"], r["kind"], f"{r['tensor_error']:.2e}", ", ".join(r["repair"]))
        return t
    t = Table("rank", "layer", "accuracy drop (pts)", "top-1 agreement", "output nmse",
              title=f"per-layer sensitivity: only that layer quantized ({what})")
    for i, r in enumerate(fr.layers, 1):
        drop = "-" if r["accuracy_drop"] is None else f"{r['accuracy_drop']:.2f}"
        t.add_row(str(i), r["layer"], drop, f"{r['top1_agreement'] * 100:.2f}%", f"{r['output_nmse']:.2e}")
    return t


def _convert_benchmark(model, result, mode: str) -> dict:
    """convert --benchmark: the float model and the artifact timed at batch 1 on its runtime."""
    import keras_turbo
    from keras_turbo.report import benchmark_table
    from keras_turbo.timing import BenchmarkConfig

    out, _ = _console()
    float_ref = keras_turbo.benchmark(model, backends=[result.backend], config=BenchmarkConfig(min_seconds=1.0))
    quant = keras_turbo.benchmark(result.path, backends=[result.backend], config=BenchmarkConfig(min_seconds=1.0))
    f, q = float_ref.results[0], quant.results[0]
    if f.ok and q.ok:
        ratio = f.latency_ms["p50"] / q.latency_ms["p50"]
        word = "faster" if ratio >= 1 else "[red]slower[/red]"
        out.print(f"  batch-1 p50 on {result.backend}: float {f.latency_ms['p50']:.3f} ms, {mode} "
                  f"{q.latency_ms['p50']:.3f} ms ({ratio if ratio >= 1 else 1 / ratio:.2f}x {word})")
    else:
        out.print(benchmark_table(quant))
    return {"float": f.to_dict(), "converted": q.to_dict()}


def _technique_data(args):
    """(train, val, unlabeled) Datasets from the technique's DATA arguments (None where not given)."""
    from keras_turbo.model import as_ref, io_specs
    from keras_turbo.data import load_data

    inputs, outputs = io_specs(as_ref(args.model, unsafe=args.unsafe))
    train = load_data(args.train_data, inputs, outputs, default_split="train", arg="--train-data") if args.train_data else None
    val = load_data(args.val_data, inputs, outputs, default_split="val", arg="--val-data") if args.val_data else None
    more = getattr(args, "unlabeled_data", None)  # distill only
    unlabeled = load_data(more, inputs, default_split="train", arg="--unlabeled-data") if more else None
    return train, val, unlabeled


def _run_technique(args, name: str, config, suffix: str = ".keras"):
    """The shared shell of prune / distill / qat / cluster: load safely, read data, apply, save."""
    import keras_turbo
    from keras_turbo.techniques import TECHNIQUES

    if Path(args.output).suffix != suffix:
        raise KerasTurboError(f"-o {args.output}: {name} writes a {suffix} file")
    _check_outputs(args, args.model, args.train_data, args.val_data, getattr(args, "unlabeled_data", None),
                   files=("output", "json"))
    model = keras_turbo.load_model(args.model, unsafe=args.unsafe)
    train, val, unlabeled = _technique_data(args)
    _, err = _console()
    err.print(f"[dim]{name}: working on {args.model}[/dim]")
    extra = {"unlabeled": unlabeled} if unlabeled is not None else {}
    result = TECHNIQUES[name][1](model, config, train, val, **extra)
    _write_json(args.json, {"technique": name, "config": config.to_dict(), "report": result.report})
    return result


def _save_model(model, path) -> None:
    """A technique's -o: written under a fresh name and renamed into place (never through a link)."""
    from keras_turbo.outdir import write_file_atomically

    write_file_atomically(path, model.save)


def _print_report(report: dict) -> None:
    out, _ = _console()
    for key, value in report.items():
        if isinstance(value, (list, dict)) and len(json.dumps(value, default=str)) > 300:
            out.print(f"  {key}: ({len(value)} entries; see --json)")
        else:
            out.print(f"  {key}: {value}")


def cmd_prune(args) -> int:
    for flag in ("prune_first_last", "prune_depthwise", "reconstruct"):
        if args.structured and getattr(args, flag):
            raise KerasTurboError(f"--{flag.replace('_', '-')} applies to magnitude pruning (--structured removes whole filters)")
    if args.structured:
        from keras_turbo.techniques.structured import StructuredConfig

        cfg = StructuredConfig(target_flops_reduction=args.target_flops_reduction, finetune=not args.no_finetune,
                               distill=args.distill, **_given(args, "sparsity", "importance", "compensate", "epochs"))
        result = _run_technique(args, "structured", cfg)
    else:
        from keras_turbo.techniques.prune import PruneConfig

        if args.target_flops_reduction is not None:
            raise KerasTurboError("--target-flops-reduction applies to --structured pruning")
        for flag in ("importance", "compensate"):
            if getattr(args, flag) is not None:
                raise KerasTurboError(f"--{flag} applies to --structured pruning")
        cfg = PruneConfig(finetune=not args.no_finetune, pattern=args.pattern, skip_first_last=not args.prune_first_last,
                          depthwise=args.prune_depthwise, reconstruct=args.reconstruct,
                          **_given(args, "sparsity", "schedule", "epochs"))
        result = _run_technique(args, "prune", cfg)
    _save_model(result.model, args.output)
    out, _ = _console()
    out.print(f"wrote {args.output}")
    _print_report(result.report)
    return 0


def cmd_distill(args) -> int:
    from keras_turbo.techniques.distill import DistillConfig

    cfg = DistillConfig(labels_only=args.labels_only,
                        **_given(args, "student", "shift", "mixup", "seed", "temperature", "alpha", "epochs"))
    result = _run_technique(args, "distill", cfg)
    _save_model(result.model, args.output)
    _console()[0].print(f"wrote {args.output}")
    _print_report(result.report)
    return 0


def cmd_resolution(args) -> int:
    from keras_turbo.techniques.resolution import ResolutionConfig

    cfg = ResolutionConfig(finetune=not args.no_finetune, distill=not args.labels_only, **_given(args, "factor", "epochs"))
    result = _run_technique(args, "resolution", cfg)
    _save_model(result.model, args.output)
    _console()[0].print(f"wrote {args.output}")
    _print_report(result.report)
    return 0


def cmd_qat(args) -> int:
    from keras_turbo.techniques import qat

    cfg = qat.QATConfig(**_given(args, "epochs"))
    result = _run_technique(args, "qat", cfg, suffix=".tflite")
    path = qat.export_tflite(result, args.output)
    _console()[0].print(f"wrote {path}")
    _print_report(result.report)
    return 0


def cmd_cluster(args) -> int:
    from keras_turbo.techniques.cluster import ClusterConfig

    cfg = ClusterConfig(**_given(args, "clusters", "epochs"))
    result = _run_technique(args, "cluster", cfg)
    _save_model(result.model, args.output)
    _console()[0].print(f"wrote {args.output}")
    _print_report(result.report)
    return 0


def _parse_duration(text: str) -> float:
    m = __import__("re").fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise KerasTurboError(f"--time-budget: expected a duration like 90s, 30m or 2h, received {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _run_optimize(model, data, train_data, cfg, out_dir=None, unsafe=False, force=False, **where):
    """optimize with progress: a live bar on a terminal; off one (a CI log, nohup), one plain line
    per finished candidate, as it finishes."""
    import keras_turbo
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from keras_turbo.report import progress_line

    out, err = _console()
    kw = {"unsafe": unsafe, "force": force, **({"out": out_dir} if out_dir else {}), **where}
    if not out.is_terminal:
        seen = {"done": 0, "total": 0}

        def note(what, done, total, left):
            seen["total"] = total

        def finished(row):
            seen["done"] += 1
            print(progress_line(row, seen["done"], max(seen["total"], seen["done"])), flush=True)

        return keras_turbo.optimize(model, data, train_data, cfg, progress=note, on_variant=finished, **kw)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TextColumn("{task.fields[left]}"), console=err, transient=True) as bar:
        task = bar.add_task("optimize", total=1, left="")

        def progress(what, done, total, left):
            bar.update(task, description=f"candidate: {what}", completed=done, total=total,
                       left=f"{max(left, 0) / 60:.1f} min left in budget")

        return keras_turbo.optimize(model, data, train_data, cfg, progress=progress, **kw)


def _print_optimize(res, every_row: bool = False) -> None:
    """The recommendation, the handful of variants within budget that matter and counts of the
    rest (`--all`: every row, as the report has them), where the report and best/ are."""
    from rich.markup import escape

    from keras_turbo.report import (glance_counts, glance_rows, glance_table, headline, quality_text, ratio_text,
                                    runoff_text, summary_table)

    out, _ = _console()
    if every_row:
        out.print(summary_table(res.doc))
    else:
        out.print(glance_table(res.doc))
        out.print(glance_counts(res.doc, len(glance_rows(res.doc))), highlight=False)
    h = headline(res.doc)
    if h:
        verdict = "" if h["budget_met"] else "  (no candidate met the budget: the fastest float runtime is recommended)"
        base = h["baseline_accuracy"]
        out.print(f"\n[bold]recommended: {escape(h['recommended'])}[/bold]{verdict}")
        out.print(f"  {escape(ratio_text(h))}", highlight=False)
        out.print(f"  {h['size_ratio']:.1f}x smaller; {quality_text(res.recommended or {})}"
                  + ("" if base is None else f", float {base * 100:.2f}%") + f"; runs in {h['runs_in']} here",
                  highlight=False)
    if runoff_text(res.doc):
        out.print(runoff_text(res.doc).replace("`", ""), highlight=False)
    out.print(f"report: {res.report_html}", highlight=False)
    if res.recommended:
        out.print(f"best/: {res.out / 'best'}: keras_turbo.load({str(res.out / 'best')!r}), or without keras-turbo: "
                  "best/README.md and best/predict.py", highlight=False)


def _output_kinds(items) -> tuple:
    """--output-kind NAME=KIND, repeated -> ((name, kind), ...)."""
    from keras_turbo.quality import KINDS

    kinds = []
    for item in items or []:
        name, sep, kind = item.partition("=")
        if not sep or not name or kind not in KINDS:
            raise KerasTurboError(f"--output-kind: expected NAME=KIND with KIND one of {', '.join(KINDS)}, received {item!r}")
        kinds.append((name, kind))
    return tuple(kinds)


def cmd_optimize(args) -> int:
    from keras_turbo.optimize import OptimizeConfig

    cfg = OptimizeConfig(_budget(args), metric=args.metric, output_kinds=_output_kinds(args.output_kind),
                         threads=args.threads, techniques=tuple(t for t in (args.techniques or "").split(",") if t),
                         runtimes=tuple(t for t in (args.runtimes or "").split(",") if t),
                         **_given(args, "objective", "batch_size", "runoff_rounds", "eval_size"),
                         **({"time_budget_s": _parse_duration(args.time_budget)} if args.time_budget else {}))
    res = _run_optimize(args.model, args.data, args.train_data, cfg, args.out, args.unsafe, args.force,
                        **_given(args, "executor", "ray_address", "target_node", "target_resource"))
    _print_optimize(res, args.every_row)
    return _nothing_measured(res)


def _nothing_measured(res) -> int:
    """A run that measured no candidate says so and fails (a short --time-budget, or every
    candidate failing), rather than exiting 0 and pointing at a best/ that was not written."""
    if res.recommended:
        return 0
    print(f"keras-turbo: error: no candidate was measured (time budget spent, or every candidate failed: "
          f"see {res.out / 'results.json'}); no best/ written", file=sys.stderr)
    return 1


def cmd_report(args) -> int:
    from keras_turbo.report import write_reports

    path = Path(args.dir) / "results.json"
    if not path.exists():
        raise KerasTurboError(f"{args.dir}: no results.json here (run keras-turbo optimize --out {args.dir} first)")
    try:
        doc = json.loads(path.read_text())
    except ValueError as e:
        raise KerasTurboError(f"{path}: not valid JSON ({e})") from e
    from keras_turbo.optimize.store import FORMAT, rejudge

    if doc.get("format") != FORMAT:
        raise KerasTurboError(f"{path}: results of an older keras-turbo layout; rerun optimize --out {args.dir}")
    write_reports(Path(args.dir), rejudge(doc))
    out, _ = _console()
    out.print(f"wrote {Path(args.dir) / 'report.html'} and report.md")
    return 0


def cmd_demo(args) -> int:
    """The built-in digits CNN (shipped trained; cached), optimized with train data; then the report."""
    from keras_turbo.api import demo_run

    out, err = _console()
    run = demo_run(threads=args.threads, **({"time_budget_s": _parse_duration(args.time_budget)} if args.time_budget else {}),
                   progress=lambda msg: err.print(f"[dim]{msg}[/dim]"))
    out.print(f"built-in digits CNN: {run.model}")
    res = _run_optimize(run.model, run.data, run.train_data, run.config, args.out or run.out, force=args.force)
    _print_optimize(res, args.every_row)
    return _nothing_measured(res)


# ------------------------------------------------------------------------- parser

def _all_arg(sp):
    sp.add_argument("--all", action="store_true", dest="every_row",
                    help="print every candidate's row (default: the recommendation, the variants within budget that "
                         "matter and counts of the rest; the report always has every row)")


def _force_arg(sp, what="the output files"):
    sp.add_argument("--force", action="store_true", help=f"overwrite {what} when they exist (never an input file)")


#: the MODEL argument that names keras-turbo's own trained digits CNN (what `demo` optimizes)
BUILTIN_MODEL = "builtin:digits"


def _model_path(text: str) -> str:
    """MODEL as given, or for `builtin:digits` the path of the built-in digits CNN (copied into
    the cache from the package): a model to try every command on without one of your own."""
    if text != BUILTIN_MODEL:
        return text
    from keras_turbo.builtin import digits_model_path

    return str(digits_model_path())


def _model_arg(sp):
    sp.add_argument("model", type=_model_path,
                    help=f"a .keras, .h5, SavedModel dir, .tflite, .onnx or OpenVINO .xml; {BUILTIN_MODEL}: the "
                         "built-in digits CNN")
    sp.add_argument("--unsafe", action="store_true",
                    help="let the model file run Python code (Lambda layers); only for files you trust")
    sp.add_argument("--custom-objects", metavar="FILE.py",
                    help="your own Python file that registers (keras.saving.register_keras_serializable) or lists "
                         "(a CUSTOM_OBJECTS dict) the model's custom layers; run because you name it")


def _budget_args(sp, every_kind: bool = True, verb: str = "judge"):
    """The budget flags (quality.Budget's fields), defined once: convert's int8 repair takes the
    classification budget only; evaluate and optimize every kind's, the user's metric too."""
    from keras_turbo import quality

    sp.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                    help=f"{verb} classification-like outputs by their accuracy loss in points against the float model "
                         "(needs labels)" + (f"; optimize's default where the data has labels: "
                                            f"{quality.DEFAULT_MAX_ACCURACY_DROP}" if every_kind else ""))
    sp.add_argument("--min-agreement", type=float, metavar="FRACTION",
                    help=f"instead, {verb} them by top-1 agreement with the float model (no labels needed), e.g. "
                         f"{quality.DEFAULT_MIN_AGREEMENT}")
    if not every_kind:
        return
    sp.add_argument("--max-output-error", type=float, metavar="E",
                    help="regression / embedding outputs: RMSE of the difference from float over the output's "
                         f"standard deviation (1 - cosine for embeddings); default {quality.DEFAULT_MAX_OUTPUT_ERROR}")
    sp.add_argument("--max-metric-drop", type=float, metavar="PERCENT",
                    help="labelled metrics other than accuracy (regression RMSE, segmentation mean IoU, multi-label "
                         "F1) and --metric: allowed drop relative to the float model, in percent "
                         f"(--metric's default {quality.DEFAULT_MAX_METRIC_DROP})")
    sp.add_argument("--metric", metavar="FILE.py:FUNCTION",
                    help="your own metric (your trusted code, run because you name it): called with (float "
                         "outputs, variant outputs, labels or None), returns a score, higher is better")
    sp.add_argument("--output-kind", action="append", metavar="NAME=KIND",
                    help=f"override an output's detected kind: one of {', '.join(quality.KINDS)} (repeatable)")


def _train_args(sp, out_suffix=".keras"):
    sp.add_argument("--train-data", metavar="DATA", help="DATA to fine-tune or train on")
    sp.add_argument("--val-data", metavar="DATA", help="held-out DATA for the before/after accuracy")
    sp.add_argument("-o", "--output", required=True, metavar=f"OUT{out_suffix}")
    sp.add_argument("--json", metavar="PATH", help="write the technique's report as JSON")
    _force_arg(sp)
    sp.add_argument("--epochs", type=_positive_int("--epochs"), help="fine-tuning epochs (default: the technique's own)")


#: technique flags without a default here: a flag not given leaves the technique config's own
_OWN = "(default: the technique's own)"


def _add_benchmark(sub):
    from keras_turbo.timing import BenchmarkConfig

    d = BenchmarkConfig()
    sp = sub.add_parser("benchmark", help="latency, throughput, start-up and memory on each runtime")
    _model_arg(sp)
    sp.add_argument("--backend", action="append", metavar="NAME",
                    help="a runtime (repeat for several; 'all' for every one); default: all for a Keras model")
    sp.add_argument("--batch-size", action="append", type=_positive_int("--batch-size"), metavar="N",
                    help="repeat to measure several batch sizes (default 1)")
    sp.add_argument("--threads", type=_positive_int("--threads"), help="threads per runtime (default: all cores)")
    sp.add_argument("--warmup-runs", type=int, help=f"default {d.warmup_runs}")
    sp.add_argument("--warmup-seconds", type=float, help=f"default {d.warmup_seconds}")
    sp.add_argument("--min-runs", type=int, help=f"timed runs at least (default {d.min_runs})")
    sp.add_argument("--min-seconds", type=float, help=f"timed seconds at least (default {d.min_seconds})")
    sp.add_argument("--device", choices=("auto", "cpu", "gpu"), help=f"default {d.device}")
    sp.add_argument("--timeout", type=float, help=f"seconds one runtime may take (default {d.timeout_s:.0f})")
    sp.add_argument("--data", metavar="DATA", help="time (and check each runtime) on these samples, at their shape: "
                    "x.npz, a .txt file (text models), an image folder, builtin:digits[:split]")
    sp.add_argument("--input-shape", action="append", metavar="[NAME=]BxDx...",
                    help="time at this input shape, batch first (1x224x224x3); one per input: NAME=SHAPE, or "
                         "shapes alone in input-name order; needed without --data when an input's size is dynamic")
    sp.add_argument("--json", metavar="PATH", help="write the results as JSON")
    _force_arg(sp)
    sp.set_defaults(fn=cmd_benchmark)


def _add_evaluate(sub):
    sp = sub.add_parser("evaluate", help="accuracy on DATA, and agreement with a reference model")
    _model_arg(sp)
    sp.add_argument("--data", required=True, help="x.npz, an image folder, or builtin:digits[:split]")
    sp.add_argument("--reference", metavar="MODEL", help="compare outputs against this model")
    sp.add_argument("--backend", metavar="NAME", help="runtime for MODEL")
    sp.add_argument("--reference-backend", metavar="NAME", help="runtime for the reference")
    sp.add_argument("--batch-size", type=_positive_int("--batch-size"), help="samples per call (default: evaluate's)")
    _budget_args(sp)
    sp.add_argument("--json", metavar="PATH")
    _force_arg(sp)
    sp.set_defaults(fn=cmd_evaluate)


def _add_convert(sub):
    from keras_turbo.convert import ConvertConfig
    from keras_turbo.runtimes import FAMILIES

    d = ConvertConfig()
    sp = sub.add_parser("convert", help="export to LiteRT / ONNX / OpenVINO, optionally quantized, with float fallback")
    _model_arg(sp)
    sp.add_argument("--to", required=True, choices=tuple(FAMILIES))
    sp.add_argument("--quantize", metavar="MODE",
                    help="; ".join(f"{n}: {', '.join(f.modes)}" for n, f in FAMILIES.items()) + f" (default {d.quantize})")
    sp.add_argument("--int8-io", action="store_true", help="LiteRT full int8 with int8 input and output tensors")
    sp.add_argument("--sparse", action="store_true",
                    help="LiteRT: store pruned (mostly zero) weights sparsely, for a smaller file (see `prune`)")
    sp.add_argument("--calibration-data", metavar="DATA", help="DATA for int8 / int16x8 calibration")
    sp.add_argument("--bias-correct", action="store_true",
                    help="int8 on litert / onnx: first take int8 weight rounding's mean error out of each layer's bias, "
                         "measured on the calibration data (the budget is still judged against the model as given)")
    sp.add_argument("--calibration-size", type=_positive_int("--calibration-size"),
                    help=f"calibration samples drawn from it (default {d.calibration_size})")
    sp.add_argument("--keep-float", action="append", metavar="LAYER", help="a Keras layer to keep in float (repeat)")
    sp.add_argument("--eval-data", metavar="DATA", help="held-out DATA: accuracy of the artifact against the float model")
    _budget_args(sp, every_kind=False, verb="find the layers that break int8 and keep them float until it holds for")
    sp.add_argument("--eval-size", type=_positive_int("--eval-size"), metavar="N",
                    help="with a budget: the --eval-data samples (seeded) the repair judges each step on "
                         "(default 500; the JSON says how many were used)")
    sp.add_argument("--benchmark", action="store_true", help="also time float vs converted at batch 1 on the runtime")
    sp.add_argument("-o", "--output", metavar="PATH", help="where to write the artifact")
    sp.add_argument("--json", metavar="PATH")
    _force_arg(sp)
    sp.set_defaults(fn=cmd_convert)


def _add_techniques(sub):
    sp = sub.add_parser("prune", help="magnitude pruning, or --structured channel pruning to a smaller model")
    _model_arg(sp)
    _train_args(sp)
    sp.add_argument("--sparsity", type=float, help=f"fraction of weights (or with --structured, of channels) removed {_OWN}")
    sp.add_argument("--schedule", choices=("polynomial", "constant"), help=_OWN)
    sp.add_argument("--pattern", metavar="M:N", help="M:N sparsity such as 2:4 (magnitude pruning)")
    sp.add_argument("--prune-first-last", action="store_true",
                    help="magnitude pruning: prune the first and last prunable layers too (skipped by default)")
    sp.add_argument("--prune-depthwise", action="store_true",
                    help="magnitude pruning: prune depthwise convolutions too (left dense by default: few weights, "
                         "each channel its own)")
    sp.add_argument("--reconstruct", action="store_true", help="magnitude pruning: at once, each Dense / 1x1 conv's kept "
                    "weights re-solved by least squares on the train data (no labels needed); masks held in any fine-tune")
    sp.add_argument("--structured", action="store_true", help="remove whole filters and build a smaller dense model")
    sp.add_argument("--target-flops-reduction", type=float, metavar="F", help="with --structured: e.g. 2.0 for half the FLOPs")
    sp.add_argument("--importance", choices=("l1", "l2", "bn", "activation"),
                    help=f"with --structured: which filters go (activation: measured on the train data) {_OWN}")
    sp.add_argument("--compensate", choices=("none", "mean", "refit"),
                    help="with --structured: make up for the removed channels from the train data: their mean, or "
                         f"also a least-squares refit of each Dense / 1x1 conv after the cut {_OWN}")
    sp.add_argument("--distill", action="store_true", help="with --structured: fine-tune with the original as teacher")
    sp.add_argument("--no-finetune", action="store_true", help="prune without training (no --train-data needed)")
    sp.set_defaults(fn=cmd_prune)

    sp = sub.add_parser("distill", help="train a lighter student with the model as teacher")
    _model_arg(sp)
    _train_args(sp)
    sp.add_argument("--student", help=f"width:F, mobilenetv2:ALPHA, efficientnetb0, mobilenet, or PATH.keras {_OWN}")
    sp.add_argument("--temperature", type=float, help=f"softening of both outputs {_OWN}")
    sp.add_argument("--alpha", type=float, help=f"weight of the hard-label loss beside the soft one {_OWN}")
    sp.add_argument("--unlabeled-data", metavar="DATA", help="more inputs without labels, taught by the teacher alone")
    sp.add_argument("--shift", type=float, help="random image shifts up to this fraction of the size "
                    f"(teacher and student see the same shifted batch) {_OWN}")
    sp.add_argument("--mixup", type=float, help=f"mixup Beta parameter (0: off) {_OWN}")
    sp.add_argument("--labels-only", action="store_true", help="train the student on the labels alone (the baseline)")
    sp.add_argument("--seed", type=int, help=_OWN)
    sp.set_defaults(fn=cmd_distill)

    sp = sub.add_parser("resolution", help="run the network on the image shrunk by a factor, fine-tuned to it")
    _model_arg(sp)
    _train_args(sp)
    sp.add_argument("--factor", type=_factor,
                    help="shrink the image F times: a whole F averages FxF pixels into one (2: half the height and "
                         f"width, about a quarter of the FLOPs), a fractional one resizes bilinearly (1.4: 224 -> 160) {_OWN}")
    sp.add_argument("--labels-only", action="store_true", help="fine-tune on the labels alone, without the original as teacher")
    sp.add_argument("--no-finetune", action="store_true",
                    help="only insert the shrinking (no --train-data needed; given, it re-estimates the BatchNorm statistics)")
    sp.set_defaults(fn=cmd_resolution)

    sp = sub.add_parser("qat", help="quantization-aware training, exported to a full-int8 .tflite")
    _model_arg(sp)
    _train_args(sp, ".tflite")
    sp.set_defaults(fn=cmd_qat)

    sp = sub.add_parser("cluster", help="k-means weight sharing (smaller when compressed)")
    _model_arg(sp)
    _train_args(sp)
    sp.add_argument("--clusters", type=_positive_int("--clusters"), help=f"distinct values per kernel {_OWN}")
    sp.set_defaults(fn=cmd_cluster)


def _add_optimize(sub):
    from keras_turbo.optimize.config import OBJECTIVES, OptimizeConfig
    from keras_turbo.optimize.driver import DEFAULT_OUT

    d = OptimizeConfig()
    sp = sub.add_parser("optimize", help="the fastest variant within an accuracy budget, with a report")
    _model_arg(sp)
    sp.add_argument("--data", required=True, help="held-out DATA to judge accuracy on")
    sp.add_argument("--train-data", metavar="DATA",
                    help="DATA for calibration and the training techniques; labels optional (without them the "
                         "fine-tunes learn from the float model's outputs, and probes are judged on a seeded 15%% of --data)")
    _budget_args(sp)
    sp.add_argument("--objective", choices=OBJECTIVES, help=f"default {d.objective}")
    sp.add_argument("--batch-size", type=_positive_int("--batch-size"), help=f"the serving batch size (default {d.batch_size})")
    sp.add_argument("--threads", type=_positive_int("--threads"), help="default: all cores")
    sp.add_argument("--techniques", metavar="LIST", help="comma-separated: runtimes,fp16,int8,fallback and the training techniques")
    sp.add_argument("--runtimes", metavar="LIST", help="comma-separated runtimes to try (default: every one that imports here)")
    sp.add_argument("--time-budget", metavar="DURATION", help=f"e.g. 90s, 30m (default {d.time_budget_s / 60:g}m)")
    sp.add_argument("--eval-size", type=_positive_int("--eval-size"), metavar="N",
                    help="judge quality on at most N samples of --data, a seeded sample where it holds more "
                         f"(default {d.eval_size}; the report and results.json say how many were used)")
    sp.add_argument("--runoff-rounds", type=_positive_int("--runoff-rounds", least=0), metavar="N",
                    help="time the candidates within 15%% of the fastest again in N alternating rounds and rank them "
                         f"by the median (0: one timing each; default {d.runoff_rounds})")
    sp.add_argument("--out", metavar="DIR", help=f"the output folder (default ./{DEFAULT_OUT})")
    sp.add_argument("--executor", choices=("local", "ray"),
                    help="local (default), or ray: builds and accuracy checks fan out over a Ray cluster")
    sp.add_argument("--ray-address", metavar="ADDR", help="join a Ray cluster: auto or ray://HOST:PORT "
                    "(default with --executor ray: start a local Ray instance)")
    sp.add_argument("--target-node", metavar="NODE_ID|IP", help="the Ray node latency is measured on (default: this one)")
    sp.add_argument("--target-resource", metavar="NAME", help="instead: a Ray custom resource marking the target nodes")
    _all_arg(sp)
    _force_arg(sp, "a --out folder holding other files, and its best/,")
    sp.set_defaults(fn=cmd_optimize)


def build_parser() -> argparse.ArgumentParser:
    """The command line. Every flag is defined once; a flag not given is None here, so the config
    it fills keeps its own default (the help shows it where the config is light to import)."""
    from keras_turbo import __version__
    from keras_turbo.api import DEMO_OUT, DEMO_TIME_BUDGET_S

    p = _Parser(prog="keras-turbo", description="Make a trained Keras / TensorFlow model run inference faster, and prove it.")
    p.add_argument("--version", action="version", version=f"keras-turbo {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sp = sub.add_parser("inspect", help="inputs, outputs, parameters, FLOPs, size and layer kinds of a model")
    _model_arg(sp)
    sp.add_argument("--json", metavar="PATH", help="also write the description as JSON")
    _force_arg(sp)
    sp.set_defaults(fn=cmd_inspect)
    _add_benchmark(sub)
    _add_evaluate(sub)
    _add_convert(sub)
    sp = sub.add_parser("devices", help="CPU features, GPUs and usable runtimes")
    sp.add_argument("--json", metavar="PATH")
    _force_arg(sp)
    sp.set_defaults(fn=cmd_devices)
    _add_techniques(sub)
    _add_optimize(sub)
    sp = sub.add_parser("report", help="re-render report.html and report.md from DIR/results.json")
    sp.add_argument("dir")
    sp.set_defaults(fn=cmd_report)
    sp = sub.add_parser("demo", help="optimize the built-in digits CNN with train data (what make demo runs)")
    sp.add_argument("--out", metavar="DIR", help=f"folder for the results (default {DEMO_OUT})")
    sp.add_argument("--threads", type=_positive_int("--threads"))
    sp.add_argument("--time-budget", metavar="DURATION", help=f"default {DEMO_TIME_BUDGET_S / 60:g}m")
    _all_arg(sp)
    _force_arg(sp, "a --out folder holding other files, and its best/,")
    sp.set_defaults(fn=cmd_demo)
    return p


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"keras-turbo: warning: {message}", file=sys.stderr)


def _on_signal(signum, frame):
    """Ctrl-C and SIGTERM alike: unwind (every `finally` runs, so temp folders go and benchmark
    workers are killed), then one line and 128 + signal number."""
    _stopped_by.append(signum)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the clean-up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None
    if not as_program:
        _stopped_by.clear()  # called in-process: only a signal from now on stops this call
    handlers: dict = {}
    code = 1
    try:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread: the signals stay the caller's
            pass
        if _stopped_by:  # a signal noted while the program started
            raise KeyboardInterrupt
        code = _main(sys.argv[1:] if argv is None else argv)
        return code
    except KeyboardInterrupt:
        signum = _stopped_by[0] if _stopped_by else signal.SIGINT
        word = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"keras-turbo: {word}", file=sys.stderr)
        code = 128 + signum
        return code
    finally:
        if as_program:  # shutting down: an interrupt now would only print a traceback
            for sig in handlers:
                signal.signal(sig, signal.SIG_IGN)
            _exit_past_running_builds(code)
            if _stopped_by:
                _exit_interrupted(code)
        else:  # called in-process (tests, notebooks): give the caller its handlers back
            for sig, h in handlers.items():
                signal.signal(sig, h)


def _exit_interrupted(code: int) -> None:
    """Exit with `code` after an interrupt we handled. A normal exit would not do: when the
    KeyboardInterrupt passed through code that a library ran with `PyRun_String` (while importing
    TensorFlow, say), CPython marked it unhandled, and at exit kills itself with SIGINT instead
    of returning 130. So the exit functions run here, then the process ends with the code."""
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_past_running_builds(code: int) -> None:
    """A build the time budget stopped inside a long native call (a converter) stops when that call
    returns; everything it could leave is already written or discarded, so the program exits now
    rather than wait for it (and does not run interpreter shutdown under a busy native thread)."""
    import os

    executor = sys.modules.get("keras_turbo.optimize.executor")  # only a run that built anything
    if executor is not None and executor.running_builds():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    if debug:
        import os

        os.environ["KERAS_TURBO_DEBUG"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        warnings.showwarning = _one_line_warnings
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    if getattr(args, "unsafe", False):
        from keras_turbo.model import UNSAFE_WARNING

        print(f"keras-turbo: warning: {UNSAFE_WARNING}", file=sys.stderr)
    try:
        from keras_turbo.model import custom

        # the user's own code, named by them: effective here and in every worker process
        with custom.activated(getattr(args, "custom_objects", None)):
            return args.fn(args)
    except Exception as e:
        if _stopped_by:
            # The signal's KeyboardInterrupt met a library that turned it into an error of its own
            # (numpy's import wraps anything raised while loading its C extension in an
            # ImportError): the user pressed Ctrl-C, so that is what they are told.
            raise KeyboardInterrupt from e
        return _report_error(e, debug)


def _report_error(e: Exception, debug: bool) -> int:
    """One line for the error a command ended on, and its exit code (--debug: the traceback)."""
    if debug:
        raise e
    if isinstance(e, KerasTurboError):
        print(f"keras-turbo: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from keras_turbo.errors import cause

    print(f"keras-turbo: internal error: {cause(e)} (run with --debug for the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
