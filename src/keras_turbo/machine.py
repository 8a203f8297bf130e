"""Facts about the machine a measurement was taken on, recorded with every result."""

from __future__ import annotations

import importlib.metadata
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


def gpus() -> list[str]:
    """NVIDIA GPUs as `nvidia-smi -L` lists them (without importing TensorFlow)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.startswith("GPU")]


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
