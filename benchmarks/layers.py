"""What bounds keras-turbo's int8 pick at batch 1 (issue 29, point 5): OpenVINO int8 against
OpenVINO's own default, layer by layer, on the shared ImageNet-trained models.

On an AMX CPU OpenVINO's default (no config) runs a float model in bf16 on the AMX tiles, and it
is the fastest peer default in the trained-network headline. keras-turbo's int8 there is NNCF's
post-training quantization, compiled as `runtimes/openvino.py` compiles it (LATENCY hint, f32
inference precision, the batch made static), plain (`openvino int8`) or with the stem kept float
on the bf16 entry (`openvino-bf16 int8 mixed`, what this script found and optimize now tries,
plan.STEM_FLOAT). This script:

- times, in alternating rounds within one process, OpenVINO's default on the float IR, plain
  int8, and the two levers tried on it: the int8 IR under a bf16 precision hint (whatever stays
  float runs bf16), and the int8 IR with its first convolution kept float (so in bf16: the stem's
  three input channels suit AMX int8 tiles worst); each path's top-1 on the 1,000 judged photos;
- reads OpenVINO's per-layer counters (`PERF_COUNT`) for the default and plain int8 at batch 1 and
  32, summed by kind of layer, with the layers int8 runs slower than bf16.

Run: `.venv/bin/python benchmarks/layers.py` (about 5 minutes on 2 cores); writes BENCHMARKS.md
"layers" and benchmarks/results/layers.json (`--render`: the section again from that JSON).
"""

from __future__ import annotations

import collections
import sys
import time

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from _common import RESULTS, WORK, cpu_kind, imagenet_model, imagenet_split, machine_line, publish, rendered_again  # noqa: E402

MODELS = {"mobilenet_v2_1.0": "MobileNetV2 1.0", "mobilenet_v1_0.75": "MobileNet v1 0.75"}
BATCHES = (1, 32)
ROUNDS = 12
CALLS = {1: 100, 32: 10}    # calls per path per round
PROFILED = {1: 200, 32: 20}  # calls whose counters are averaged
RAW = RESULTS / "layers.json"
OUT = WORK / "layers"
#: (key, label): the paths timed; "default" is OpenVINO's own, the rest keras-turbo's int8 IR
PATHS = (("default", "OpenVINO's default (float IR, no config: bf16 on AMX)"),
         ("default-dynamic", "OpenVINO's default with the batch left dynamic, as exported (the headline's peer)"),
         ("int8", "plain int8 (`openvino int8`)"),
         ("int8-bf16", "the same int8 IR under a bf16 precision hint"),
         ("int8-stem", "int8 with the stem kept float, bf16 hint (`openvino-bf16 int8 mixed`)"))


def kind(node_type: str, exec_type: str) -> str:
    """A layer's kind, from OpenVINO's counters (the compiled graph's op and the kernel it ran)."""
    if node_type == "GroupConvolution":
        return "depthwise 3x3"
    if node_type == "Convolution":
        return "1x1 convolution" if "1x1" in exec_type else "stem convolution (3 input channels)"
    if node_type.startswith("FullyConnected"):
        return "classifier"
    if node_type in ("Reorder", "Transpose", "Subgraph", "Convert", "FakeQuantize"):
        return "layout and (de)quantize"
    return "other (pooling, softmax)"


def compiled(core, xml, batch: int | None, config: dict):
    """The IR compiled for a static `batch` (None: as exported, the batch dimension dynamic)."""
    model = core.read_model(str(xml))
    if batch is None:
        return core.compile_model(model, "CPU", config)
    model.reshape({model.inputs[0]: [batch, *[d.get_length() for d in list(model.inputs[0].get_partial_shape())[1:]]]})
    return core.compile_model(model, "CPU", config)


def artifacts(key: str, x, cal) -> dict:
    """The float IR and the two int8 IRs (all of them, then its first convolution float)."""
    import keras_turbo
    from keras_turbo.convert import ConvertConfig
    from keras_turbo.data import Dataset

    model = imagenet_model(key)
    stem = next(layer.name for layer in model.layers if type(layer).__name__ == "Conv2D")
    calibration = Dataset((x[cal],), None, "calibration")
    dest = OUT / key
    made = {"float": keras_turbo.convert(model, ConvertConfig(to="openvino"), output=dest / "float.xml").path,
            "int8": keras_turbo.convert(model, ConvertConfig(to="openvino", quantize="int8"), calibration,
                                        output=dest / "int8.xml").path,
            "int8-stem": keras_turbo.convert(model, ConvertConfig(to="openvino", quantize="int8", keep_float=(stem,)),
                                             calibration, output=dest / "int8-stem.xml").path}
    return {**made, "stem": stem}


def configs(made: dict) -> dict:
    """Each path: (its IR, its compile config); the int8 ones as runtimes/openvino.py compiles them.
    Every path but "default-dynamic" is compiled for the batch it runs (keras-turbo's predictor
    does so for each batch size it sees), so the layer counters compare kernels, not shapes."""
    from keras_turbo.runtimes.openvino import OpenVINOPredictor as P

    kt = {"PERFORMANCE_HINT": P.hint, "INFERENCE_PRECISION_HINT": P.precision}
    bf16 = {**kt, "INFERENCE_PRECISION_HINT": "bf16"}
    return {"default": (made["float"], {}), "default-dynamic": (made["float"], {}), "int8": (made["int8"], kt), "int8-bf16": (made["int8"], bf16),
            "int8-stem": (made["int8-stem"], bf16)}


def top1(request, x, y, batch: int) -> float:
    pred = []
    for i in range(0, len(x) - len(x) % batch, batch):
        request.infer({0: x[i:i + batch]})
        pred.extend(request.get_output_tensor(0).data.argmax(-1))
    return float((np.asarray(pred) == y[:len(pred)]).mean())


def timed(requests: dict, sample, batch: int) -> dict:
    """The median over ROUNDS alternating rounds of each path's median call, in ms."""
    rounds = {k: [] for k in requests}
    for _ in range(ROUNDS):
        for k, r in requests.items():
            times = []
            for _ in range(CALLS[batch]):
                t0 = time.perf_counter()
                r.infer({0: sample}, share_inputs=True)
                times.append(time.perf_counter() - t0)
            rounds[k].append(1e3 * float(np.median(times)))
    return {k: float(np.median(v)) for k, v in rounds.items()}


def profile(core, xml, batch: int, config: dict, sample) -> dict:
    """Per-layer microseconds (mean over PROFILED calls after a warm-up), and each layer's kind."""
    request = compiled(core, xml, batch, {**config, "PERF_COUNT": True}).create_infer_request()
    for _ in range(10):
        request.infer({0: sample})
    us, kinds = collections.defaultdict(float), {}
    for _ in range(PROFILED[batch]):
        request.infer({0: sample})
        for p in request.profiling_info:
            if p.status == p.Status.EXECUTED:
                us[p.node_name] += p.real_time.total_seconds() * 1e6 / PROFILED[batch]
                kinds[p.node_name] = kind(p.node_type, p.exec_type)
    return {"us": dict(us), "kinds": kinds}


def measure(key: str, x, y, cal, judged, log) -> dict:
    import openvino as ov

    core = ov.Core()
    made = artifacts(key, x, cal)
    paths = configs(made)
    row = {"title": MODELS[key], "stem": made["stem"], "batches": {}}
    for batch in BATCHES:
        requests = {k: compiled(core, xml, None if k == "default-dynamic" else batch, cfg).create_infer_request()
                    for k, (xml, cfg) in paths.items()}
        sample = np.ascontiguousarray(x[judged[:batch]])
        acc = {k: top1(r, x[judged], y[judged], batch) for k, r in requests.items()} if batch == 32 else None
        p50 = timed(requests, sample, batch)
        layers = {k: profile(core, paths[k][0], batch, paths[k][1], sample) for k in ("default", "int8")}
        row["batches"][str(batch)] = {"p50": p50, "top1": acc, "layers": layers}
        log(f"{key} b{batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in p50.items()))
    return row


def _by_kind(layers: dict) -> dict:
    """kind -> (layers, bf16 default us, int8 us, layers where int8 is slower than bf16)."""
    d, q = layers["default"], layers["int8"]
    out = collections.defaultdict(lambda: [0, 0.0, 0.0, 0])
    for name, k in {**d["kinds"], **q["kinds"]}.items():
        cell = out[k]
        cell[0] += 1
        cell[1] += d["us"].get(name, 0.0)
        cell[2] += q["us"].get(name, 0.0)
        cell[3] += int(name in d["us"] and name in q["us"] and q["us"][name] > d["us"][name])
    return out


def render(raw: dict) -> str:
    lines = ["## What bounds batch 1: OpenVINO int8 against OpenVINO's bf16 default, layer by layer", "",
             "`.venv/bin/python benchmarks/layers.py` (raw: `benchmarks/results/layers.json`): the shared ImageNet-trained "
             f"models exported by keras-turbo to OpenVINO IR, int8 calibrated on the {raw['calibration']} seeded photos "
             f"(NNCF, as `keras-turbo convert --to openvino --quantize int8`), top-1 on the {raw['judged']} judged photos "
             f"(at batch 32). Times: the median of {ROUNDS} alternating rounds in one process (each round's median call); "
             "the headline's fresh-process rounds are the figures to quote, these are for comparing paths. Per-layer "
             "times: OpenVINO's own counters (`PERF_COUNT`), the mean over the profiled calls.", "",
             f"Machine: {machine_line(raw['machine'])}.", "",
             "| model | batch | path | p50 ms | OpenVINO's default / this | top-1 |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    labels = dict(PATHS)
    for m in raw["models"].values():
        for batch, b in m["batches"].items():
            for k, p50 in b["p50"].items():
                acc = f"{100 * b['top1'][k]:.1f}%" if b.get("top1") else ""
                lines.append(f"| {m['title']} | {batch} | {labels[k]} | {p50:.3g} | {b['p50']['default'] / p50:.2f}x | {acc} |")
    lines += ["", "Per layer (microseconds per call, summed by kind; \"slower\": layers int8 runs slower than bf16):", "",
              "| model | batch | kind of layer | layers | bf16 default us | int8 us | int8 / bf16 | slower in int8 |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for m in raw["models"].values():
        for batch, b in m["batches"].items():
            kinds = _by_kind(b["layers"])
            for k, (n, d, q, slower) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
                lines.append(f"| {m['title']} | {batch} | {k} | {n} | {d:.0f} | {q:.0f} | {q / d if d else float('nan'):.2f} | {slower} |")
            d, q = (sum(b["layers"][p]["us"].values()) for p in ("default", "int8"))
            lines.append(f"| {m['title']} | {batch} | **all layers** | | **{d:.0f}** | **{q:.0f}** | **{q / d:.2f}** | |")
    lines += ["", *notes(raw)]
    return "\n".join(lines)


def notes(raw: dict) -> list[str]:
    """The reading of the tables, from the figures themselves."""
    out = []
    for m in raw["models"].values():
        b = m["batches"]
        share = {n: sum(x["layers"]["int8"]["us"].values()) / sum(x["layers"]["default"]["us"].values()) for n, x in b.items()}
        ratio = {n: {k: x["p50"]["default"] / v for k, v in x["p50"].items()} for n, x in b.items()}
        stem = _by_kind(b["1"]["layers"]).get("stem convolution (3 input channels)", [0, 0.0, 0.0, 0])
        out.append(f"- {m['title']}: int8's layers take {100 * share['1']:.0f}% of bf16's time at batch 1 and "
                   f"{100 * share['32']:.0f}% at batch 32 on this CPU ({cpu_kind(raw['machine'])}): layer for layer "
                   f"{1 / share['1']:.2f}x and {1 / share['32']:.2f}x faster; plain int8's whole call runs at "
                   f"{ratio['1']['int8']:.2f}x and {ratio['32']['int8']:.2f}x OpenVINO's default compiled for the same "
                   f"batch, and the headline's peer, which keeps the exported dynamic batch, runs at "
                   f"{ratio['1']['default-dynamic']:.2f}x and {ratio['32']['default-dynamic']:.2f}x of it. At batch 1 the "
                   f"stem convolution ({m['stem']}) runs {stem[2]:.0f} us in int8 against {stem[1]:.0f} us in bf16: "
                   f"kept float it gives {ratio['1']['int8-stem']:.2f}x at batch 1 and {ratio['32']['int8-stem']:.2f}x at "
                   f"batch 32 (optimize tries it as `openvino-bf16 int8 mixed` and keeps whichever it times faster); a "
                   f"bf16 hint on the int8 IR alone {ratio['1']['int8-bf16']:.2f}x and {ratio['32']['int8-bf16']:.2f}x.")
    out.append("- So at batch 1 the ratio to OpenVINO's default is bounded by how much faster OpenVINO's int8 kernels "
               "are than its bf16 AMX kernels on these small layers (the 1x1 and depthwise convolutions of a 7x7 to "
               "112x112 map), not by layers keras-turbo leaves float: every layer but the stem is int8. "
               "At batch 32 the same layers are larger and int8's arithmetic counts for more.")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if rendered_again(argv, "layers", RAW, render):
        return 0
    from keras_turbo.machine import facts

    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    x, y, cal, judged = imagenet_split()
    raw = {"machine": facts(), "calibration": len(cal), "judged": len(judged),
           "models": {k: measure(k, x, y, cal, judged, log) for k in MODELS}}
    publish("layers", RAW, raw, render)
    log("wrote BENCHMARKS.md \"layers\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
