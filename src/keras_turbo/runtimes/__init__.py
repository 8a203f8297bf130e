"""Every runtime behind one `Predictor`, and the registry of them, written out by hand.

A backend takes the formats listed beside it. A Keras-family model (.keras, .h5, SavedModel)
given to a runtime that needs an artifact is exported once (`keras_turbo.exporters`) and the
artifact cached; an artifact is run as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from keras_turbo.errors import BackendError
from keras_turbo.model import KERAS_FORMATS, ModelRef, as_ref
from keras_turbo.runtimes import keras_jax, keras_runtimes, litert, onnxruntime, openvino, streams
from keras_turbo.runtimes.base import Executed, NullPredictor, Predictor
from keras_turbo.model.signature import TensorInfo


@dataclass(frozen=True)
class Backend:
    """A runtime: its name, the module it needs, what it runs, and how to open a Predictor.

    A reduced-precision or throughput setting of a runtime is an entry of its own
    (`<runtime>-<precision>`, `...-throughput`), so a benchmark worker needs only the name.

    Attributes:
        precision: the arithmetic it computes in: "fp32", "bf16" or "fp16". Anything but fp32 is
            a candidate that has to pass the quality check, like int8.
        needs: CPU flags (as /proc/cpuinfo spells them) of which the CPU must have AT LEAST ONE
            for this entry to be worth running; without any, the precision is emulated and
            slower than fp32 (`machine.skip_reason` says so). Empty: runs well anywhere.
        objective: "latency" (one request, all cores) or "throughput" (parallel requests,
            batch split across streams); None: the same path serves both.

    keras-jax entries run Keras 3 on JAX in a worker process (runtimes/keras_jax.py); their
    reduced precisions are GPU paths.
    """

    name: str
    requires: str            # the Python module that must import for it to be usable
    formats: tuple[str, ...]  # model formats it runs directly
    export_to: str | None     # artifact a Keras model is exported to first (None: runs Keras directly)
    factory: Callable[..., Predictor]
    summary: str
    precision: str = "fp32"
    needs: tuple[str, ...] = ()
    objective: str | None = None


def with_preprocessing(cls) -> Callable[..., Predictor]:
    """`cls` as a factory that also opens an artifact whose string preprocessing was split off
    (textsplit.py: the preprocessing SavedModel beside the artifact, the core in it)."""

    def open_artifact(ref: ModelRef, **kw) -> Predictor:
        from keras_turbo import textsplit  # imports this package's base: not at module level

        return textsplit.open_artifact(cls, ref, **kw)

    open_artifact.__qualname__ = open_artifact.__name__ = f"with_preprocessing({cls.__name__})"
    return open_artifact


BF16_FLAGS = ("amx_bf16", "avx512_bf16")          # AMX tiles or AVX-512 BF16 dot products
FP16_FLAGS = ("amx_fp16", "avx512_fp16", "asimdhp")  # native half-precision arithmetic (x86, ARM)


BACKENDS: dict[str, Backend] = {
    "keras-predict": Backend("keras-predict", "tensorflow", KERAS_FORMATS, None, keras_runtimes.KerasPredict,
                             "Keras model.predict(): the usual baseline"),
    "keras-call": Backend("keras-call", "tensorflow", KERAS_FORMATS, None, keras_runtimes.KerasCall,
                          "Keras model(x, training=False), eager"),
    "tf-function": Backend("tf-function", "tensorflow", KERAS_FORMATS, None, keras_runtimes.TFFunction,
                           "tf.function graph (GPU when present)"),
    "tf-xla": Backend("tf-xla", "tensorflow", KERAS_FORMATS, None, keras_runtimes.TFXLA,
                      "tf.function(jit_compile=True), XLA (GPU when present)"),
    "litert": Backend("litert", "ai_edge_litert", ("tflite",), "tflite", with_preprocessing(litert.LiteRTPredictor),
                      "LiteRT interpreter with XNNPACK"),
    "onnxruntime": Backend("onnxruntime", "onnxruntime", ("onnx",), "onnx", with_preprocessing(onnxruntime.ONNXRuntimePredictor),
                           "ONNX Runtime, CPU provider (CUDA when installed)"),
    "openvino": Backend("openvino", "openvino", ("openvino", "onnx", "tflite"), "openvino", with_preprocessing(openvino.OpenVINOPredictor),
                        "OpenVINO CPU plugin, latency hint, f32 pinned", objective="latency"),
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
    "litert-throughput": Backend("litert-throughput", "ai_edge_litert", ("tflite",), "tflite",
                                 with_preprocessing(streams.LiteRTThroughput),
                                 "LiteRT, one interpreter per thread, a batch split across them", objective="throughput"),
    "onnxruntime-throughput": Backend("onnxruntime-throughput", "onnxruntime", ("onnx",), "onnx",
                                      with_preprocessing(streams.ONNXRuntimeThroughput),
                                      "ONNX Runtime, one session per thread, a batch split across them", objective="throughput"),
}

#: the backend an artifact runs on when none is named
NATIVE = {"tflite": "litert", "onnx": "onnxruntime", "openvino": "openvino"}


#: OpenVINO's INFERENCE_PRECISION_HINT per registry precision
_OV_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def executes_here(name: str) -> dict:
    """What `name` really runs a float model's compute ops in on this machine, as a dict
    (`base.Executed.to_dict`): OpenVINO entries compile a small model with their settings and
    read the plugin's choice back; tf-function-bf16 compares its outputs with float32's; the
    float runtimes run what the artifact holds (fp32 for a float model; every measurement records
    its own artifact's). Raises whatever the runtime raises (the caller reports it)."""
    b = get_backend(name)
    if b.requires == "openvino":
        hint = "THROUGHPUT" if b.objective == "throughput" else "LATENCY"
        return openvino.probe(_OV_HINT[b.precision], hint).to_dict()
    if name == "tf-function-bf16":
        return keras_runtimes.probe_bf16().to_dict()
    if b.requires == "jax" or b.precision != "fp32":
        return Executed({}, "requested", requested=b.precision).to_dict()
    return Executed({"fp32": 1}, "kernels", requested="fp32").to_dict()


def get_backend(name: str) -> Backend:
    """Look a backend up by name.

    Raises:
        BackendError: no backend has that name (the message lists them).
    """
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"--backend: unknown backend {name!r} (expected one of {', '.join(BACKENDS)})") from None


def default_backends(ref: ModelRef, flags: set[str] | None = None) -> list[str]:
    """Every runtime for a Keras model, less the reduced-precision entries this CPU would only
    emulate (and keras-jax's reduced precisions, GPU paths run when named); an artifact's own
    runtime for an artifact."""
    if not ref.is_keras:
        return [NATIVE[ref.format]]
    from keras_turbo.machine import cpu_flags, skip_reason

    flags = cpu_flags() if flags is None else flags
    return [n for n, b in BACKENDS.items() if (ref.format in b.formats or b.export_to)
            and skip_reason(n, flags) is None and not (b.requires == "jax" and b.precision != "fp32")]


def artifact_for(ref: ModelRef, backend: str, cache_dir: Path | None = None) -> ModelRef:
    """The file `backend` will run for `ref`: `ref` itself, or its cached export.

    Raises:
        BackendError: the backend cannot run that kind of file.
    """
    b = get_backend(backend)
    if ref.format in b.formats:
        return ref
    if ref.is_keras and b.export_to:
        from keras_turbo import exporters

        return exporters.export(ref, b.export_to, cache_dir)
    runs = ", ".join(n for n, x in BACKENDS.items() if ref.format in x.formats or (ref.is_keras and x.export_to))
    raise BackendError(f"--backend {backend}: cannot run a .{ref.format} file {ref.path.name} (backends for it: {runs})")


def open_predictor(ref: ModelRef, backend: str, threads: int | None = None, batch_size: int | None = None,
                   device: str = "auto", cache_dir: Path | None = None) -> Predictor:
    """Open `ref` on `backend` and return a ready Predictor (exporting first if needed)."""
    artifact = artifact_for(ref, backend, cache_dir)
    return get_backend(backend).factory(artifact, threads=threads, batch_size=batch_size, device=device)


def load(model, backend: str | None = None, threads: int | None = None, batch_size: int | None = None,
         device: str = "auto", unsafe: bool = False, cache_dir: Path | None = None) -> Predictor:
    """A model (a path, a ModelRef or a keras.Model) opened on `backend`: by default tf-function
    for a Keras model and an artifact's own runtime (NATIVE). `keras_turbo.load` is this, plus an
    optimize output's best/ folder and the user's custom objects."""
    ref = as_ref(model, unsafe, cache_dir)
    backend = backend or ("tf-function" if ref.is_keras else NATIVE[ref.format])
    return open_predictor(ref, backend, threads=threads, batch_size=batch_size, device=device, cache_dir=cache_dir)


__all__ = ["BACKENDS", "BF16_FLAGS", "FP16_FLAGS", "NATIVE", "Backend", "NullPredictor", "Predictor", "TensorInfo", "artifact_for",
           "default_backends", "executes_here", "get_backend", "open_predictor"]
