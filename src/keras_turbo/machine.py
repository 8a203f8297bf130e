"""Facts about the machine a measurement was taken on, recorded with every result."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess

# CPU flags that decide which kernels the runtimes can use (as /proc/cpuinfo spells them).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
             "amx_bf16", "amx_fp16", "asimdhp", "asimddp", "bf16", "i8mm")

# Which flags make each precision fast (any one suffices), and what they are.
PRECISION_FLAGS: dict[str, tuple[str, ...]] = {
    "bf16": ("amx_bf16", "avx512_bf16", "bf16"),
    "fp16": ("amx_fp16", "avx512_fp16", "asimdhp"),
    "int8": ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp", "i8mm"),
}
LIBRARIES = ("tensorflow", "keras", "ai-edge-litert", "onnxruntime", "tf2onnx", "onnx", "openvino", "nncf", "numpy", "jax",
             "jaxlib")


def parse_cpuinfo(text: str, fallback_model: str = "") -> tuple[str, set[str]]:
    """(CPU model, flags) from /proc/cpuinfo's text: x86 lists its flags as `flags` and names the
    CPU in `model name`; ARM lists them as `Features` (asimdhp, asimddp, i8mm, bf16, ...) and
    often names no model. The first processor's lines only.

    Example:
        >>> model, flags = parse_cpuinfo("processor : 0\\nFeatures : fp asimd asimdhp asimddp\\n", "aarch64")
        >>> model, sorted(flags)
        ('aarch64', ['asimd', 'asimddp', 'asimdhp', 'fp'])
    """
    model, flags = fallback_model, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == fallback_model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def _cpuinfo() -> tuple[str, set[str]]:
    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            return parse_cpuinfo(fh.read(), fallback)
    except OSError:  # not Linux: the model name from platform is the best we have
        return fallback, set()


def cpu_flags() -> set[str]:
    """This CPU's flags, as /proc/cpuinfo spells them (empty where that file does not exist)."""
    return _cpuinfo()[1]


def accelerated_precisions(flags: set[str] | frozenset[str]) -> dict[str, list[str]]:
    """The precisions below float32 this CPU has arithmetic for, and the flags that give it.

    Pure: the flags in, no probing. fp32 is always there and not listed.

    Example:
        >>> accelerated_precisions({"avx2", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"})
        {'bf16': ['amx_bf16', 'avx512_bf16'], 'int8': ['amx_int8', 'avx512_vnni']}
    """
    out = {}
    for precision, wanted in PRECISION_FLAGS.items():
        have = [f for f in wanted if f in flags]
        if have:
            out[precision] = have
    return out


def skip_reason(backend: str, flags: set[str] | frozenset[str]) -> str | None:
    """Why `backend` is not worth running on a CPU with `flags`, or None when it is.

    A reduced-precision entry (`Backend.needs`) on a CPU with none of the flags it needs would
    run emulated, slower than float32: the planner skips it and reports this reason.

    Example:
        >>> skip_reason("openvino-bf16", {"avx2"})
        'openvino-bf16 computes in bf16, which this CPU has no arithmetic for (needs one of amx_bf16, avx512_bf16)'
    """
    from keras_turbo.runtimes import get_backend

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
    from keras_turbo.runtimes import BACKENDS

    return {name: skip_reason(name, flags) for name, b in BACKENDS.items()
            if objective is None or b.objective in (None, objective)}


def gpus() -> list[str]:
    """NVIDIA GPUs as `nvidia-smi -L` lists them (without importing TensorFlow)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.startswith("GPU")]


# Run in a fresh interpreter: importing JAX here would start its runtime (threads, memory, a GPU
# context) in the caller's process, and Keras must never see a backend switch in this one.
_JAX_PROBE = (
    "import json, jax; "
    "print(json.dumps([{'platform': d.platform, 'kind': d.device_kind, 'id': d.id} for d in jax.devices()] "
    "+ ([] if jax.default_backend() == 'cpu' else "
    "[{'platform': d.platform, 'kind': d.device_kind, 'id': d.id} for d in jax.devices('cpu')])))"
)


@functools.lru_cache(maxsize=1)
def jax_devices() -> tuple[tuple[dict, ...], str | None]:
    """JAX's devices as a subprocess sees them: ((platform, kind, id) dicts, error or None).

    The answer is cached for the life of this process (a probe takes a second or two).
    """
    import sys

    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([sys.executable, "-c", _JAX_PROBE], capture_output=True, text=True, timeout=120,
                              env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return (), f"{type(e).__name__}: {e}"
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        return (), (lines[-1][:200] if lines else f"exit code {proc.returncode}")
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1])), None


def jax_gpus() -> list[str]:
    """The GPUs JAX can run on here, by kind ("NVIDIA H200", ...); empty without JAX or a GPU.

    The planner's switch for the keras-jax candidates (fp32, tf32, bf16, fp16): on a CPU they
    are rarely faster than the CPU runtimes, on a GPU they are the GPU path.
    """
    devs, _ = jax_devices()
    return [d["kind"] for d in devs if d["platform"] in ("gpu", "cuda", "rocm")]


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def facts() -> dict:
    """CPU model, cores, vector/matrix flags, GPUs and library versions, as a JSON-ready dict."""
    import psutil

    model, flags = _cpuinfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": affinity,
        "cpu_flags": {f: f in flags for f in CPU_FLAGS},
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": {lib: version(lib) for lib in LIBRARIES},
    }


def default_threads() -> int:
    """All the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def devices() -> dict:
    """What `keras-turbo devices` shows: CPU features, GPUs, and each runtime's state.

    Each runtime is imported for real (in this process), so "usable" means it loaded here, and
    each usable one says what it really executes in here (`runtimes.executes_here`): OpenVINO may
    run another precision than the one asked for (f16 runs as bf16 on a CPU without AVX512-FP16).
    """
    from keras_turbo.runtimes import BACKENDS, executes_here

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
                          "executes": executes, "skip_reason": skip_reason(name, flags)}
    info["runtimes"] = runtimes
    return info


def _probe(module: str) -> tuple[bool, str | None, list[str]]:
    try:
        if module == "tensorflow":
            from keras_turbo import _tf

            tf = _tf.tf()
            return True, None, ["CPU"] + [d.name for d in tf.config.list_physical_devices("GPU")]
        if module == "onnxruntime":
            import onnxruntime as ort

            return True, None, list(ort.get_available_providers())
        if module == "openvino":
            import openvino as ov

            return True, None, list(ov.Core().available_devices)
        if module == "jax":
            devs, err = jax_devices()
            return (False, err, []) if err else (True, None, [f"{d['platform']}:{d['id']} ({d['kind']})" for d in devs])
        if module == "ai_edge_litert":
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401

            return True, None, ["CPU (XNNPACK)"]
    except Exception as e:  # a runtime that fails to import is reported, not raised
        return False, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}", []
    return False, "unknown runtime module", []
