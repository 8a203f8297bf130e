"""Run the recommended artifact without keras-turbo: the runtime it needs (and the version it was
timed on), the exact settings it was timed with (`Predictor.settings`), and a short Python file
in that runtime's own API that serves it the same way.

optimize writes these into best/ (README.md and predict.py) and the report shows the same. Each
predict.py defines `predict(feeds)`: {input name: batch} -> the outputs in order (output_0, ...),
and run as a script it serves one batch of zeros. A test runs each family's file in a virtual
environment that holds only that runtime and compares its outputs with keras-turbo's.

One writer per runtime family, written out by hand (WRITERS, by the module the entry requires).
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from keras_turbo.errors import KerasTurboError
from keras_turbo.runtimes import get_backend
from keras_turbo.runtimes.base import Predictor

#: the distributions a family's predict.py imports (pip names), by the module its entries require
DISTRIBUTIONS = {"ai_edge_litert": ("ai-edge-litert", "numpy"), "onnxruntime": ("onnxruntime", "numpy"),
                 "openvino": ("openvino", "numpy"), "tensorflow": ("tensorflow", "keras", "numpy"),
                 "jax": ("keras", "jax", "numpy")}
#: what each family is called in prose
RUNTIME_NAMES = {"ai_edge_litert": "LiteRT", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
                 "tensorflow": "TensorFlow", "jax": "Keras 3 on JAX"}


@dataclass(frozen=True)
class Deployment:
    """How best/ runs without keras-turbo.

    Attributes:
        variant: the recommended variant's name.
        backend: the runtime entry it was timed on ("litert", "openvino-bf16", ...).
        runtime: the runtime in prose ("LiteRT").
        artifact: the artifact's file (or folder) name in best/.
        requirements: pip requirements of predict.py, at the versions it was timed with.
        settings: `Predictor.settings()` of the predictor that was timed (threads, options, config).
        batch_size: the batch size it was timed at.
        inputs: (name, shape, dtype) per input, in the order predict.py lists them.
        outputs: the output names, in the order predict returns them.
        script: predict.py.
    """

    variant: str
    backend: str
    runtime: str
    artifact: str
    requirements: tuple[str, ...]
    settings: dict
    batch_size: int
    inputs: tuple[tuple[str, tuple, str], ...]
    outputs: tuple[str, ...]
    script: str

    def to_dict(self) -> dict:
        """JSON's own types (lists, not tuples): what results.json holds, read back equal."""
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, d: dict) -> "Deployment":
        return cls(**{**d, "requirements": tuple(d["requirements"]), "outputs": tuple(d["outputs"]),
                      "inputs": tuple((n, tuple(s), t) for n, s, t in d["inputs"])})


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(predictor: Predictor, variant: str, artifact: str, batch_size: int) -> Deployment:
    """The Deployment of `predictor` (opened on the artifact, with the settings it was timed with).

    Raises:
        KerasTurboError: the runtime has no writer here (none does not; a new runtime needs one).
    """
    b = get_backend(predictor.backend)
    writer = WRITERS.get(b.requires)
    if writer is None:
        raise KerasTurboError(f"{predictor.backend}: no deployment writer for its runtime ({b.requires})")
    settings = predictor.settings()
    inputs = tuple((t.name, tuple(t.shape), t.dtype) for t in predictor.inputs)
    outputs = tuple(t.name for t in predictor.outputs)
    reqs = tuple(f"{d}=={_version(d)}" if _version(d) else d for d in DISTRIBUTIONS[b.requires])
    head = (f'"""{artifact} on {RUNTIME_NAMES[b.requires]} as keras-turbo timed it ({predictor.backend}, '
            f'batch {batch_size}): {", ".join(reqs)}.\n\n'
            "predict({input name: batch}) returns the outputs in order; run as a script, it serves one batch of zeros.\n"
            '"""\n')
    body = writer(artifact, settings, inputs, outputs)
    pre = settings.get("preprocessing")
    if pre:
        body = _with_preprocessing(body, pre, inputs)
        if not any(r.split("==")[0] == "tensorflow" for r in reqs):
            reqs += (f"tensorflow=={_version('tensorflow')}",)
    script = head + body + _main(inputs, batch_size)
    return Deployment(variant, predictor.backend, RUNTIME_NAMES[b.requires], artifact, reqs, settings, batch_size,
                      inputs, outputs, script)


def _py(value) -> str:
    """A Python literal of a JSON-like value."""
    return repr(json.loads(json.dumps(value)))


def _litert(artifact: str, s: dict, inputs, outputs) -> str:
    q_in, q_out = s.get("input_quantization") or {}, s.get("output_quantization") or {}
    streams, one = (s["streams"], s["per_stream"]) if "streams" in s else (None, s)
    lines = ["from pathlib import Path", "", "import numpy as np", "from ai_edge_litert.interpreter import Interpreter", ""]
    if streams:
        lines.insert(0, "from concurrent.futures import ThreadPoolExecutor")
    lines += ['HERE = Path(__file__).resolve().parent', f"OUTPUTS = {list(outputs)!r}"]
    one = dict(one)
    q_in, q_out = one.get("input_quantization") or q_in, one.get("output_quantization") or q_out
    if q_in or q_out:
        lines += ["# integer inputs and outputs: (scale, zero point, dtype) of each, as the converter stored them",
                  f"QUANTIZED_INPUTS = {_py(q_in)}", f"QUANTIZED_OUTPUTS = {_py(q_out)}"]
    lines += ["", "", "def _open():",
              f'    """An interpreter with {one["num_threads"]} thread(s) and its default XNNPACK delegate."""',
              f'    interpreter = Interpreter(model_path=str(HERE / {artifact!r}), num_threads={one["num_threads"]!r})',
              "    return interpreter.get_signature_runner()  # resizes to each call's batch", "", ""]
    if q_in or q_out:
        lines += ["def _quantize(x, scale, zero, dtype):", "    info = np.iinfo(dtype)",
                  "    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)", "", "",
                  "def _run(runner, feeds):",
                  "    feeds = {n: _quantize(x, *QUANTIZED_INPUTS[n]) if n in QUANTIZED_INPUTS else x for n, x in feeds.items()}",
                  "    out = runner(**feeds)",
                  "    return [(out[n].astype(np.float32) - QUANTIZED_OUTPUTS[n][1]) * QUANTIZED_OUTPUTS[n][0]",
                  "            if n in QUANTIZED_OUTPUTS else out[n] for n in OUTPUTS]"]
    else:
        lines += ["def _run(runner, feeds):", "    out = runner(**feeds)", "    return [out[n] for n in OUTPUTS]"]
    return "\n".join(lines) + "\n" + _serve(streams)


def _serve(streams: int | None) -> str:
    """predict(): one session, or `streams` of them serving the slices of a batch in parallel."""
    if not streams:
        return "\n\nsession = _open()\n\n\ndef predict(feeds):\n    return _run(session, feeds)\n"
    return (f"\n\nSTREAMS = {streams}  # parallel sessions, one thread each: a batch is cut into one slice per session\n"
            "sessions = [_open() for _ in range(STREAMS)]\npool = ThreadPoolExecutor(STREAMS)\n\n\n"
            "def predict(feeds):\n"
            "    n = len(next(iter(feeds.values())))\n"
            "    size = -(-n // min(STREAMS, n))\n"
            "    jobs = [pool.submit(_run, s, {k: x[a:a + size] for k, x in feeds.items()})\n"
            "            for s, a in zip(sessions, range(0, n, size))]\n"
            "    parts = [j.result() for j in jobs]\n"
            "    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]\n")


def _onnxruntime(artifact: str, s: dict, inputs, outputs) -> str:
    streams, one = (s["streams"], s["per_stream"]) if "streams" in s else (None, s)
    lines = ["from pathlib import Path", "", "import numpy as np", "import onnxruntime as ort", ""]
    if streams:
        lines.insert(0, "from concurrent.futures import ThreadPoolExecutor")
    lines += ["HERE = Path(__file__).resolve().parent", f"OUTPUTS = {list(outputs)!r}", "", "", "def _open():",
              "    options = ort.SessionOptions()",
              f"    options.graph_optimization_level = ort.GraphOptimizationLevel.{one['graph_optimization_level']}",
              f"    options.execution_mode = ort.ExecutionMode.{one['execution_mode']}"]
    for k in ("intra_op_num_threads", "inter_op_num_threads"):
        if k in one:
            lines.append(f"    options.{k} = {one[k]!r}")
    lines += [f"    return ort.InferenceSession(str(HERE / {artifact!r}), options, providers={one['providers']!r})", "", "",
              "def _run(session, feeds):", "    return session.run(OUTPUTS, feeds)"]
    return "\n".join(lines) + "\n" + _serve(streams)


def _openvino(artifact: str, s: dict, inputs, outputs) -> str:
    requests = s.get("requests")
    lines = ["from pathlib import Path", "", "import numpy as np", "import openvino as ov", "",
             "HERE = Path(__file__).resolve().parent", f"OUTPUTS = {list(outputs)!r}",
             f"CONFIG = {_py(s['config'])}", "core = ov.Core()", f"model = core.read_model(str(HERE / {artifact!r}))",
             "compiled = {}  # batch size -> compiled model: keras-turbo compiles each batch size as a static shape",
             "", "", "def _compiled(batch):", "    if batch not in compiled:", "        m = model.clone()",
             "        dynamic = {p: [batch] + [d.get_length() if d.is_static else -1 for d in list(p.get_partial_shape())[1:]]",
             "                   for p in m.inputs if p.get_partial_shape().rank.is_static and p.get_partial_shape()[0].is_dynamic}",
             "        if dynamic:", "            m.reshape(dynamic)",
             f"        c = core.compile_model(m, {s['device']!r}, CONFIG)",
             (f"        compiled[batch] = [c.create_infer_request() for _ in range({requests})]  # the parallel requests"
              if requests else "        compiled[batch] = c.create_infer_request()"),
             "    return compiled[batch]", "", ""]
    if not requests:
        lines += ["def predict(feeds):", "    request = _compiled(len(next(iter(feeds.values()))))",
                  "    request.infer(feeds)", "    return [request.get_tensor(n).data.copy() for n in OUTPUTS]"]
    else:
        lines += [f"REQUESTS = {requests}  # OpenVINO's own number under the THROUGHPUT hint: a batch is cut into one slice each",
                  "", "", "def predict(feeds):", "    n = len(next(iter(feeds.values())))",
                  "    size = -(-n // min(REQUESTS, n))", "    started = []",
                  "    for slot, a in enumerate(range(0, n, size)):",
                  "        part = {k: x[a:a + size] for k, x in feeds.items()}",
                  "        request = _compiled(len(next(iter(part.values()))))[slot]",
                  "        request.start_async(part)", "        started.append(request)",
                  "    outs = []", "    for request in started:", "        request.wait()",
                  "        outs.append([request.get_tensor(k).data.copy() for k in OUTPUTS])",
                  "    return [np.concatenate([o[i] for o in outs]) for i in range(len(OUTPUTS))]"]
    return "\n".join(lines) + "\n"


def _tensorflow(artifact: str, s: dict, inputs, outputs) -> str:
    threads = s.get("intra_op_parallelism_threads")
    lines = ["from pathlib import Path", "", "import keras", "import numpy as np", "import tensorflow as tf", "",
             "HERE = Path(__file__).resolve().parent"]
    if threads:
        lines += [f"tf.config.threading.set_intra_op_parallelism_threads({threads})",
                  f"tf.config.threading.set_inter_op_parallelism_threads({1 if threads == 1 else 2})"]
    if s.get("auto_mixed_precision_onednn_bfloat16"):
        lines += ["# oneDNN's bf16 auto-mixed precision: convolutions and matrix products in bfloat16",
                  'tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})']
    if artifact.endswith((".keras", ".h5", ".hdf5")):
        lines += [f"model = keras.saving.load_model(str(HERE / {artifact!r}))  # custom layers: pass custom_objects=",
                  "ORDER = [t.name.split(':')[0] for t in model.inputs]  # Keras' own input order"]
        call = s.get("call", "tf.function")
        if call == "tf.function":
            lines += ["serve = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False),",
                      f"                    jit_compile={bool(s.get('jit_compile'))!r}, reduce_retracing=True)"]
        elif call.startswith("model.predict"):
            lines += ["serve = lambda *xs: model.predict(list(xs) if len(xs) > 1 else xs[0], batch_size=len(xs[0]), verbose=0)  # noqa: E731"]
        else:
            lines += ["serve = lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False)  # eager  # noqa: E731"]
        lines += ["", "", "def predict(feeds):",
                  f"    with tf.device({s.get('device', '/CPU:0')!r}):",
                  "        out = serve(*[tf.constant(feeds[n]) for n in ORDER])",
                  "    return [np.asarray(o) for o in tf.nest.flatten(out)]  # a dict of outputs: keys sorted, as Keras does"]
    else:  # a SavedModel: its serving signature
        lines += [f"fn = tf.saved_model.load(str(HERE / {artifact!r})).signatures['serving_default']", "", "",
                  "def predict(feeds):", "    out = fn(**{n: tf.constant(x) for n, x in feeds.items()})",
                  "    return [np.asarray(out[k]) for k in sorted(out)]"]
    return "\n".join(lines) + "\n"


def _keras_jax(artifact: str, s: dict, inputs, outputs) -> str:
    policy = s.get("dtype_policy") or "float32"
    lines = ["import os", "from pathlib import Path", "", 'os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported',
             "", "import jax  # noqa: E402", "import keras  # noqa: E402", "import numpy as np  # noqa: E402", "",
             "HERE = Path(__file__).resolve().parent"]
    if s.get("jax_default_matmul_precision"):
        lines.append(f'jax.config.update("jax_default_matmul_precision", {s["jax_default_matmul_precision"]!r})')
    lines.append(f"model = keras.saving.load_model(str(HERE / {artifact!r}))")
    if policy != "float32":
        lines += [f"# rebuilt under Keras' {policy} policy (each layer's float32 policy in the config replaced)",
                  "def _swap(node):", "    if isinstance(node, dict):",
                  '        if node.get("class_name") == "DTypePolicy" and node.get("config", {}).get("name") == "float32":',
                  f'            return {{**node, "config": {{**node["config"], "name": {policy!r}}}}}',
                  "        return {k: _swap(v) for k, v in node.items()}",
                  "    return [_swap(v) for v in node] if isinstance(node, list) else node", "", "",
                  "weights = model.get_weights()",
                  "model = keras.models.model_from_json(__import__('json').dumps(_swap(__import__('json').loads(model.to_json()))))",
                  "model.set_weights(weights)"]
    lines += ["ORDER = [t.name.split(':')[0] for t in model.inputs]", "", "",
              "def _serve(trainable, non_trainable, xs):",
              "    out, _ = model.stateless_call(trainable, non_trainable, xs if len(xs) > 1 else xs[0], training=False)",
              '    return [o.astype("float32") for o in jax.tree_util.tree_leaves(out)]', "", "",
              "serve = jax.jit(_serve)", "trainable = [v.value for v in model.trainable_variables]",
              "non_trainable = [v.value for v in model.non_trainable_variables]", "", "",
              "def predict(feeds):", "    return [np.asarray(o) for o in serve(trainable, non_trainable, [feeds[n] for n in ORDER])]"]
    return "\n".join(lines) + "\n"


def _with_preprocessing(body: str, pre: dict, inputs) -> str:
    """A split text model: its string inputs through the preprocessing SavedModel (TensorFlow),
    then the core on its runtime, as runtimes/split.py serves it."""
    return body.replace("\ndef predict(feeds):", "\ndef _core_predict(feeds):") + (
        "\n\nimport tensorflow as tf  # noqa: E402  the string preprocessing runs in TensorFlow\n\n"
        f"preprocess = tf.saved_model.load(str(HERE / {pre['savedmodel']!r})).signatures['serving_default']\n"
        f"STRINGS, SEAMS, NUMERIC = {pre['strings']!r}, {pre['seams']!r}, {pre['numeric']!r}\n\n\n"
        "def predict(feeds):\n"
        "    seam = preprocess(**{n: tf.constant(feeds[n]) for n in STRINGS})\n"
        "    core = {n: np.asarray(seam[f'output_{i}']) for i, n in enumerate(SEAMS)}\n"
        "    core.update({n: feeds[n] for n in NUMERIC})\n"
        "    return _core_predict(core)\n")


def _main(inputs, batch_size: int) -> str:
    zeros = ", ".join(f"{n!r}: np.zeros(({batch_size}, {', '.join(str(d or 1) for d in s[1:])}), "
                      f"{'np.bytes_' if t == 'string' else 'np.' + t})" for n, s, t in inputs)
    return ("\n\nif __name__ == \"__main__\":\n"
            f"    outputs = predict({{{zeros}}})\n"
            "    print([o.shape for o in outputs])\n")


WRITERS = {"ai_edge_litert": _litert, "onnxruntime": _onnxruntime, "openvino": _openvino, "tensorflow": _tensorflow,
           "jax": _keras_jax}


def readme(d: Deployment, manifest: dict) -> str:
    """best/README.md: what the artifact is, what it runs on, the exact settings, and predict.py."""
    lat = (manifest.get("latency_ms") or {}).get("p50")
    lines = [f"# `{d.variant}`: the variant keras-turbo recommends", "",
             f"- Artifact: `{d.artifact}`, on {d.runtime} (`{d.backend}`)"
             + (f", p50 {lat:.4g} ms at batch {d.batch_size} on the machine it was timed on" if lat else ""),
             f"- Needs: `pip install {' '.join(d.requirements)}` (the versions it was timed with)",
             "- Inputs: " + ", ".join(f"`{n}` {tuple(s)} {t}" for n, s, t in d.inputs),
             "- Outputs, in order: " + ", ".join(f"`{n}`" for n in d.outputs), "",
             "## The settings it was timed with", "", "```json", json.dumps(d.settings, indent=2, default=str), "```", "",
             "## Run it without keras-turbo", "",
             f"`predict.py` (below, and beside this file) serves it in {d.runtime}'s own API with those settings:", "",
             "```python", d.script.rstrip(), "```", "",
             "## Or with keras-turbo", "", "```python", "import keras_turbo", "",
             'model = keras_turbo.load("best")  # this folder: the runtime and threads of manifest.json', "```", ""]
    return "\n".join(lines)


def write(folder: Path, d: Deployment, manifest: dict) -> None:
    """README.md and predict.py into `folder` (best/, while it is being built)."""
    (folder / "predict.py").write_text(d.script)
    (folder / "README.md").write_text(readme(d, manifest))


__all__ = ["DISTRIBUTIONS", "Deployment", "WRITERS", "describe", "readme", "write"]
