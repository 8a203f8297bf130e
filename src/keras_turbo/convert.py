"""`keras-turbo convert`: a Keras model to a LiteRT, ONNX or OpenVINO artifact, in float or
quantized, with chosen layers kept in float.

| --to      | runs on      | --quantize                              |
| --------- | ------------ | --------------------------------------- |
| litert    | litert       | none, fp16, dynamic, int8, int16x8      |
| onnx      | onnxruntime  | none, dynamic, int8 (static QDQ)        |
| openvino  | openvino     | none, fp16, int8 (NNCF)                 |
| keras     | tf-function  | int8 (Keras' model.quantize, Dense-like layers only) |

The targets are the runtime registry's families (runtimes.FAMILIES): their exporters, suffixes,
modes and runtimes.

Full int8 and int16x8 are calibrated on samples drawn from the user's data with a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from keras_turbo import _tf, cache, exporters
from keras_turbo.config import TechniqueConfig
from keras_turbo.data import Dataset, check, load_data
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.extras import require
from keras_turbo.exporters import QuantizeSettings, textsplit
from keras_turbo.exporters import litert as litert_exp
from keras_turbo.exporters import openvino as openvino_exp
from keras_turbo.model import (
    artifact_files,
    artifact_size,
    as_ref,
    io_specs,
    load_keras,
    scales_inputs,
)
from keras_turbo.model.graph import leaf_layers
from keras_turbo.runtimes import FAMILIES, Family, load

CALIBRATED = ("int8", "int16x8")  # modes that need calibration data (Keras' int8 does not)
MIN_TRUSTED_CALIBRATION = 100
QUANTIZABLE = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense", "EinsumDense")


@dataclass(frozen=True)
class ConvertConfig(TechniqueConfig):
    """What to convert to and how to quantize.

    Attributes:
        to: "litert", "onnx", "openvino" or "keras".
        quantize: "none", "fp16", "dynamic", "int8" or "int16x8" (what each target has: runtimes.FAMILIES).
        int8_io: LiteRT full int8 with int8 input and output tensors.
        calibration_size: samples drawn (seed `seed`) from the calibration data.
        keep_float: Keras layer names left in float (mixed precision).
        per_channel: per-channel weight scales (ONNX Runtime; LiteRT and NNCF always are).
        sparse: LiteRT only: store mostly-zero (pruned) weights sparsely (smaller file; see
            exporters.litert.export_quantized).
    """

    to: str = "litert"
    quantize: str = "none"
    int8_io: bool = False
    calibration_size: int = 300
    seed: int = 0
    keep_float: tuple[str, ...] = ()
    per_channel: bool = True
    sparse: bool = False

    def __post_init__(self):
        if self.to not in FAMILIES:
            raise bad_param("to", f"one of {', '.join(FAMILIES)}", self.to)
        modes = FAMILIES[self.to].modes
        if self.quantize not in modes:
            raise KerasTurboError(f"--quantize {self.quantize} is not available for --to {self.to} (it has: {', '.join(modes)})")
        if self.int8_io and (self.to != "litert" or self.quantize != "int8"):
            raise KerasTurboError("--int8-io applies to --to litert --quantize int8 only")
        if self.sparse and self.to != "litert":
            raise KerasTurboError(f"--sparse applies to --to litert (LiteRT's sparse weight encoding), not --to {self.to}")
        if self.sparse and self.keep_float:
            raise KerasTurboError("--sparse cannot be combined with layers kept in float")
        if self.int8_io and self.keep_float:
            raise KerasTurboError("--int8-io cannot be combined with layers kept in float (LiteRT's selective quantization keeps float I/O)")
        if self.keep_float and self.quantize not in ("int8", "int16x8", "dynamic"):
            raise KerasTurboError(f"keeping layers in float applies to int8, int16x8 and dynamic quantization, not {self.quantize}")
        if not isinstance(self.calibration_size, int) or self.calibration_size < 1:
            raise bad_param("calibration_size", "an integer >= 1", self.calibration_size)
        object.__setattr__(self, "keep_float", tuple(self.keep_float))

    @property
    def needs_calibration(self) -> bool:
        return self.quantize in CALIBRATED and self.to != "keras"

    def settings(self) -> QuantizeSettings:
        """What the family's exporter is told (exporters.QuantizeSettings)."""
        return QuantizeSettings(self.quantize, self.int8_io, self.per_channel, self.sparse)


@dataclass
class ConvertResult:
    """The artifact and how it was made."""

    path: Path
    format: str
    backend: str
    config: ConvertConfig
    model_bytes: int
    calibration_samples: int = 0
    keep_float_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def load(self, threads: int | None = None, batch_size: int | None = None):
        """Open the artifact on its runtime."""
        return load(self.path, backend=self.backend, threads=threads, batch_size=batch_size)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "backend": self.backend, "config": self.config.to_dict(),
                "model_bytes": self.model_bytes, "calibration_samples": self.calibration_samples,
                "keep_float_nodes": self.keep_float_nodes, "warnings": self.warnings}


# ------------------------------------------------------------------ helpers

def layer_pattern(layer: str) -> re.Pattern:
    """Converted graphs name ops after the Keras layers they came from, as a path component
    with an optional `_N` suffix from re-tracing: `model_1/conv1_1/convolution`."""
    return re.compile(rf"(^|[/;]){re.escape(layer)}(_\d+)?(/|;|$)")


def nodes_for_layers(nodes: Sequence[tuple[str, str]], layers: Sequence[str]) -> dict[str, list[str]]:
    """For each layer, the op names in a converted graph whose text names that layer."""
    return {layer: [name for name, text in nodes if layer_pattern(layer).search(text)] for layer in layers}


def layer_nodes(ref, target: Family, model, layers: Sequence[str], cache_dir=None) -> dict[str, list[str]]:
    """Map Keras layer names to the ops of the float artifact that quantization acts on.

    By name where the converter kept TensorFlow's names (LiteRT, ONNX). A converter that renames
    them (OpenVINO's TensorFlow front end renames convolutions: its exporter's `KERAS_OPS` says
    which op each Keras kind becomes) gets a layer not found by name matched to the weighted op of
    the same type and weight size, the k-th such layer to the k-th such op in graph order.
    """
    nodes = graph_nodes(ref, target, cache_dir)
    found = nodes_for_layers(nodes, layers)
    if not target.exporter.KERAS_OPS:
        return found
    by_key: dict[str, list[str]] = {}
    for name, text in nodes:
        m = re.search(r" #(\w+):(\d+)$", text)
        if m:
            by_key.setdefault(f"{m.group(1)}:{m.group(2)}", []).append(name)
    seen: dict[str, int] = {}
    for layer in layers:
        obj = model.get_layer(layer)
        kind = target.exporter.KERAS_OPS.get(type(obj).__name__)
        if kind is None:
            continue
        key = f"{kind}:{int(np.prod(obj.kernel.shape))}"
        k = seen.get(key, 0)
        seen[key] = k + 1
        if not found[layer] and k < len(by_key.get(key, [])):
            found[layer] = [by_key[key][k]]
    return found


def quantizable_layers(model) -> list[str]:
    """Names of the layers quantization acts on (convolutions and dense layers), in graph order."""
    return [layer.name for layer in leaf_layers(model) if type(layer).__name__ in QUANTIZABLE]


def stem_conv(model) -> str | None:
    """The image stem's name: the model's first layer with weights, where it is a plain 2-D
    convolution over at most 4 input channels (grey, RGB, RGBA); None otherwise. So few input
    channels fill a CPU's int8 matrix tiles worst: on the ImageNet-trained MobileNetV2 OpenVINO
    ran its stem as int8 in 159 us against 138 us as bf16 at batch 1 on an AMX Xeon (MobileNet
    v1 0.75: 239 against 135; benchmarks/layers.py), which is why optimize also tries int8 with
    the stem left float."""
    for layer in leaf_layers(model):
        if not layer.weights:
            continue
        kernel = getattr(layer, "kernel", None)
        if type(layer).__name__ == "Conv2D" and kernel is not None and len(kernel.shape) == 4 and kernel.shape[2] <= 4:
            return layer.name
        return None
    return None


def calibration_samples(ds, names: Sequence[str], size: int, seed: int) -> list[dict[str, np.ndarray]]:
    """One dict {input name: batch of 1} per sample, `size` drawn with `seed`."""
    sub = ds.take(size, seed)
    return [{n: a[i:i + 1] for n, a in zip(names, sub.x)} for i in range(len(sub))]


def float_artifact(ref, target: Family, cache_dir=None):
    """The float artifact of `target`'s family that every quantized variant starts from (cached)."""
    return exporters.export(ref, target.artifact, cache_dir)


def graph_nodes(ref, target: Family, cache_dir=None) -> list[tuple[str, str]]:
    """(op name, text naming its layer) for the float artifact, which quantized variants share."""
    return target.exporter.node_names(float_artifact(ref, target, cache_dir).path)


def op_graph(ref, target: Family, cache_dir=None) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """(op name, op type, input tensors, output tensors) of the float artifact's graph, where op
    names are the ones `keep_float_nodes` takes (see each exporter's `op_graph`)."""
    return target.exporter.op_graph(float_artifact(ref, target, cache_dir).path)


def carry_nodes(graph: Sequence[tuple[str, str, Sequence[str], Sequence[str]]], kept: Sequence[str],
                weighted: Sequence[str]) -> list[str]:
    """The parameter-free ops that carry a float op's output to another float op.

    Keeping two weighted ops float is not enough when an activation outlier passes between them
    through pooling, padding, a reshape, an activation, `Add` or `Concatenate`: the op in between
    stays int8 and quantizes the outlier anyway. This finds every op on some path from a kept op
    to a kept op whose ops in between carry no weights (types in `weighted` do), so that the
    whole path stays float. A path that ends at an int8 weighted op is left alone: that op
    quantizes its input whatever comes before.

    Args:
        graph: (op name, op type, input tensor names, output tensor names) per op.
        kept: names of the ops kept float.
        weighted: op types that carry weights (the path ends there).

    Returns:
        Names of the carrying ops, in graph order, not including `kept` themselves.

    Example:
        >>> g = [("c1", "CONV_2D", ("x",), ("a",)), ("pool", "MAX_POOL_2D", ("a",), ("b",)),
        ...      ("c2", "CONV_2D", ("b",), ("c",))]
        >>> carry_nodes(g, ["c1", "c2"], ["CONV_2D"])
        ['pool']
    """
    kept = set(kept)
    producer = {t: op[0] for op in graph for t in op[3]}
    consumers: dict[str, list[str]] = {}
    for name, _, ins, _ in graph:
        for t in ins:
            if t in producer:
                consumers.setdefault(producer[t], []).append(name)
    parents = {name: [producer[t] for t in ins if t in producer] for name, _, ins, _ in graph}
    free = {name for name, kind, _, _ in graph if kind not in weighted and name not in kept}

    def reach(start, step) -> set[str]:
        seen, todo = set(), [n for k in start for n in step.get(k, [])]
        while todo:
            n = todo.pop()
            if n in free and n not in seen:
                seen.add(n)
                todo.extend(step.get(n, []))
        return seen

    between = reach(kept, consumers) & reach(kept, parents)
    return [name for name, _, _, _ in graph if name in between]


def with_carriers(ref, target: Family, keep_nodes: Sequence[str], cache_dir=None) -> list[str]:
    """`keep_nodes` and the parameter-free ops between them (`carry_nodes`)."""
    if not keep_nodes or target.exporter is None:
        return list(keep_nodes)
    extra = carry_nodes(op_graph(ref, target, cache_dir), keep_nodes, target.exporter.WEIGHTED_OPS)
    return list(keep_nodes) + [n for n in extra if n not in set(keep_nodes)]


#: bumped when a mixed artifact is made another way (2: OpenVINO's derived from the full int8 model,
#: LiteRT's from a calibrated model built once)
MIXED_METHOD = 2
#: False: every mixed int8 variant is quantized again from the float model, the way before
#: MIXED_METHOD 2 (benchmarks/repair_cost.py --requantize times the two ways)
DERIVE_MIXED = True


def _digest(cfg: ConvertConfig, samples, keep_nodes) -> str:
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    if keep_nodes:
        h.update(f"mixed-{MIXED_METHOD if DERIVE_MIXED else 1}".encode())
    h.update(json.dumps(sorted(keep_nodes or [])).encode())
    for s in samples or []:
        for k in sorted(s):
            h.update(np.ascontiguousarray(s[k]).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ the public function

def convert(model, config: ConvertConfig | None = None, calibration=None, output: str | Path | None = None, *,
            keep_float_nodes: Sequence[str] | None = None, unsafe: bool = False, cache_dir=None) -> ConvertResult:
    """Convert a Keras-family model to a runtime's artifact, optionally quantized.

    Args:
        model: a model path (.keras, .h5, SavedModel) or a keras.Model. It is never changed.
        config: target, quantization mode and settings (`ConvertConfig`).
        calibration: a DATA spec or `Dataset` for full int8 / int16x8 (required for those).
        output: where to write the artifact; default a cache entry keyed by model, settings and data.
        keep_float_nodes: op names (of the float artifact's graph) to keep in float; overrides the
            layer names in `config.keep_float` (used by the per-layer sensitivity analysis).

    Returns:
        A `ConvertResult` (path, runtime, size, calibration sample count, warnings).

    Raises:
        KerasTurboError: an artifact given as input, a mode the target lacks, missing, empty or
            ill-fitting calibration data.

    Example:
        >>> r = keras_turbo.convert("m.keras", ConvertConfig(to="litert", quantize="int8"), "builtin:digits:train")
        >>> r.load()(x)
    """
    cfg = config or ConvertConfig()
    ref = as_ref(model, unsafe=unsafe, cache_dir=cache_dir)
    if not ref.is_keras:
        raise KerasTurboError(f"{ref.path}: convert starts from a Keras model (.keras, .h5, SavedModel), not a .{ref.format} artifact")
    target = FAMILIES[cfg.to]
    # Before any cache lookup: an artifact converted earlier still needs its runtime here.
    require(f"export to {target.artifact}", *exporters.NEEDS.get(target.artifact, ()))
    notes: list[str] = []

    samples = _samples(ref, cfg, calibration, notes) if cfg.needs_calibration else None
    keep_nodes = list(keep_float_nodes) if keep_float_nodes is not None else []
    if keep_float_nodes is None and cfg.keep_float:
        keep_nodes += _layer_keep_nodes(ref, target, cfg.keep_float, notes, cache_dir)
    # An outlier between two float layers passes through the ops that connect them: those stay
    # float too (a no-op where the kept layers feed each other directly).
    keep_nodes = with_carriers(ref, target, keep_nodes, cache_dir)

    if output is None:
        # Keyed by content and --unsafe (see exporters.export); built once under the entry's lock.
        out = _cached(_entry(ref, cfg, samples, keep_nodes, cache_dir), f"model{target.suffix}",
                      lambda path: _build(ref, cfg, target, samples, keep_nodes, path, cache_dir))
        return ConvertResult(out, target.artifact, target.runtime, cfg, _size(out), len(samples or []), keep_nodes, notes)
    out = Path(output)
    if out.suffix != target.suffix:
        raise KerasTurboError(f"-o {out}: a {cfg.to} artifact needs the suffix {target.suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)

    tmpdir = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        tmp = tmpdir / out.name
        _build(ref, cfg, target, samples, keep_nodes, tmp, cache_dir)
        for f in tmpdir.iterdir():  # OpenVINO writes .xml and .bin
            f.replace(out.parent / (out.stem + f.suffix) if f.stem == out.stem else out.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return ConvertResult(out, target.artifact, target.runtime, cfg, _size(out), len(samples or []), keep_nodes, notes)


def _entry(ref, cfg: ConvertConfig, samples, keep_nodes, cache_dir, kind: str | None = None) -> Path:
    """The export cache entry of `ref` converted with `cfg` on `samples`, `keep_nodes` float."""
    name = kind or f"{cfg.to}-{cfg.quantize}"
    return cache.root(cache_dir) / "exports" / ref.cache_key() / f"{name}-{_digest(cfg, samples, keep_nodes)}"


def _cached(entry: Path, name: str, make) -> Path:
    """`entry / name`, made by `make(path)` in a scratch folder under the entry's lock, then
    recorded and renamed into place: built once, whoever asks and however many ask at once."""
    out = entry / name
    with cache.lock(entry):
        if not (out.exists() and cache.intact(entry)):
            tmpdir = cache.scratch(entry)
            try:
                make(tmpdir / name)
                cache.publish(tmpdir, entry)
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _samples(ref, cfg: ConvertConfig, calibration, notes: list[str]) -> list:
    """The calibration samples (a warning, kept in `notes`, when too few to trust)."""
    if calibration is None:
        raise KerasTurboError(f"--quantize {cfg.quantize} needs calibration data (--calibration-data DATA)")
    inputs, _ = io_specs(ref)
    scales = scales_inputs(ref)
    ds = check(calibration, inputs, None, "--calibration-data", scales) if isinstance(calibration, Dataset) else \
        load_data(calibration, inputs, None, default_split="train", arg="--calibration-data", scales_inputs=scales)
    samples = calibration_samples(ds, [t.name for t in inputs], cfg.calibration_size, cfg.seed)
    if len(samples) < MIN_TRUSTED_CALIBRATION:
        msg = (f"--calibration-data: only {len(samples)} calibration samples; int8 ranges from fewer than "
               f"{MIN_TRUSTED_CALIBRATION} may not be trusted")
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
    return samples


def _layer_keep_nodes(ref, target: Family, layers, notes: list[str], cache_dir) -> list[str]:
    """The graph's ops of the Keras layers named to stay float (a warning for a name with none)."""
    nodes_out = []
    for layer, nodes in layer_nodes(ref, target, load_keras(ref), layers, cache_dir).items():
        if not nodes:
            msg = f"--keep-float {layer}: no op of that layer in the converted graph (unknown name, or fused away)"
            warnings.warn(msg, stacklevel=3)
            notes.append(msg)
        nodes_out.extend(nodes)
    return nodes_out


def _size(path: Path) -> int:
    return artifact_size(path)


def _build(ref, cfg: ConvertConfig, target: Family, samples, keep_nodes, out: Path, cache_dir) -> None:
    if target.exporter is None:  # Keras' own format: Keras quantizes
        _keras_quantize(ref, cfg, out)
        return
    split = textsplit.splits(ref)
    if DERIVE_MIXED and cfg.quantize == "int8" and keep_nodes and target.name in _DERIVE and not split:
        _DERIVE[target.name](ref, cfg, target, samples, keep_nodes, out, cache_dir)
        return
    if split:  # a split text model: its preprocessing goes with the core, and calibrates it
        pre = textsplit.sidecar(float_artifact(ref, target, cache_dir).path)
        textsplit.attach(pre, out)
        samples = textsplit.preprocess_samples(pre, samples, ref.unsafe) if samples else samples
    if cfg.quantize == "none" and not cfg.sparse:
        src = float_artifact(ref, target, cache_dir).path
        for f in artifact_files(src):  # OpenVINO's .bin with its .xml
            shutil.copy(f, out.with_suffix(f.suffix))
        return
    source = exporters.litert_source(ref, cache_dir) if target.exporter.QUANTIZES_FROM == "savedmodel" else \
        float_artifact(ref, target, cache_dir)
    target.exporter.quantize(source, out, cfg.settings(), samples, keep_nodes)


def _derive_openvino(ref, cfg: ConvertConfig, target: Family, samples, keep_nodes, out: Path, cache_dir) -> None:
    """OpenVINO's mixed int8 variant from the fully quantized model, built once and cached: the
    kept ops bypass their FakeQuantize and get their float weights back (exporters.openvino.keep_float)."""
    full = ConvertConfig(**{**cfg.to_dict(), "keep_float": ()})
    base = _cached(_entry(ref, full, samples, [], cache_dir), f"model{target.suffix}",
                   lambda path: _build(ref, full, target, samples, [], path, cache_dir))
    openvino_exp.keep_float(base, float_artifact(ref, target, cache_dir).path, out, keep_nodes)


def _derive_litert(ref, cfg: ConvertConfig, target: Family, samples, keep_nodes, out: Path, cache_dir) -> None:
    """LiteRT's mixed int8 variant quantized from one calibrated model, built once and cached
    (exporters.litert.quantize_calibrated): the debugger's own calls, the same bytes."""
    full = ConvertConfig(**{**cfg.to_dict(), "keep_float": ()})
    base = _cached(_entry(ref, full, samples, [], cache_dir, "litert-calibrated"), "model.tflite",
                   lambda path: litert_exp.calibrated(exporters.litert_source(ref, cache_dir), path, samples))
    litert_exp.quantize_calibrated(base, out, keep_nodes)


#: mixed int8 variants derived from what every variant of the same calibration shares, rather
#: than quantized again: the int8 repair walks through several, and one quantization of ResNet50
#: took 45 s (OpenVINO) to over a minute (LiteRT) here. Families without an entry quantize again.
_DERIVE = {"openvino": _derive_openvino, "litert": _derive_litert}


def _keras_quantize(ref, cfg: ConvertConfig, out: Path) -> None:
    """Keras' own `model.quantize("int8")`, on a copy: it covers Dense-like layers only."""
    keras = _tf.keras()
    model = load_keras(ref)  # a fresh copy from disk: the caller's model is never touched
    if cfg.quantize == "int8":
        dense = [layer.name for layer in model.layers if type(layer).__name__ in ("Dense", "EinsumDense", "Embedding")]
        if not dense:
            raise KerasTurboError(f"{ref.path}: Keras' model.quantize('int8') covers Dense, EinsumDense and Embedding "
                                  "layers, and this model has none; use --to litert, onnx or openvino")
        skip = set(cfg.keep_float)
        with warnings.catch_warnings():  # Keras warns once per layer kind it cannot quantize
            warnings.simplefilter("ignore")
            model.quantize("int8", filters=lambda layer: layer.name not in skip)
    keras.saving.save_model(model, out)
