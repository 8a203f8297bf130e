"""Keras 3 on its JAX backend: one jitted stateless call per input signature, weights on the device.

Keras fixes its backend when it is first imported, and keras-turbo's own process has Keras on
TensorFlow. So the model runs where Keras is on JAX:

  - by default in a worker process (`_Worker`, one per calling process, started on first use and
    holding any number of models), with `KERAS_BACKEND=jax` and TensorFlow hidden, that answers
    calls over its stdin/stdout pipes: what `load`, `evaluate` and optimize's quality check get,
    so the caller's Keras stays on TensorFlow;
  - in the calling process itself (`JAXModel`) when that process already has Keras on JAX, or is
    dedicated to this one runtime and has not imported Keras yet (the benchmark worker): then a
    timed call holds no inter-process copy.

What one call does, and what the benchmark times in its worker: the inputs copied to the device,
the jitted call, the outputs cast to float32 on the device and copied back to the host
(`np.asarray` waits for the result). The weights stay on the device between calls.

Precisions (each its own registry entry, judged by the quality check like any candidate):
  fp32   float32 everywhere, matrix products at full float32 precision ("highest"; JAX's own
         default computes float32 products in TF32 on recent NVIDIA GPUs, which `tf32` names);
  tf32   float32 weights and activations, matrix products and convolutions at JAX's
         "tensorfloat32" precision: TF32 matrix units on NVIDIA GPUs (TensorFlow's own default
         there); on a CPU it is the same as fp32;
  bf16 / fp16   the model rebuilt under Keras' "mixed_bfloat16" / "mixed_float16" policy
         (variables float32, computation in 16 bits), the weights copied from the float model.
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

from keras_turbo.errors import (
    BackendError,
    KerasTurboError,
    ModelLoadError,
    bad_param,
    cause,
)
from keras_turbo.model import (
    UNSAFE_WARNING,
    ModelRef,
    custom,
    prescan,
    unknown_class_message,
)
from keras_turbo.model.signature import STRING, TensorInfo, dtype_name
from keras_turbo.runtimes.base import Executed, Predictor, process_is_dedicated
from keras_turbo.runtimes.fold import fold_batchnorm

#: precision -> (Keras dtype policy of the rebuilt model or None, JAX default matmul precision)
PRECISIONS = {
    "fp32": (None, "highest"),
    "tf32": (None, "tensorfloat32"),
    "bf16": ("mixed_bfloat16", None),
    "fp16": ("mixed_float16", None),
}
FORMATS = ("keras", "h5")

LOAD_TIMEOUT_S = 600.0  # start, load and first compile of a large model on a slow CPU
CALL_TIMEOUT_S = 600.0  # one call, which may compile a new input shape first


# ---------------------------------------------------------------- Keras on JAX, in this process

class _Hide:
    """An import hook that makes `import <name>` fail for the names given.

    Keras imports TensorFlow lazily when it is installed (its serializer checks for
    `tf.TensorShape`); in a Keras-on-JAX process that costs seconds and hundreds of MB, and would
    let TensorFlow code into a path that must run where TensorFlow is absent (the lent GPU
    machines). Keras also imports scikit-learn at start for its scikit-learn wrappers only, about
    a second of every worker's start that serving never uses. Keras treats both as not installed.
    """

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is hidden in a Keras-on-JAX process (keras_turbo.runtimes.keras_jax)")
        return None


HIDDEN = ("tensorflow", "sklearn")


def keras_on_jax():
    """Import Keras on the JAX backend in this process and return the `keras` module.

    The first import hides TensorFlow and scikit-learn from Keras (where this process has not
    imported them already).

    Raises:
        BackendError: Keras is already imported on another backend here.
    """
    keras = sys.modules.get("keras")
    if keras is None:
        os.environ["KERAS_BACKEND"] = "jax"
        hide = [n for n in HIDDEN if n not in sys.modules]
        if hide:
            sys.meta_path.insert(0, _Hide(hide))
        import keras
    if keras.backend.backend() != "jax":
        raise BackendError(f"keras-jax: Keras is already imported on the {keras.backend.backend()} backend in this process")
    return keras


def keras_is_jax_here() -> bool:
    """Whether this process has Keras imported on the JAX backend."""
    keras = sys.modules.get("keras")
    return keras is not None and keras.backend.backend() == "jax"


def mixed_precision_copy(model, policy: str):
    """The same model rebuilt under a mixed-precision dtype policy, with the weights copied.

    Keras writes every layer's dtype policy into the model's config, so a global
    `set_dtype_policy` would not reach a rebuilt model: the float32 policies in the config are
    replaced instead (inputs keep their dtype). The input model is not changed.
    """
    keras = keras_on_jax()

    def swap(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and node.get("config", {}).get("name") == "float32":
                return {**node, "config": {**node["config"], "name": policy}}
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    copy = keras.models.model_from_json(json.dumps(swap(json.loads(model.to_json()))))
    copy.set_weights(model.get_weights())
    return copy


class JAXModel:
    """A Keras model file on Keras-on-JAX in this process: a jitted stateless call, weights on the device.

    Inputs are taken in name order (as every Predictor takes them); outputs come back as float32
    numpy arrays.
    """

    def __init__(self, path: str, unsafe: bool = False, precision: str = "fp32", device: str = "auto",
                 custom_objects: tuple = (), fold: bool = True, precast: bool = True):
        if precision not in PRECISIONS:
            raise bad_param("precision", f"one of {', '.join(PRECISIONS)}", precision)
        keras = keras_on_jax()
        import jax

        # the user's --custom-objects (a worker may have started before they were named: the spec comes with the request)
        custom.activate(tuple(tuple(e) for e in custom_objects) or custom.current())

        self._device = _jax_device(jax, device)
        try:
            model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
        except Exception as e:
            msg = " ".join(str(e).split())
            if custom.unknown_class(msg):
                raise ModelLoadError(unknown_class_message(path, custom.unknown_class(msg))) from e
            raise ModelLoadError(f"{path}: cannot load on Keras-on-JAX ({cause(e)})") from e
        if not isinstance(model, keras.Model):
            raise ModelLoadError(f"{path}: holds a {type(model).__name__}, not a Keras model")
        #: how many BatchNormalization layers were folded into the layer before them (fold.py)
        self.folded = 0
        if fold:
            model, self.folded = fold_batchnorm(keras, model)
        policy, self._matmul = PRECISIONS[precision]
        if policy:
            model = mixed_precision_copy(model, policy)
        self.precision = precision
        self.platform = self._device.platform
        self.device = "gpu" if self.platform in ("gpu", "cuda", "rocm") else self.platform

        text = [t.name for t in model.inputs if dtype_name(t.dtype) == STRING]
        if text:
            raise BackendError(f"keras-jax: input {text[0]!r} takes strings, and Keras-on-JAX runs no string ops "
                               "(TextVectorization / StringLookup compute in TensorFlow); run it on tf-function")
        ins = [TensorInfo(t.name, tuple(t.shape), np.dtype(t.dtype).name) for t in model.inputs]
        by_name = sorted(range(len(ins)), key=lambda i: ins[i].name)
        self.inputs = [ins[i] for i in by_name]
        self.outputs = [TensorInfo(f"output_{i}", tuple(t.shape), "float32") for i, t in enumerate(model.outputs)]
        to_model_order = [by_name.index(i) for i in range(len(ins))]
        multi = len(ins) > 1

        def serve(trainable, non_trainable, feeds):
            xs = [feeds[k] for k in to_model_order] if multi else feeds[0]
            out, _ = model.stateless_call(trainable, non_trainable, xs, training=False)
            return [o.astype("float32") for o in jax.tree_util.tree_leaves(out)]

        # The variables are arguments, not constants baked into the executable: XLA compiles one
        # executable per input signature and the weights are copied to the device once, here.
        cast = _compute_dtypes(model) if precast else {}
        self._trainable = jax.device_put([_stored(v, cast) for v in model.trainable_variables], self._device)
        self._non_trainable = jax.device_put([_stored(v, cast) for v in model.non_trainable_variables], self._device)
        self._fn = jax.jit(serve)
        self._jax = jax
        self.model = model

    def put(self, feeds: Sequence[np.ndarray]) -> list:
        """The inputs copied to this model's device (`run` takes these as well as numpy arrays)."""
        return [self._jax.device_put(f, self._device) for f in feeds]

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        jax = self._jax
        xs = self.put(feeds)  # no copy for arrays already on the device
        if self._matmul:
            # Part of the trace context, so it is in force when a new input signature compiles.
            with jax.default_matmul_precision(self._matmul):
                out = self._fn(self._trainable, self._non_trainable, xs)
        else:
            out = self._fn(self._trainable, self._non_trainable, xs)
        return [np.asarray(o) for o in out]  # the copy to the host waits for the device

    def describe(self) -> dict:
        """What the worker reports back after loading."""
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "device": self.device, "platform": self.platform, "device_kind": self._device.device_kind,
                "folded": self.folded}

    def close(self) -> None:
        self._trainable = self._non_trainable = self._fn = self.model = None


def _compute_dtypes(model) -> dict[int, str]:
    """id(variable) -> the 16-bit dtype its layer casts it to in every call (mixed precision only).

    Under a mixed policy the variables are float32 and each layer casts the ones it autocasts to
    its compute dtype inside the call. Handing the jitted call those values already cast makes
    the cast a round trip (16 -> 32 -> 16 bits: exact) that XLA removes, so no call converts
    weights and the weights on the device take half the memory. Normalization layers keep
    float32 (they do not autocast), and so do their values here.
    """
    out = {}
    for layer in model._flatten_layers(include_self=False):
        compute = layer.dtype_policy.compute_dtype
        if compute not in ("bfloat16", "float16") or not layer.autocast or list(layer._flatten_layers(include_self=False)):
            continue  # float32 layers, layers that do not autocast, and composite layers (their parts decide)
        for v in layer.weights:
            if getattr(v, "_autocast", True) and v.dtype == "float32":
                out[id(v)] = compute
    return out


def _stored(variable, cast: dict[int, str]):
    """A variable's value as the jitted call takes it (see `_compute_dtypes`)."""
    return variable.value.astype(cast[id(variable)]) if id(variable) in cast else variable.value


def _jax_device(jax, device: str):
    if device not in ("auto", "cpu", "gpu"):
        raise bad_param("device", 'one of "auto", "cpu", "gpu"', device)
    if device == "cpu":
        return jax.devices("cpu")[0]
    if device == "gpu":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            raise BackendError("--device gpu: JAX sees no GPU on this machine") from None
    return jax.devices()[0]  # JAX's default backend: a GPU when it sees one


# ---------------------------------------------------------------- the pipe protocol
# One message: an 8-byte little-endian header length, a JSON header (with "arrays": each one's
# dtype and shape), then each array's raw bytes. No pickle: a message carries data, never code.

def _encode(header: dict, arrays: Sequence[np.ndarray] = ()) -> list:
    arrays = [np.ascontiguousarray(a) for a in arrays]
    head = json.dumps({**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}).encode()
    return [struct.pack("<Q", len(head)), head, *(memoryview(a).cast("B") for a in arrays if a.nbytes)]


def _decode_arrays(header: dict, read) -> list[np.ndarray]:
    out = []
    for dtype, shape in header["arrays"]:
        dt = np.dtype(dtype)
        out.append(np.frombuffer(read(dt.itemsize * int(np.prod(shape))), dt).reshape(shape))
    return out


def _send(fh, header: dict, arrays: Sequence[np.ndarray] = ()) -> None:
    for part in _encode(header, arrays):
        fh.write(part)
    fh.flush()


def _read_stream(fh):
    def read(n: int) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = fh.readinto(view[got:])
            if not k:
                raise EOFError("the pipe closed")
            got += k
        return buf
    return read


def _recv(read) -> tuple[dict, list[np.ndarray]]:
    (size,) = struct.unpack("<Q", read(8))
    header = json.loads(bytes(read(size)))
    return header, _decode_arrays(header, read)


def serve() -> int:
    """The worker's main loop: load models, answer calls, free models, until told to close or the pipe ends.

    Runs as `python -c "from keras_turbo.runtimes.keras_jax import serve; ..."` with
    `KERAS_BACKEND=jax`. Its stdout carries the protocol only: stray prints go to stderr.
    """
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    read = _read_stream(sys.stdin.buffer)
    models: dict[int, JAXModel] = {}
    next_id = 0
    while True:
        try:
            header, feeds = _recv(read)
        except EOFError:  # the parent went away
            return 0
        op = header.get("op")
        if op == "close":
            return 0
        try:
            if op == "load":
                next_id += 1
                models[next_id] = JAXModel(header["path"], header["unsafe"], header["precision"], header["device"],
                                           header.get("custom", ()))
                _send(out, {"ok": True, "id": next_id, **models[next_id].describe()})
            elif op == "run":
                _send(out, {"ok": True}, models[header["id"]].run(feeds))
            elif op == "free":
                models.pop(header["id"]).close()
                _send(out, {"ok": True})
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as e:  # reported to the parent as one line, which it raises there
            _send(out, {"ok": False, "error": _one_line(e), "kind": type(e).__name__})


def _one_line(e: BaseException) -> str:
    return cause(e)


_WORKER_MAIN = "from keras_turbo.runtimes.keras_jax import serve; raise SystemExit(serve())"


class _Worker:
    """A Keras-on-JAX worker process and the pipe to it; it holds any number of models by id.

    One is started per process on first use and reused (its start, Keras and JAX imports take
    seconds); `stop_workers()` ends it, and so does the end of this process. Every wait on the
    pipe has a deadline; a worker that dies or stops answering becomes a `BackendError` carrying
    the first error line it printed, and the next model starts a fresh worker.
    """

    def __init__(self, cpu_only: bool):
        src = str(Path(__file__).resolve().parents[2])  # the folder holding the keras_turbo package
        env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
        # A worker beside the caller's own work should not take most of the GPU's memory up front.
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        if cpu_only:
            env["JAX_PLATFORMS"] = "cpu"  # never start a GPU client that will not be used
        self._lock = threading.Lock()
        self._unused: list[int] = []  # models whose Predictor was garbage-collected unclosed
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_MAIN],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self._stop = weakref.finalize(self, _stop, self._proc, self._stderr)

    @property
    def alive(self) -> bool:
        return self._stop.alive and self._proc.poll() is None

    def request(self, header: dict, arrays: Sequence[np.ndarray] = (), timeout_s: float = CALL_TIMEOUT_S,
                what: str = "a call") -> tuple[dict, list[np.ndarray]]:
        """Send one request and wait for its answer. Raises BackendError if the worker is gone or silent."""
        with self._lock:
            while self._unused:
                self._exchange({"op": "free", "id": self._unused.pop()}, (), 60, "freeing a model")
            return self._exchange(header, arrays, timeout_s, what)

    def forget(self, model_id: int) -> None:
        """Free a model with the next request. Does no I/O: it runs from the garbage collector,
        which may be in the middle of a request on this very thread."""
        self._unused.append(model_id)

    def _exchange(self, header, arrays, timeout_s, what) -> tuple[dict, list[np.ndarray]]:
        if not self.alive:
            raise BackendError(f"keras-jax worker: stopped earlier, so not {what}")
        mark = self._stderr.tell()
        try:
            _send(self._proc.stdin, header, arrays)
        except (OSError, ValueError) as e:  # BrokenPipeError; ValueError: the pipe is closed
            raise self._died(what, mark) from e
        return self._read(timeout_s, what, mark)

    def stop(self) -> None:
        self._stop()

    def _read(self, timeout_s: float, what: str, mark: int) -> tuple[dict, list[np.ndarray]]:
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s

        def read(n: int) -> bytearray:
            buf = bytearray(n)
            view, got = memoryview(buf), 0
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    self.stop()
                    raise BackendError(f"keras-jax worker: no answer after {timeout_s:.0f} s {what}; stopped it")
                k = os.readv(fd, [view[got:]])
                if not k:
                    raise self._died(what, mark)
                got += k
            return buf

        return _recv(read)

    def _died(self, what: str, mark: int) -> BackendError:
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0)
        text = self._stderr.read()
        lines = [ln.strip() for ln in text.decode("utf-8", "replace").splitlines() if ln.strip()]
        recent = [ln.strip() for ln in text[mark:].decode("utf-8", "replace").splitlines() if ln.strip()] or lines
        is_error = re.compile(r"^[\w.]*(Error|Exception)\b")
        first = next((ln for ln in recent if is_error.match(ln)), recent[-1] if recent else "no output")
        self.stop()
        return BackendError(f"keras-jax worker exited (code {code}) {what}: {first}")


def _stop(proc: subprocess.Popen, stderr) -> None:
    """End a worker: ask it to close, then make sure (it holds models and maybe a GPU context)."""
    if proc.poll() is None:
        try:
            _send(proc.stdin, {"op": "close"})
            proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
    for fh in (proc.stdin, proc.stdout, stderr):
        try:
            fh.close()
        except OSError:
            pass


_WORKERS: dict[str, _Worker] = {}


def _worker_for(device: str) -> _Worker:
    key = "cpu" if device == "cpu" else "any"
    w = _WORKERS.get(key)
    if w is None or not w.alive:
        w = _WORKERS[key] = _Worker(cpu_only=key == "cpu")
    return w


def stop_workers() -> None:
    """End this process's Keras-on-JAX workers (and the models they hold); the next model starts one."""
    for w in _WORKERS.values():
        w.stop()
    _WORKERS.clear()


def custom_current() -> tuple:
    return custom.current()


class _RemoteModel:
    """One model held by the worker: the same methods as `JAXModel`, each call a round trip on the pipe."""

    def __init__(self, ref: ModelRef, precision: str, device: str, load_timeout_s: float = LOAD_TIMEOUT_S,
                 call_timeout_s: float = CALL_TIMEOUT_S):
        self._worker = _worker_for(device)
        self._call_timeout = call_timeout_s
        header, _ = self._worker.request({"op": "load", "path": str(ref.path), "unsafe": ref.unsafe,
                                          "precision": precision, "device": device,
                                          "custom": [list(e) for e in custom_current()]},
                                         timeout_s=load_timeout_s, what=f"loading {ref.path.name}")
        if not header["ok"]:
            kind = {"ModelLoadError": ModelLoadError, "KerasTurboError": KerasTurboError}.get(header.get("kind"), BackendError)
            raise kind(f"keras-jax worker: {header['error']}")
        self._id = header["id"]
        # Unclosed and collected: freed in the worker with the next request (at exit, the
        # worker's own end frees everything).
        self._collected = weakref.finalize(self, self._worker.forget, self._id)
        self._collected.atexit = False
        self.inputs = [TensorInfo(t["name"], tuple(t["shape"]), t["dtype"]) for t in header["inputs"]]
        self.outputs = [TensorInfo(t["name"], tuple(t["shape"]), t["dtype"]) for t in header["outputs"]]
        self.device, self.platform, self.device_kind = header["device"], header["platform"], header["device_kind"]
        self.folded = header.get("folded", 0)

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        if not self._collected.alive:
            raise BackendError("keras-jax: this predictor is closed")
        header, arrays = self._worker.request({"op": "run", "id": self._id}, feeds, self._call_timeout)
        if not header["ok"]:
            raise BackendError(f"keras-jax worker: {header['error']}")
        return arrays

    def close(self) -> None:
        if self._collected.detach() and self._worker.alive:
            try:
                self._worker.request({"op": "free", "id": self._id}, timeout_s=60, what="freeing a model")
            except BackendError:  # the worker is gone, and the model with it
                pass


# ---------------------------------------------------------------- what JAX sees here

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


# ---------------------------------------------------------------- the Predictor

class KerasJAXPredictor(Predictor):
    """A `.keras` / `.h5` model on Keras-on-JAX (see the module docstring for where it runs).

    Args:
        ref: the model file; checked for Lambda layers before anything loads it (unless unsafe).
        threads: not applied: JAX has no supported control of its CPU thread pool (reported as None).
        batch_size: when given, the call for that batch size is compiled now rather than on first use.
        device: "auto" (a GPU when JAX sees one), "cpu" or "gpu".
        in_process: run in this process (True), in a worker (False), or decide (None: here when this
            process is Keras-on-JAX already or is a dedicated benchmark worker).

    Raises:
        ModelLoadError: an unreadable or unsafe file.
        BackendError: a SavedModel or artifact, no GPU for device="gpu", or a worker that failed.

    Example:
        >>> p = keras_turbo.load("model.keras", backend="keras-jax-bf16")  # a GPU when JAX sees one
        >>> p(x).dtype                                                      # 16-bit inside, float32 out
        dtype('float32')
    """

    backend = "keras-jax"
    precision = "fp32"

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int | None = None, device: str = "auto",
                 in_process: bool | None = None):
        if ref.format not in FORMATS:
            raise BackendError(f"--backend {self.backend}: cannot run a .{ref.format} file {ref.path.name} (it runs .keras and .h5)")
        if device not in ("auto", "cpu", "gpu"):
            raise bad_param("device", 'one of "auto", "cpu", "gpu"', device)
        prescan(ref)  # nothing loads a file that holds Python code
        if ref.unsafe:
            warnings.warn(UNSAFE_WARNING, stacklevel=2)
        if in_process is None:
            in_process = keras_is_jax_here() or ("keras" not in sys.modules and process_is_dedicated())
        #: what runs the model: a `JAXModel` here, or a `_RemoteModel` handle on the worker
        self.engine = JAXModel(str(ref.path), ref.unsafe, self.precision, device) if in_process else \
            _RemoteModel(ref, self.precision, device)
        self.in_process = in_process
        self.platform = self.engine.platform
        super().__init__(self.engine.inputs, self.engine.outputs, None, device=self.engine.device,
                         model_bytes=ref.size_bytes, artifact=str(ref.path))
        if batch_size:
            self.run([np.zeros((batch_size, *[d or 1 for d in t.shape[1:]]), t.dtype) for t in self.inputs])

    def run(self, feeds):
        return self.engine.run(feeds)

    def settings(self) -> dict:
        return {"KERAS_BACKEND": "jax", "dtype_policy": PRECISIONS[self.precision][0] or "float32",
                "jax_default_matmul_precision": PRECISIONS[self.precision][1], "device": self.device}

    def executed(self) -> Executed:
        # Keras' dtype policy decides per layer; JAX's compiled HLO is not read back here.
        return Executed({}, "requested", requested=self.precision, devices=(self.device,))

    def close(self):
        self.engine.close()


class KerasJAXTF32(KerasJAXPredictor):
    """keras-jax with matrix products at TF32 precision on NVIDIA GPUs (fp32 on a CPU)."""

    backend = "keras-jax-tf32"
    precision = "tf32"


class KerasJAXBF16(KerasJAXPredictor):
    """keras-jax with the model rebuilt under Keras' "mixed_bfloat16" policy."""

    backend = "keras-jax-bf16"
    precision = "bf16"


class KerasJAXFP16(KerasJAXPredictor):
    """keras-jax with the model rebuilt under Keras' "mixed_float16" policy."""

    backend = "keras-jax-fp16"
    precision = "fp16"
