"""Weight clustering: every Conv/Dense kernel shares at most `clusters` distinct values.

TF-MOT's `cluster_weights` refuses Keras 3 models (../shared/STACK.md), so this is the same
method written for Keras 3, with no wrapper layers:

  - each clustered kernel is split into `clusters` groups by a 1-D k-means (numpy), its centroids
    started evenly spaced between the kernel's min and max (TF-MOT's "linear" init, which keeps
    the rare large weights that matter most their own centroids);
  - the model fine-tunes with the sharing kept: after every optimizer step a callback moves each
    centroid to the mean of its weights and writes the centroids back, so a step is in effect the
    gradient averaged over each cluster (the weights' assignment to clusters stays fixed, as in
    TF-MOT);
  - the result is a plain Keras model (the same layers as the input) whose kernels hold at most
    `clusters` distinct float values each.

What it buys is compressed size (a kernel of 16 values is 4-bit indices plus a table, and gzip
finds that), not speed: every runtime still runs the same dense float kernels, so latency does
not change. The report says so.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import numpy as np

from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError, bad_param
from keras_turbo.model.graph import leaf_layers
from keras_turbo.techniques._training import (
    accuracy,
    check_model,
    copy_model,
    finetune,
    saved_sizes,
)
from keras_turbo.techniques.base import TechniqueConfig, TechniqueResult

CLUSTERABLE = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense")
SIZE_NOTE = ("clustering shares values, it does not remove them: the model has the same shape and runs at the "
             "same speed on every runtime; it pays through compressed size (gzip) only")
KMEANS_ITERATIONS = 30


def _check_int(name: str, v, low: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise bad_param(name, f"an integer >= {low}", v)


@dataclass(frozen=True)
class ClusterConfig(TechniqueConfig):
    """How to cluster.

    Attributes:
        clusters: distinct values per clustered kernel (2..256; 16 is 4-bit indices).
        epochs / batch_size / learning_rate: the fine-tuning with the sharing kept (Adam, cosine
            decay); epochs=0 clusters once with no fine-tuning (no train data needed).
        min_weights: kernels with fewer weights are left alone (not worth a table).
        exclude: names of layers to leave unclustered.
        seed: seeds Keras' random state for the fine-tuning.

    Raises:
        KerasTurboError: a setting out of range.

    Example:
        >>> ClusterConfig(clusters=16, epochs=3)
    """

    clusters: int = 16
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-4
    min_weights: int = 64
    exclude: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.clusters, int) or isinstance(self.clusters, bool) or not 2 <= self.clusters <= 256:
            raise bad_param("clusters", "an integer in [2, 256]", self.clusters)
        _check_int("epochs", self.epochs, 0)
        _check_int("batch_size", self.batch_size, 1)
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            raise bad_param("learning_rate", "a number > 0", self.learning_rate)
        _check_int("min_weights", self.min_weights, 0)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not all(isinstance(n, str) for n in self.exclude):
            raise bad_param("exclude", "a tuple of layer names", self.exclude)
        if not isinstance(self.seed, int):
            raise bad_param("seed", "an integer", self.seed)


def kmeans_1d(values: np.ndarray, k: int, iterations: int = KMEANS_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means with linear init. Returns (centroids (k,), assignment of each value)."""
    flat = values.reshape(-1).astype("float64")
    centroids = np.linspace(flat.min(), flat.max(), k)
    for _ in range(iterations):
        # Sorted centroids: the nearest one is found by the midpoints between neighbours.
        centroids = np.sort(centroids)
        assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat)
        sums = np.bincount(assign, weights=flat, minlength=k)
        counts = np.bincount(assign, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)  # an empty cluster keeps its place
        if np.allclose(new, centroids):
            break
        centroids = new
    centroids = np.sort(centroids)
    assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat)
    return centroids.astype("float32"), assign.reshape(values.shape)


def _kernels(model, config: ClusterConfig) -> tuple[list, list[dict]]:
    """(variables to cluster, report rows for every Conv/Dense-like layer)."""
    chosen, rows = [], []
    for layer in leaf_layers(model):
        kind = type(layer).__name__
        if kind not in CLUSTERABLE:
            continue
        kernels = [w for w in layer.weights if "kernel" in w.path.split("/")[-1]]
        size = int(sum(np.prod(w.shape) for w in kernels))
        if layer.name in config.exclude:
            rows.append({"layer": layer.name, "kind": kind, "clustered": False, "reason": "excluded"})
        elif size < max(config.min_weights, config.clusters):
            rows.append({"layer": layer.name, "kind": kind, "clustered": False,
                         "reason": f"{size} weights, fewer than min_weights={config.min_weights}"})
        else:
            chosen.extend((layer.name, w) for w in kernels)
            rows.append({"layer": layer.name, "kind": kind, "clustered": True, "weights": size})
    return chosen, rows


class _Sharer:
    """Holds each kernel's fixed cluster assignment and snaps the kernel onto its centroids."""

    def __init__(self, variables, k: int):
        self.variables = variables
        self.k = k
        self.assign = []
        for _, var in variables:
            _, assign = kmeans_1d(np.asarray(var.numpy()), k)
            self.assign.append(assign)
        self.snap()

    def snap(self) -> None:
        # The new centroid is the mean of the cluster's weights after the step: the step that the
        # cluster as a whole took, i.e. the gradient averaged over the cluster.
        for (_, var), assign in zip(self.variables, self.assign):
            w = np.asarray(var.numpy())
            counts = np.bincount(assign.reshape(-1), minlength=self.k)
            sums = np.bincount(assign.reshape(-1), weights=w.reshape(-1).astype("float64"), minlength=self.k)
            centroids = (sums / np.maximum(counts, 1)).astype("float32")
            var.assign(centroids[assign])


def apply(model, config: ClusterConfig | None = None, train: Dataset | None = None, val: Dataset | None = None) -> TechniqueResult:
    """Cluster the Conv/Dense kernels of a copy of `model` and fine-tune with the sharing kept.

    Args:
        model: a built keras.Model (functional or Sequential). It is never changed.
        config: a `ClusterConfig` (default: 16 clusters, 3 epochs).
        train: labelled data for the fine-tuning (needed when `config.epochs` > 0).
        val: labelled data to measure accuracy before and after (optional).

    Returns:
        A `TechniqueResult`: the clustered plain Keras model; the report holds per-layer rows
        (distinct values), accuracy before/after on `val`, gzip sizes before/after (of the saved
        `.keras` file and of the raw float32 weights) and a note that latency does not change.

    Raises:
        KerasTurboError: not a Keras model, no train data while fine-tuning, nothing to cluster.

    Example:
        >>> r = cluster.apply(model, ClusterConfig(clusters=16, epochs=2), train, val)
        >>> r.model.save("clustered.keras"); r.report["size"]["weights_gzip_ratio"]
    """
    config = config or ClusterConfig()
    keras = check_model(model, "cluster")
    if config.epochs > 0 and train is None:
        raise KerasTurboError("clustering with fine-tuning needs train data (--train-data), or pass epochs=0")
    new = copy_model(model)
    variables, rows = _kernels(new, config)
    if not variables:
        raise KerasTurboError(f"cluster: model {model.name!r} has no Conv/Dense kernel to cluster "
                              f"(with min_weights={config.min_weights} and exclude={list(config.exclude)})")
    sharer = _Sharer(variables, config.clusters)
    training = None
    if config.epochs > 0:
        class Snap(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                sharer.snap()

        training = finetune(new, train, epochs=config.epochs, batch_size=config.batch_size,
                            learning_rate=config.learning_rate, seed=config.seed, callbacks=[Snap()],
                            teacher=model)  # without labels it learns from the float model's outputs
        sharer.snap()
    distinct = {}
    for name, var in variables:
        distinct[name] = max(distinct.get(name, 0), int(np.unique(np.asarray(var.numpy())).size))
    for row in rows:
        if row["clustered"]:
            row["distinct_values"] = distinct[row["layer"]]
    # Sizes of a fresh, uncompiled copy of each: an optimizer's state saved in a .keras file
    # would otherwise be counted against the original and not the result.
    before, after = saved_sizes(copy_model(model)), saved_sizes(copy_model(new))
    size = {"before": before, "after": after,
            "keras_gzip_ratio": before["gzip_bytes"] / after["gzip_bytes"],
            "weights_gzip_ratio": before["weights_gzip_bytes"] / after["weights_gzip_bytes"],
            "kernels_gzip": _kernel_gzip(model, new, [n for n, _ in variables])}
    report = {"layers": rows, "clusters": config.clusters, "training": training, "size": size, "note": SIZE_NOTE,
              "accuracy_before": accuracy(model, val), "accuracy_after": accuracy(new, val)}
    return TechniqueResult("cluster", new, config, report)


def _kernel_gzip(before, after, names: list[str]) -> dict:
    """gzip bytes of the clustered kernels alone (float32), before and after: the part clustering
    acts on, with no container or unclustered weights around it."""
    def blob(model):
        parts = []
        for n in dict.fromkeys(names):
            layer = model.get_layer(n) if n in [layer.name for layer in model.layers] else None
            if layer is not None:
                parts.extend(np.ascontiguousarray(w.numpy(), dtype="float32").tobytes()
                             for w in layer.weights if "kernel" in w.path.split("/")[-1])
        return b"".join(parts)

    b, a = len(gzip.compress(blob(before), 9)), len(gzip.compress(blob(after), 9))
    return {"before": b, "after": a, "ratio": b / max(a, 1)}


def distinct_values(model) -> dict[str, int]:
    """Distinct values in each Conv/Dense kernel of `model` (what clustering bounds)."""
    out = {}
    for layer in leaf_layers(model):
        if type(layer).__name__ in CLUSTERABLE:
            for w in layer.weights:
                if "kernel" in w.path.split("/")[-1]:
                    out[layer.name] = max(out.get(layer.name, 0), int(np.unique(np.asarray(w.numpy())).size))
    return out

