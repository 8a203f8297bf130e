"""Which runtime entries are worth running on this machine, and what they really run in here:
the planner's and `keras-turbo devices`' questions about the registry (machine.py holds the
machine's facts alone)."""

from __future__ import annotations

from keras_turbo import _tf
from keras_turbo.extras import missing
from keras_turbo.machine import accelerated_precisions, cpu_flags, facts
from keras_turbo.model import ModelRef
from keras_turbo.runtimes import BACKENDS, NATIVE, get_backend, keras_jax, keras_runtimes, not_installed, openvino
from keras_turbo.runtimes.base import Executed


def skip_reason(backend: str, flags: set[str] | frozenset[str]) -> str | None:
    """Why `backend` is not worth running on a CPU with `flags`, or None when it is.

    A reduced-precision entry (`Backend.needs`) on a CPU with none of the flags it needs would
    run emulated, slower than float32: the planner skips it and reports this reason.

    Example:
        >>> skip_reason("openvino-bf16", {"avx2"})
        'openvino-bf16 computes in bf16, which this CPU has no arithmetic for (needs one of amx_bf16, avx512_bf16)'
    """
    b = get_backend(backend)
    if not b.needs or any(f in flags for f in b.needs):
        return None
    return f"{backend} computes in {b.precision}, which this CPU has no arithmetic for (needs one of {', '.join(b.needs)})"


def precision_backends(flags: set[str] | frozenset[str], objective: str | None = None) -> dict[str, str | None]:
    """Every registered backend for an objective, with the reason to skip it on this CPU (None:
    run it). `objective` "latency" or "throughput" drops entries made for the other one.

    Example:
        >>> plan = precision_backends(cpu_flags(), "latency")
        >>> [name for name, why in plan.items() if why is None]
    """
    return {name: skip_reason(name, flags) for name, b in BACKENDS.items()
            if objective is None or b.objective in (None, objective)}


def default_backends(ref: ModelRef, flags: set[str] | None = None) -> list[str]:
    """Every runtime for a Keras model, less the reduced-precision entries this CPU would only
    emulate (and keras-jax's reduced precisions, GPU paths run when named); an artifact's own
    runtime for an artifact."""
    if not ref.is_keras:
        return [NATIVE[ref.format]]
    flags = cpu_flags() if flags is None else flags
    return [n for n, b in BACKENDS.items() if (ref.format in b.formats or b.export_to)
            and skip_reason(n, flags) is None and not (b.requires == "jax" and b.precision != "fp32")]


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


def devices() -> dict:
    """What `keras-turbo devices` shows: CPU features, GPUs, and each runtime's state.

    Each runtime is imported for real (in this process), so "usable" means it loaded here, and
    each usable one says what it really executes in here (`runtimes.executes_here`): OpenVINO may
    run another precision than the one asked for (f16 runs as bf16 on a CPU without AVX512-FP16).
    A runtime that is not installed (or whose exporter is not) has `not_installed`: the reason,
    naming the extra that brings it.
    """
    info = facts()
    flags = cpu_flags()
    info["accelerated_precisions"] = accelerated_precisions(flags)
    runtimes: dict[str, dict] = {}
    modules: dict[str, tuple[bool, str | None, list[str]]] = {}
    for name, b in BACKENDS.items():
        if b.requires not in modules:
            modules[b.requires] = _probe(b.requires)
        ok, err, devs = modules[b.requires]
        executes = None
        if ok:
            try:
                executes = executes_here(name)
            except Exception as e:  # a setting the plugin refuses on this CPU (bf16 without AVX-512) is a fact too
                executes = {"summary": "refused", "error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
        runtimes[name] = {"usable": ok, "error": err, "devices": devs, "summary": b.summary, "precision": b.precision,
                          "executes": executes, "skip_reason": skip_reason(name, flags), "not_installed": not_installed(name)}
    info["runtimes"] = runtimes
    return info


def _probe(module: str) -> tuple[bool, str | None, list[str]]:
    if missing(module):
        return False, missing(module), []
    try:
        if module == "tensorflow":
            tf = _tf.tf()
            return True, None, ["CPU"] + [d.name for d in tf.config.list_physical_devices("GPU")]
        if module == "onnxruntime":
            import onnxruntime as ort

            return True, None, list(ort.get_available_providers())
        if module == "openvino":
            import openvino as ov

            return True, None, list(ov.Core().available_devices)
        if module == "jax":
            devs, err = keras_jax.jax_devices()
            return (False, err, []) if err else (True, None, [f"{d['platform']}:{d['id']} ({d['kind']})" for d in devs])
        if module == "ai_edge_litert":
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401

            return True, None, ["CPU (XNNPACK)"]
    except Exception as e:  # a runtime that fails to import is reported, not raised
        return False, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}", []
    return False, "unknown runtime module", []


__all__ = ["default_backends", "devices", "executes_here", "precision_backends", "skip_reason"]
