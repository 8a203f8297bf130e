"""Every runtime behind one `Predictor`, and the registry of them, written out by hand.

Two tables. `FAMILIES`: one row per runtime family (LiteRT, ONNX Runtime, OpenVINO, and Keras'
own format): the artifact its runtimes run, the suffix, the exporter that makes one from a Keras
model with its quantization modes (`convert --to NAME --quantize MODE`), the entry that runs its
artifacts by default and the one that serves a batch as parallel requests. `BACKENDS`: one row
per runtime entry (a precision or throughput setting of a runtime is an entry of its own), each
naming its family. Adding a runtime is a family row, its entries, and one module here (and one
under exporters/); `convert`, the planner and the driver read these rows.

A Keras-family model (.keras, .h5, SavedModel) given to a runtime that needs an artifact is
exported once (`keras_turbo.exporters`) and the artifact cached; an artifact is run as it is.
Which entries are worth running on this machine: runtimes/here.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from keras_turbo import exporters
from keras_turbo.errors import BackendError
from keras_turbo.extras import missing, require
from keras_turbo.exporters import litert as litert_exp
from keras_turbo.exporters import onnx as onnx_exp
from keras_turbo.exporters import openvino as openvino_exp
from keras_turbo.model import KERAS_FORMATS, ModelRef, as_ref
from keras_turbo.runtimes import keras_jax, keras_runtimes, litert, onnxruntime, openvino, split, streams
from keras_turbo.runtimes.base import Predictor


@dataclass(frozen=True)
class Family:
    """A runtime family: the artifact its entries run and how a Keras model becomes one.

    Attributes:
        name: the convert target (`convert --to`).
        artifact: the ModelRef format of its artifacts: what a Keras model is exported to.
        suffix: the artifact's file suffix.
        exporter: the exporters module that writes and quantizes it (export, quantize, MODES,
            WEIGHTED_OPS, node_names, op_graph); None for Keras' own format (Keras quantizes).
        modes: its `--quantize` modes.
        runtime: the entry an artifact of this family runs on when none is named.
        throughput: the entry that serves a batch as parallel requests (None: no such entry).
    """

    name: str
    artifact: str
    suffix: str
    exporter: ModuleType | None
    modes: tuple[str, ...]
    runtime: str
    throughput: str | None = None


FAMILIES: dict[str, Family] = {
    "litert": Family("litert", "tflite", ".tflite", litert_exp, litert_exp.MODES, "litert", "litert-throughput"),
    "onnx": Family("onnx", "onnx", ".onnx", onnx_exp, onnx_exp.MODES, "onnxruntime", "onnxruntime-throughput"),
    "openvino": Family("openvino", "openvino", ".xml", openvino_exp, openvino_exp.MODES, "openvino", "openvino-throughput"),
    # Keras' own model.quantize("int8") (Dense-like layers only); the result runs on TensorFlow.
    "keras": Family("keras", "keras", ".keras", None, ("none", "int8"), "tf-function"),
}


@dataclass(frozen=True)
class Backend:
    """A runtime: its name, the module it needs, what it runs, and how to open a Predictor.

    A reduced-precision or throughput setting of a runtime is an entry of its own
    (`<runtime>-<precision>`, `...-throughput`), so a benchmark worker needs only the name.

    Attributes:
        family: the FAMILIES row whose artifact it runs, a Keras model exported to it first;
            None: it runs the Keras model itself.
        planned: optimize times it as a float candidate on every run (the others are precision,
            throughput or GPU variants planned from the machine, or keras-call, an eager call).
        precision: the arithmetic it computes in: "fp32", "bf16" or "fp16". Anything but fp32 is
            a candidate that has to pass the quality check, like int8.
        needs: CPU flags (as /proc/cpuinfo spells them) of which the CPU must have AT LEAST ONE
            for this entry to be worth running; without any, the precision is emulated and
            slower than fp32 (`here.skip_reason` says so). Empty: runs well anywhere.
        objective: "latency" (one request, all cores) or "throughput" (parallel requests,
            batch split across streams); None: the same path serves both.

    keras-jax entries run Keras 3 on JAX in a worker process (runtimes/keras_jax.py); their
    reduced precisions are GPU paths.
    """

    name: str
    requires: str            # the Python module that must import for it to be usable
    formats: tuple[str, ...]  # model formats it runs directly
    family: str | None
    factory: Callable[..., Predictor]
    summary: str
    planned: bool = False
    precision: str = "fp32"
    needs: tuple[str, ...] = ()
    objective: str | None = None

    @property
    def export_to(self) -> str | None:
        """The artifact format a Keras model is exported to for this entry (None: none)."""
        return FAMILIES[self.family].artifact if self.family else None


def with_preprocessing(cls) -> Callable[..., Predictor]:
    """`cls` as a factory that also opens an artifact whose string preprocessing was split off
    (exporters/textsplit.py: the preprocessing SavedModel beside the artifact, the core in it)."""

    def open_artifact(ref: ModelRef, **kw) -> Predictor:
        return split.open_artifact(cls, ref, **kw)

    open_artifact.__qualname__ = open_artifact.__name__ = f"with_preprocessing({cls.__name__})"
    return open_artifact


BF16_FLAGS = ("amx_bf16", "avx512_bf16")          # AMX tiles or AVX-512 BF16 dot products
FP16_FLAGS = ("amx_fp16", "avx512_fp16", "asimdhp")  # native half-precision arithmetic (x86, ARM)


BACKENDS: dict[str, Backend] = {
    "keras-predict": Backend("keras-predict", "tensorflow", KERAS_FORMATS, None, keras_runtimes.KerasPredict,
                             "Keras model.predict(): the usual baseline", planned=True),
    "keras-call": Backend("keras-call", "tensorflow", KERAS_FORMATS, None, keras_runtimes.KerasCall,
                          "Keras model(x, training=False), eager"),
    "tf-function": Backend("tf-function", "tensorflow", KERAS_FORMATS, None, keras_runtimes.TFFunction,
                           "tf.function graph (GPU when present)", planned=True),
    "tf-xla": Backend("tf-xla", "tensorflow", KERAS_FORMATS, None, keras_runtimes.TFXLA,
                      "tf.function(jit_compile=True), XLA (GPU when present)", planned=True),
    "litert": Backend("litert", "ai_edge_litert", ("tflite",), "litert", with_preprocessing(litert.LiteRTPredictor),
                      "LiteRT interpreter with XNNPACK", planned=True),
    "onnxruntime": Backend("onnxruntime", "onnxruntime", ("onnx",), "onnx", with_preprocessing(onnxruntime.ONNXRuntimePredictor),
                           "ONNX Runtime, CPU provider (CUDA when installed)", planned=True),
    "openvino": Backend("openvino", "openvino", ("openvino", "onnx", "tflite"), "openvino", with_preprocessing(openvino.OpenVINOPredictor),
                        "OpenVINO CPU plugin, latency hint, f32 pinned", planned=True, objective="latency"),
    # Keras 3 on JAX runs in a Keras-on-JAX worker process (see keras_jax.py); "requires" is only
    # what must import there, so probing it never changes this process's Keras backend.
    "keras-jax": Backend("keras-jax", "jax", keras_jax.FORMATS, None, keras_jax.KerasJAXPredictor,
                         "Keras 3 on JAX, one jitted call (GPU when JAX sees one)"),
    "keras-jax-tf32": Backend("keras-jax-tf32", "jax", keras_jax.FORMATS, None, keras_jax.KerasJAXTF32,
                              "keras-jax, TF32 matrix products on NVIDIA GPUs (fp32 on a CPU)", precision="tf32"),
    "keras-jax-bf16": Backend("keras-jax-bf16", "jax", keras_jax.FORMATS, None, keras_jax.KerasJAXBF16,
                              "keras-jax under Keras' mixed_bfloat16 policy", precision="bf16"),
    "keras-jax-fp16": Backend("keras-jax-fp16", "jax", keras_jax.FORMATS, None, keras_jax.KerasJAXFP16,
                              "keras-jax under Keras' mixed_float16 policy", precision="fp16"),
    # Reduced precision where the CPU has the arithmetic for it.
    "tf-function-bf16": Backend("tf-function-bf16", "tensorflow", KERAS_FORMATS, None, keras_runtimes.TFFunctionBF16,
                                "tf.function with oneDNN bf16 auto-mixed-precision", precision="bf16", needs=BF16_FLAGS),
    # (No litert-fp16: see the note at the end of runtimes/litert.py.)
    "openvino-bf16": Backend("openvino-bf16", "openvino", ("openvino", "onnx", "tflite"), "openvino",
                             with_preprocessing(openvino.OpenVINOBF16Predictor), "OpenVINO CPU plugin, latency hint, bf16 inference precision",
                             precision="bf16", needs=BF16_FLAGS, objective="latency"),
    "openvino-fp16": Backend("openvino-fp16", "openvino", ("openvino", "onnx", "tflite"), "openvino",
                             with_preprocessing(openvino.OpenVINOFP16Predictor), "OpenVINO CPU plugin, latency hint, f16 inference precision",
                             precision="fp16", needs=FP16_FLAGS, objective="latency"),
    # Throughput: several streams, a batch split across parallel requests.
    "openvino-throughput": Backend("openvino-throughput", "openvino", ("openvino", "onnx", "tflite"), "openvino",
                                   with_preprocessing(openvino.OpenVINOThroughputPredictor), "OpenVINO CPU plugin, throughput hint, f32",
                                   objective="throughput"),
    "openvino-bf16-throughput": Backend("openvino-bf16-throughput", "openvino", ("openvino", "onnx", "tflite"), "openvino",
                                        with_preprocessing(openvino.OpenVINOBF16ThroughputPredictor),
                                        "OpenVINO CPU plugin, throughput hint, bf16", precision="bf16", needs=BF16_FLAGS,
                                        objective="throughput"),
    "litert-throughput": Backend("litert-throughput", "ai_edge_litert", ("tflite",), "litert",
                                 with_preprocessing(streams.LiteRTThroughput),
                                 "LiteRT, one interpreter per thread, a batch split across them", objective="throughput"),
    "onnxruntime-throughput": Backend("onnxruntime-throughput", "onnxruntime", ("onnx",), "onnx",
                                      with_preprocessing(streams.ONNXRuntimeThroughput),
                                      "ONNX Runtime, one session per thread, a batch split across them", objective="throughput"),
}

#: the entry an artifact runs on when none is named, by its format; a Keras-family model: tf-function
NATIVE = {**{f.artifact: f.runtime for f in FAMILIES.values()}, **{fmt: FAMILIES["keras"].runtime for fmt in KERAS_FORMATS}}


def get_backend(name: str) -> Backend:
    """Look a backend up by name.

    Raises:
        BackendError: no backend has that name (the message lists them).
    """
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"--backend: unknown backend {name!r} (expected one of {', '.join(BACKENDS)})") from None


def needs(backend: str, exporting: bool = True) -> tuple[str, ...]:
    """The modules `backend` needs here: its runtime's, and with `exporting` (a Keras model to
    run on it) its family's exporter's (extras.py names the extra that brings each)."""
    b = get_backend(backend)
    exporter = FAMILIES[b.family].exporter if exporting and b.family else None
    return (b.requires, *(exporter.NEEDS if exporter else ()))


def not_installed(backend: str, exporting: bool = True) -> str | None:
    """Why `backend` cannot run here for lack of an optional module, naming the extra that brings
    it ("onnxruntime is not installed (pip install 'keras-turbo[onnx]')"); None when it can.

    Raises:
        BackendError: no backend has that name.
    """
    return missing(*needs(backend, exporting))


def artifact_for(ref: ModelRef, backend: str, cache_dir: Path | None = None) -> ModelRef:
    """The file `backend` will run for `ref`: `ref` itself, or its cached export.

    Raises:
        BackendError: the backend cannot run that kind of file.
    """
    b = get_backend(backend)
    if ref.format in b.formats:
        return ref
    if ref.is_keras and b.export_to:
        return exporters.export(ref, b.export_to, cache_dir)
    runs = ", ".join(n for n, x in BACKENDS.items() if ref.format in x.formats or (ref.is_keras and x.export_to))
    raise BackendError(f"--backend {backend}: cannot run a .{ref.format} file {ref.path.name} (backends for it: {runs})")


def open_predictor(ref: ModelRef, backend: str, threads: int | None = None, batch_size: int | None = None,
                   device: str = "auto", cache_dir: Path | None = None) -> Predictor:
    """Open `ref` on `backend` and return a ready Predictor (exporting first if needed).

    Raises:
        MissingExtra: the runtime (or its exporter) is not installed; the message names the extra.
    """
    require(f"--backend {backend}", *needs(backend, exporting=ref.format not in get_backend(backend).formats))
    artifact = artifact_for(ref, backend, cache_dir)
    return get_backend(backend).factory(artifact, threads=threads, batch_size=batch_size, device=device)


def load(model, backend: str | None = None, threads: int | None = None, batch_size: int | None = None,
         device: str = "auto", unsafe: bool = False, cache_dir: Path | None = None) -> Predictor:
    """A model (a path, a ModelRef or a keras.Model) opened on `backend`: by default tf-function
    for a Keras model and an artifact's own runtime (NATIVE). `keras_turbo.load` is this, plus an
    optimize output's best/ folder and the user's custom objects."""
    ref = as_ref(model, unsafe, cache_dir)
    backend = backend or NATIVE[ref.format]
    return open_predictor(ref, backend, threads=threads, batch_size=batch_size, device=device, cache_dir=cache_dir)


def float_runtimes() -> dict[str, str | None]:
    """The entries optimize plans as float candidates on every run, in registry order, each with
    the family it converts to first (None: it runs the Keras model itself)."""
    return {n: b.family for n, b in BACKENDS.items() if b.planned}


__all__ = ["BACKENDS", "BF16_FLAGS", "FAMILIES", "FP16_FLAGS", "NATIVE", "Backend", "Family", "Predictor", "artifact_for",
           "float_runtimes", "get_backend", "load", "needs", "not_installed", "open_predictor"]
