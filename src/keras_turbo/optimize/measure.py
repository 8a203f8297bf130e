"""What a measurement is keyed by, and the two measurements: quality on the held-out data, and
speed on the target machine.

A `Protocol` names everything a number depends on. Quality depends on the model and the
evaluation data (`quality_id`); speed on the batch size, threads, benchmark settings and the
machine it ran on (`speed_id`). A rerun reuses a stored quality measurement whose quality id
matches and a stored speed measurement whose speed id matches, and measures the rest anew: change
the batch size and only speed is remeasured; change the data and only quality is.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from keras_turbo import quality
from keras_turbo.bench import benchmark
from keras_turbo.data import load_data
from keras_turbo.optimize.rows import Speed
from keras_turbo.runtimes import load
from keras_turbo.timing import BenchmarkConfig


def content_hash(obj) -> str:
    """A short content id of a JSON-ready value (the ids of data, protocols and output kinds)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


_hash = content_hash


def data_fingerprint(spec: str) -> str:
    """Which data a spec names: the built-in name, or each file's path, size and modification time
    (cheap for large data sets; a file rewritten in place with another content changes its mtime)."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        return _hash(spec)
    p = Path(spec)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return _hash([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()])


@dataclass(frozen=True)
class DataRef:
    """A picklable reference to data a worker loads itself (no arrays travel with a job).

    `part` selects a seeded split of the set: "head" (the first `k` samples of a permutation with
    seed 0), "tail" (the rest) or "all"; `labels=False` drops the labels (calibration needs none);
    then at most `take` samples (seeded). Without train data, the head of the held-out set is set
    apart for int8 calibration and the tail judged; with it, the head of the train set is the
    validation split the technique search judges its probes on, and the tail is trained on (train
    data without labels: the head of the held-out set is that split instead, and the whole train
    set is trained on)."""

    spec: str
    default_split: str = "test"
    part: str = "all"
    k: int = 0
    take: int | None = None
    labels: bool = True
    arg: str = "--data"
    fingerprint: str = ""

    @property
    def id(self) -> str:
        return _hash({k: v for k, v in asdict(self).items() if k not in ("spec", "arg")})

    def load(self, inputs, outputs):
        """The selected samples, fitted to the model's inputs. Loaded once per process: every
        candidate a local run judges reads the same data, and a worker's jobs share it too."""
        return _load(self, tuple(inputs), None if outputs is None else tuple(outputs))

    def _read(self, inputs, outputs):
        ds = load_data(self.spec, inputs, outputs, default_split=self.default_split, arg=self.arg)
        sel = np.arange(len(ds))
        if self.part != "all":
            idx = np.random.default_rng(0).permutation(len(ds))
            sel = idx[:self.k] if self.part == "head" else idx[self.k:]
        if self.take and self.take < len(sel):  # the samples Dataset.take(take, 0) keeps, chosen first
            sel = sel[np.sort(np.random.default_rng(0).choice(len(sel), size=self.take, replace=False))]
        if len(sel) == len(ds) and self.part == "all":
            return ds if self.labels else ds.subset(None, labels=False)
        # One copy of the selected samples only (a memory-mapped npz is not read in full).
        return ds.subset(sel, self.labels)


@functools.lru_cache(maxsize=4)
def _load(ref: DataRef, inputs: tuple, outputs: tuple | None):
    # A DataRef names its data by content (`fingerprint`), so the cached copy is the data it names.
    return ref._read(inputs, outputs)


@dataclass(frozen=True)
class Protocol:
    """Everything a measurement depends on. `machine` identifies where speed is measured."""

    model: str
    eval_data: str  # DataRef.id of the evaluation data
    batch_size: int
    threads: int
    bench: tuple[tuple[str, float], ...]
    machine: str

    @property
    def quality_id(self) -> str:
        return self.quality_id_for(self.eval_data)

    def quality_id_for(self, data_id: str) -> str:
        """The quality id of a judgement on other data (the strength search's validation split)."""
        return _hash({"model": self.model, "eval": data_id})

    @property
    def speed_id(self) -> str:
        return _hash({"batch": self.batch_size, "threads": self.threads, "bench": self.bench, "machine": self.machine})

    @property
    def id(self) -> str:
        return _hash({"q": self.quality_id, "s": self.speed_id})

    def to_dict(self) -> dict:
        return {"id": self.id, "quality_id": self.quality_id, "speed_id": self.speed_id, **asdict(self),
                "bench": dict(self.bench)}


def machine_key(facts: dict) -> str:
    """A machine's identity for speed results: CPU model, its flags, usable cores, GPUs."""
    return _hash({k: facts.get(k) for k in ("cpu", "cpu_flags", "usable_cores", "gpus")})


def node_facts() -> dict:
    """Where this process runs: host, pid, and the Ray node id when inside a Ray worker."""
    facts = {"host": socket.gethostname(), "pid": os.getpid(), "node_id": None}
    try:
        import ray

        if ray.is_initialized():
            facts["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # not in a Ray worker: the host says where it ran
        pass
    return facts


#: the runtime that computes the float reference every candidate is judged against
REFERENCE_BACKEND = "tf-function"


def load_reference(path) -> list[np.ndarray]:
    """The float model's outputs saved by the driver, one array per output."""
    with np.load(path) as z:
        return [z[f"out_{i}"] for i in range(len(z.files))]


def measure_quality(artifact: str, backend: str, eval_ref: DataRef, inputs, outputs, reference: str,
                    threads: int | None, unsafe: bool, kinds=(), metric=None, is_reference: bool = False) -> dict:
    """Run the artifact on the evaluation data and judge every output against the float
    reference by its kind, with each output's labels where the data has them (quality.judge),
    and by the user's metric when one is given ("FILE.py:function", loaded here, or a callable).

    `is_reference`: the artifact on this backend is what computed the reference (the model on
    tf-function, with the same threads and batches: driver._reference), so its outputs are the
    reference's, not computed a second time (20 s on ResNet50's 267 samples)."""
    t0 = time.time()
    ds = eval_ref.load(inputs, outputs)
    refs = load_reference(reference)
    if is_reference:
        outs = [r.copy() for r in refs]
    else:
        p = load(artifact, backend=backend, threads=threads, unsafe=unsafe)
        try:
            out = p.predict(list(ds.x), batch_size=64)
        finally:
            p.close()
        outs = out if isinstance(out, list) else [out]
    kinds = list(kinds) or [quality.detect(f"output_{i}", r.shape[:1] and (None,) + r.shape[1:], None, r)
                            for i, r in enumerate(refs)]
    res = quality.judge(refs, outs, kinds, ds.output_labels(len(refs)), metric=metric)
    return {**res, "seconds": round(time.time() - t0, 2), "node": node_facts(), **({"is_reference": True} if is_reference else {})}


def measure_speed(artifact: str, backend: str, batch_size: int, threads: int, bench: dict, unsafe: bool) -> dict:
    """Latency, throughput, size and memory through the isolated harness (a fresh process), as a
    `rows.Speed` serialised (it crosses processes and machines)."""
    t0 = time.time()
    rep = benchmark(artifact, backends=[backend], batch_sizes=[batch_size], threads=threads,
                    config=BenchmarkConfig(**bench), unsafe=unsafe, measure_overhead=False,
                    check=False)  # checked against Keras when it was built (build.build_convert)
    return Speed.from_result(rep.results[0], seconds=round(time.time() - t0, 2), node=node_facts(),
                             machine=rep.machine).to_dict()


__all__ = ["DataRef", "Protocol", "data_fingerprint", "load_reference", "machine_key", "measure_quality", "measure_speed",
           "node_facts"]
