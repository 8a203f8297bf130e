"""What the training techniques share: settings checks, copying a model, feeding it, accuracy,
the logits behind a softmax, saved sizes, fine-tuning, and the ONE distillation loss.

Every technique (prune, structured, distill, qat, cluster) imports these public names from here;
none reaches into another technique's module. Accuracy is `keras_turbo.quality`'s top-1, so a
technique's report and `evaluate` judge a model by the same rule.
"""

from __future__ import annotations

import functools
import gzip
import contextlib
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from keras_turbo import _tf, quality
from keras_turbo.config import TechniqueConfig
from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError, bad_param, first_line
from keras_turbo.model.graph import producer

# Below this a probability is treated as this: log(p) of a softmax output must stay finite.
LOG_CLIP = 1e-7
NO_FINETUNE_DATA = "pruning with fine-tuning needs train data (--train-data), or pass --no-finetune"


# ---------------------------------------------------------------- settings checks

def is_number(v) -> bool:
    """An int or a float, not a bool (True is an int to Python, never a setting's number here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_fraction(name: str, v) -> None:
    """Raises `bad_param` unless `v` is a float in [0, 1)."""
    if not is_number(v) or not 0.0 <= v < 1.0:
        raise bad_param(name, "a float in [0, 1)", v)


def check_training(epochs, batch_size, learning_rate) -> None:
    """The fine-tuning settings every technique shares; raises `bad_param` on the first bad one."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise bad_param("epochs", "an integer >= 1", epochs)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise bad_param("batch_size", "an integer >= 1", batch_size)
    if not is_number(learning_rate) or not learning_rate > 0:
        raise bad_param("learning_rate", "a number > 0", learning_rate)


def check_model(model, technique: str):
    """The input must be a built Keras model; returns the keras module.

    Raises:
        KerasTurboError: not a keras.Model, or not built.
    """
    keras = _tf.keras()
    if not isinstance(model, keras.Model):
        raise KerasTurboError(f"{technique}: expected a keras.Model, received {type(model).__name__} "
                              "(load a file with keras_turbo.load_model first)")
    if not model.built:
        raise KerasTurboError(f"{technique}: the model {model.name!r} is not built (call it on data or build it first)")
    return keras


# ---------------------------------------------------------------- copying and running a model

def clone_layer(layer, config: dict | None = None):
    """A new layer like `layer` (from its config, or from `config` when given), without weights.

    A Lambda is re-created through `deserialize_keras_object(safe_mode=False)`: Keras' safe mode
    keeps code in untrusted *files* from running, and this layer's code already runs in this
    process, so re-creating it from the live object runs nothing new.
    """
    keras = _tf.keras()
    if isinstance(layer, keras.layers.Lambda):
        return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer), safe_mode=False)
    return type(layer).from_config(layer.get_config() if config is None else config)


def copy_model(model):
    """A new model with the same architecture and weights, sharing nothing with `model`.

    Raises:
        KerasTurboError: a model Keras cannot clone (custom layers without a config, subclassed).
    """
    keras = _tf.keras()
    try:
        new = keras.models.clone_model(model, clone_function=clone_layer)
    except Exception as e:  # a custom layer without get_config/from_config, a subclassed model
        raise KerasTurboError(f"cannot copy model {model.name!r} to transform it ({type(e).__name__}: "
                              f"{first_line(e)}); functional and Sequential models of "
                              "serializable layers are supported") from e
    new.set_weights(model.get_weights())
    return new


def feed(model, x: tuple[np.ndarray, ...]):
    """Dataset inputs (in input-name order, data.py) -> what the Keras model takes: the array
    itself for one input, a dict by input name for several (Keras' own input order may differ)."""
    if len(x) == 1:
        return x[0]
    names = sorted(t.name.split(":")[0] for t in model.inputs)
    return dict(zip(names, x))


def probe_feed(model, x: tuple[np.ndarray, ...]):
    """`feed` for a probe model built on a graph's input list: a one-input graph takes a list."""
    out = feed(model, x)
    return out if isinstance(out, dict) else [out]


#: a batch's activations of every probed layer at once must fit in memory
STAT_BATCH = 32

#: the layer types whose kernel is one matrix product per position when it is 1 wide (exact
#: types: a subclass may use its kernel otherwise; a transposed convolution's kernel is laid out
#: (..., out, in), a separable one's has no `kernel`)
POINTWISE_TYPES = ("Dense", "Conv1D", "Conv2D", "Conv3D")


def pointwise_strides(layer) -> tuple[int, ...] | None:
    """The strides of a Dense layer (none) or an ungrouped 1 x 1 convolution; None for any other
    layer: what structured pruning's refit and magnitude pruning's reconstruction re-solve by
    least squares is a matrix product per position."""
    w = getattr(layer, "kernel", None)
    if w is None or type(layer).__name__ not in POINTWISE_TYPES:
        return None
    if len(w.shape) == 2:
        return ()
    if all(k == 1 for k in tuple(w.shape)[:-2]) and getattr(layer, "groups", 1) == 1:
        return tuple(layer.strides)
    return None


def kernel_rows(a: np.ndarray, strides: tuple[int, ...]) -> np.ndarray:
    """A pointwise layer's input batch `a` as the rows its kernel multiplies: the positions its
    strides visit, one row each (the dtype kept: a caller may draw rows before widening them)."""
    if strides:
        a = a[(slice(None), *(slice(None, None, st) for st in strides))]
    return a.reshape(-1, a.shape[-1])


def input_statistics(view, layers: list[str], data: Dataset, samples: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """layer -> (mean, standard deviation) of every channel of its input (the last axis) over
    up to `samples` samples of the data, from one pass of a probe model over the functional
    graph `view` (each layer called once)."""
    keras = _tf.keras()
    data = data.take(samples)
    probe = keras.Model(view.inputs, [view.get_layer(name).input for name in layers])
    sums = [np.zeros(int(view.get_layer(name).input.shape[-1])) for name in layers]
    squares = [np.zeros_like(t) for t in sums]
    rows = [0] * len(layers)
    for start in range(0, len(data), STAT_BATCH):
        outs = probe(probe_feed(probe, tuple(a[start:start + STAT_BATCH] for a in data.x)), training=False)
        for i, o in enumerate(outs if isinstance(outs, (list, tuple)) else [outs]):
            a = np.asarray(o, dtype=np.float64).reshape(-1, sums[i].shape[0])
            sums[i] += a.sum(0)
            squares[i] += np.square(a).sum(0)
            rows[i] += a.shape[0]
    out = {}
    for name, t, q, r in zip(layers, sums, squares, rows):
        mean = t / max(r, 1)
        out[name] = (mean, np.sqrt(np.maximum(q / max(r, 1) - np.square(mean), 0.0)))
    return out


def predict(model, x: tuple[np.ndarray, ...], batch_size: int = 256) -> np.ndarray:
    """The model's one output on dataset inputs.

    Raises:
        KerasTurboError: the model has several outputs.
    """
    out = model.predict(feed(model, x), batch_size=batch_size, verbose=0)
    if isinstance(out, (list, tuple, dict)):
        raise KerasTurboError(f"model {model.name!r} has several outputs; fine-tuning and accuracy need one output")
    return np.asarray(out)


def accuracy(model, ds: Dataset | None) -> float | None:
    """Top-1 accuracy on labelled data, by `keras_turbo.quality` (None without data or labels,
    for several outputs, or for an output that is not one score vector per sample)."""
    if ds is None or ds.y is None or len(model.outputs) != 1:
        return None
    out = predict(model, ds.x)
    if out.ndim != 2:
        return None
    return quality.accuracy(out, ds.y)


def looks_like_probabilities(out: np.ndarray) -> bool:
    """A softmax (or sigmoid) output, rather than logits: decides the loss's `from_logits`.
    Checked on the numbers because the softmax may sit in a Dense, an Activation or a Softmax layer."""
    if out.shape[-1] == 1:
        return bool(np.all((out >= 0) & (out <= 1)))
    return bool(np.all(out >= -1e-6) and np.allclose(out.sum(-1), 1.0, atol=1e-3))


# ---------------------------------------------------------------- logits behind a softmax

@functools.cache
def linear_dense_class():
    """The `LinearDense` layer class (made on first use: defining it needs Keras imported)."""
    keras = _tf.keras()

    class LinearDense(keras.layers.Layer):
        """A Dense layer's affine part (no activation), computed with that layer's own variables:
        Keras tracks the wrapped layer, so fitting a model that holds this layer trains the Dense."""

        def __init__(self, dense, **kwargs):
            super().__init__(**kwargs)
            self.dense = dense

        def call(self, h):
            z = keras.ops.matmul(h, self.dense.kernel)
            return z + self.dense.bias if self.dense.use_bias else z

    return LinearDense


def logits_view(model):
    """The model's scores before its softmax, as a model that shares the weights; None when the
    output is not a softmax the code can see (a user model with logits, or a custom head).

    Why: log(softmax) recovered from probabilities must clip at some tiny p, and where the clip
    bites its gradient is zero: a student the hard labels have made very sure can then no longer
    be pulled back towards the teacher's softened ranking of the wrong classes, which is the
    whole point of a distillation loss. Training on real logits keeps that gradient everywhere;
    every fine-tuning here (`finetune`, distill.apply) trains through this view where it exists.
    A softmax in its own layer is cut off (the view ends at that layer's input); a softmax fused
    into the last Dense is replaced by that Dense's affine part, computed with the same kernel
    and bias variables, so training the view trains the model itself.
    """
    keras = _tf.keras()
    if len(model.outputs) != 1:
        return None
    layer = producer(model.outputs[0])
    if not isinstance(layer, keras.layers.Layer) or len(getattr(layer, "_inbound_nodes", [])) != 1:
        return None  # a shared or nested output layer: its input is not one tensor of this model
    act = layer.get_config().get("activation")
    if isinstance(layer, keras.layers.Softmax) or (isinstance(layer, keras.layers.Activation) and act == "softmax"):
        return keras.Model(model.inputs, layer.input, name=f"{model.name}_logits")
    if act == "softmax" and type(layer) is keras.layers.Dense and layer.quantization_mode is None:
        linear = linear_dense_class()(layer, name=f"{layer.name}_logits")
        return keras.Model(model.inputs, linear(layer.input), name=f"{model.name}_logits")
    return None


def saved_sizes(model, compress: bool = True) -> dict:
    """Bytes of the saved `.keras` file and, with `compress`, gzipped (level 9), and of all the
    weights as raw float32 gzipped (the container-free measure of what zeros buy)."""
    keras = _tf.keras()
    fd, path = tempfile.mkstemp(suffix=".keras")
    os.close(fd)
    try:
        keras.saving.save_model(model, path)
        with open(path, "rb") as fh:
            data = fh.read()
    finally:
        os.unlink(path)
    if not compress:
        return {"keras_bytes": len(data)}
    weights = b"".join(np.ascontiguousarray(w, dtype="float32").tobytes() for w in model.get_weights())
    return {"keras_bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9)),
            "weights_bytes": len(weights), "weights_gzip_bytes": len(gzip.compress(weights, 9))}


# ---------------------------------------------------------------- the one distillation loss

def as_logits(ops, out, probs: bool):
    """`out` as logits: log(p) for probabilities (a logit up to a per-row constant, which a
    softmax ignores), `out` itself otherwise."""
    return ops.log(ops.clip(out, LOG_CLIP, 1.0)) if probs else out


def distillation_loss(ops, *, temperature: float, soft_weight: float, hard_weight: float,
                      label_layout: str = "id", teacher_probs: bool = False, student_probs: bool = False):
    """The distillation loss every technique trains with (Hinton et al., 2015), per sample:

        soft_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
      + hard_weight * cross-entropy(labels, softmax(student))

    The T^2 keeps the soft term's gradients the same size whatever T is. A term whose weight is
    0 is not computed (so an all-zero label row, an unlabelled sample, adds nothing).

    Args:
        ops: `keras.ops`.
        temperature: T, > 0.
        soft_weight / hard_weight: the two terms' weights, as they stand (no 1 - w inside).
        label_layout: how y_true begins: "id" (one column, the class id) or "distribution"
            (one column per class: a one-hot row, a mix of two under mixup, or all zeros for a
            sample without a label). The teacher's outputs (one column per class) follow.
        teacher_probs / student_probs: whether the teacher's packed outputs / the student's
            outputs are probabilities (turned into logits by log(p)) rather than logits.

    Returns:
        A Keras loss `loss(y_true, y_pred)` giving one value per sample.

    Raises:
        ValueError: an unknown `label_layout`.

    Example:
        >>> loss = distillation_loss(keras.ops, temperature=2.0, soft_weight=1.0, hard_weight=0.5,
        ...                          label_layout="distribution")
        >>> model.compile(optimizer="adam", loss=loss)   # y: [one-hot labels, teacher logits]
    """
    if label_layout not in ("id", "distribution"):
        raise ValueError(f"label_layout must be 'id' or 'distribution', received {label_layout!r}")
    t2 = temperature ** 2

    def loss(y_true, y_pred):
        classes = int(y_pred.shape[-1])
        split = 1 if label_layout == "id" else classes
        s_logits = as_logits(ops, y_pred, student_probs)
        total = 0.0
        if soft_weight:
            t_logits = as_logits(ops, y_true[:, split:], teacher_probs)
            t = ops.softmax(t_logits / temperature, axis=-1)
            kl = ops.sum(t * (ops.log_softmax(t_logits / temperature, axis=-1)
                              - ops.log_softmax(s_logits / temperature, axis=-1)), axis=-1)
            total = soft_weight * t2 * kl
        if hard_weight:
            log_s = ops.log_softmax(s_logits, axis=-1)
            if label_layout == "id":
                labels = ops.one_hot(ops.cast(y_true[:, 0], "int32"), classes, dtype=log_s.dtype)
            else:
                labels = y_true[:, :classes]
            total = total + hard_weight * -ops.sum(labels * log_s, axis=-1)
        return total

    return loss


def finetune_loss_weights(distill_weight: float, labels: bool) -> tuple[float, float]:
    """`finetune(distill=True)`'s (soft_weight, hard_weight): `distill_weight` of the soft term
    and the rest, 1 - `distill_weight`, of cross-entropy on the labels; the soft term alone
    (weight 1) when there are no labels."""
    return (distill_weight, 1.0 - distill_weight) if labels else (1.0, 0.0)


# ---------------------------------------------------------------- BatchNorm statistics

def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of `model`, nested models included."""
    keras = _tf.keras()
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
        elif isinstance(layer, keras.Model):
            out.extend(batchnorm_layers(layer))
    return out


def sole_batchnorm(layer):
    """The BatchNormalization that alone reads `layer`'s output (where a change to the layer's
    output can be made up for in the BatchNorm's parameters), or None."""
    keras = _tf.keras()
    consumers = [n.operation for n in layer._outbound_nodes]
    if len(consumers) == 1 and isinstance(consumers[0], keras.layers.BatchNormalization):
        return consumers[0]
    return None


def holds_statistics(layer) -> bool:
    """Whether a BatchNormalization layer normalizes with statistics it holds. One set to identity
    (moving mean 0, moving variance + epsilon 1: its statistics folded into the layer before it,
    as in a model recovered from an int8 export, like the shared ImageNet MobileNetV2) holds none:
    batch statistics in its place normalize activations the folded weights already scale, and on
    that MobileNetV2 one epoch of fine-tuning took top-1 from 76% to 0% that way."""
    mean, var = np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)
    return not (np.abs(mean).max(initial=0.0) < 1e-6 and np.abs(var + layer.epsilon - 1.0).max(initial=0.0) < 1e-5)


def recalibrate_batchnorm(model, data: Dataset, batch_size: int = 32, max_samples: int = 1024) -> int:
    """Re-estimate every BatchNorm layer's moving mean and variance on `data` (up to
    `max_samples` of its inputs; labels unused), in place; returns the number of samples used.

    Why: a transform that changes what a layer sees (a smaller input image, pruned channels)
    leaves the statistics of the old activations behind, and inference normalizes with them.
    The batches run in training mode with each layer's momentum set so that its moving value
    becomes the plain average over the batches seen so far (as PyTorch's `update_bn`); the
    momenta are put back after. Training mode also runs any Dropout, as `update_bn` does.
    """
    layers = [layer for layer in batchnorm_layers(model) if holds_statistics(layer)]  # folded ones stay identity
    if not layers or data is None or len(data) == 0:
        return 0
    n = min(len(data), max_samples)
    momenta = [layer.momentum for layer in layers]
    try:
        for i, start in enumerate(range(0, n, batch_size)):
            for layer in layers:
                layer.momentum = i / (i + 1)  # batch i weighs 1/(i+1): the running plain average
            model(feed(model, tuple(a[start:min(start + batch_size, n)] for a in data.x)), training=True)
    finally:
        for layer, m in zip(layers, momenta):
            layer.momentum = m
    return n


def _short_momentum(layers: list, steps_per_epoch: int) -> list:
    """Lower the layers' BatchNorm momentum for a short fine-tune; returns the old momenta.

    The moving statistics are what inference normalizes with, and a fine-tune judged after each
    epoch (and deployed after its last) needs them to follow the weights it trains. With Keras'
    MobileNetV2 momentum of 0.999, 48 steps (6 epochs of 256 samples) move them by 5%: the
    model would be judged with the statistics of the weights it started from. A momentum of
    1 - 1/steps_per_epoch averages over about the last epoch instead. Training itself
    normalizes by each batch's own statistics, so this changes nothing else.
    """
    target = 1.0 - 1.0 / max(1, steps_per_epoch)
    old = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = min(layer.momentum, target)
    return old


# ---------------------------------------------------------------- fine-tuning

def _val_cross_entropy(out: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of class scores (probabilities, or logits turned into them) on labels."""
    if not looks_like_probabilities(out):
        z = out - out.max(axis=1, keepdims=True)
        out = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(np.clip(out[np.arange(len(y)), y], 1e-7, 1.0))))


def _judged(model, val: Dataset) -> tuple[float, tuple[float, float]]:
    """(val accuracy, the score epochs are compared by: accuracy, then lower cross-entropy)."""
    out = predict(model, val.x)
    acc = quality.accuracy(out, val.y)
    return acc, (acc, -_val_cross_entropy(out, val.y))


def _better(score, than) -> bool:
    """Whether one `_judged` score beats another: higher accuracy, or equal and lower cross-entropy."""
    return score[0] > than[0] + 1e-9 or (abs(score[0] - than[0]) <= 1e-9 and score[1] > than[1])


def best_on_val(keras, model, val: Dataset, patience: int):
    """A Keras callback that judges `model` on `val` after every epoch, keeps the best weights,
    and stops the training after `patience` epochs without improvement: training long enough,
    and no longer. `restore()` puts the best weights back.

    An epoch is better when its val accuracy is higher, or equal with a lower val cross-entropy.
    On a small split the accuracy is coarse (one sample of 188 is half a point) and sits on a
    plateau while the cosine schedule is still at its large steps: judged by accuracy alone, the
    training stopped there, on weights no small step had settled (digits CNN, structured pruning
    at flops/1.5: best epoch 2 of 7 run, 2.2 points down on the test split; the cross-entropy keeps
    falling as the steps shrink, so the training goes on to settled weights).

    The starting weights are judged too, as epoch 0: where no epoch beats them, they are what
    `restore()` puts back. A fine-tune on a few hundred photos can cost more than it recovers (the
    ImageNet MobileNetV2 at 1/1.25 resolution: 73.0% top-1 as it started, 71.0% after 6 epochs at
    1e-4). Epoch 0 does not count towards `patience`: a cosine schedule's first, large steps may
    dip below the start before they pass it."""

    class BestOnVal(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best, self.weights, self.best_epoch, self.wait, self.curve = (-1.0, 0.0), None, 0, 0, []
            self.start, self.start_weights = None, None

        def on_train_begin(self, logs=None):
            _acc, self.start = _judged(model, val)
            self.start_weights = model.get_weights()

        def on_epoch_end(self, epoch, logs=None):
            acc, score = _judged(model, val)
            self.curve.append(acc)
            if _better(score, self.best):
                self.best, self.weights, self.best_epoch, self.wait = score, model.get_weights(), epoch + 1, 0
            else:
                self.wait += 1
                if self.wait >= patience:
                    self.model.stop_training = True

        def restore(self) -> dict:
            if self.start is not None and (self.weights is None or _better(self.start, self.best)):
                self.best, self.weights, self.best_epoch = self.start, self.start_weights, 0
            if self.weights is not None:
                model.set_weights(self.weights)
            return {"patience": patience, "epochs_run": len(self.curve), "best_epoch": self.best_epoch,
                    "start_kept": self.best_epoch == 0 and self.start is not None,
                    "val_accuracy": self.best[0], "val_cross_entropy": round(-self.best[1], 5), "val_samples": len(val)}

    return BestOnVal()


def finetune(model, train: Dataset, *, epochs: int, batch_size: int, learning_rate: float, seed: int = 0,
             teacher=None, distill: bool = False, temperature: float = 4.0, distill_weight: float = 0.5,
             callbacks=(), val: Dataset | None = None, patience: int | None = None, keep_start: bool = False) -> dict:
    """Train `model` in place on `train` (Adam, cosine learning-rate decay to zero).

    While it trains, BatchNorm momenta are lowered to about one epoch's average (see
    `_short_momentum`), so the moving statistics follow the weights; they are put back after.

    The loss: sparse cross-entropy on the labels of a classifier; with `distill`, the one
    `distillation_loss` with soft_weight = `distill_weight` and hard_weight = 1 - `distill_weight`
    (so `distill_weight` 0.5 weighs T^2 KL and cross-entropy equally, 1 is pure distillation).
    Where labels cannot serve (none given, or the model is not a classifier), the `teacher`'s
    outputs are the target instead (the soft term alone for classifiers, mean squared error
    otherwise). A softmax classifier trains through its logits (`logits_view`).

    Args:
        model: the Keras model to train; its weights change (pass a copy to keep the original).
        train: the train data; labels optional when a `teacher` is given.
        epochs / batch_size / learning_rate / seed: the training.
        teacher: the model to distill from, or to copy where there are no labels.
        distill / temperature / distill_weight: the distillation loss's use and settings.
        callbacks: Keras callbacks for `fit` (e.g. pruning masks).
        val / patience: early stopping: with labelled `val` and `patience`, the model is judged on
            `val` after each epoch, the best epoch's weights are kept, and training stops after
            `patience` epochs without improvement.
        keep_start: with labelled `val` (and no `patience`, which judges the start already),
            the whole schedule is trained and then judged on `val` beside the weights it started
            from; the starting weights are put back where they score better (`start_check`).

    Returns:
        {"epochs", "steps", "samples", "labels" (bool), "learning_rate", "loss", "final_loss"}: the report's.

    Raises:
        KerasTurboError: several outputs; no labels (or not a classifier) and no teacher.

    Example:
        >>> finetune(work, train, epochs=2, batch_size=32, learning_rate=1e-3, teacher=model, distill=True)
    """
    keras = _tf.keras()
    keras.utils.set_random_seed(seed)
    trained, classifier, probs, labels = _what_trains(model, train, teacher, distill)
    loss, y, kind = _finetune_target(keras, train, teacher, classifier, labels, probs,
                                     distill=distill, temperature=temperature, distill_weight=distill_weight)
    steps = epochs * math.ceil(len(train) / batch_size)
    # Cosine decay to zero: the last steps are small, so the model ends settled (at the final
    # masks, when pruning) rather than wherever the last large step left it.
    lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    judged = val is not None and val.y is not None
    with _folded_batchnorms_frozen(model):
        trained.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
        stop = best_on_val(keras, model, val, patience) if patience and judged else None
        start = (model.get_weights(), _judged(model, val)[1]) if keep_start and judged and not stop else None
        hist = _fit(model, trained, train, y, epochs=epochs, batch_size=batch_size,
                    callbacks=list(callbacks) + ([stop] if stop else []))
    losses = [float(v) for v in hist.history.get("loss", [])]
    return {"epochs": epochs, "steps": steps, "samples": len(train), "labels": bool(labels), "learning_rate": f"{learning_rate} with cosine decay", "loss": kind,
            "final_loss": losses[-1] if losses else None, "early_stopping": stop.restore() if stop else None,
            "start_check": _start_check(model, val, *start) if start else None}


def _what_trains(model, train: Dataset, teacher, distill: bool) -> tuple:
    """`finetune`'s checks, then (the model it trains, classifier, outputs probabilities,
    trains on labels); raises where there is one output too many or nothing to learn from."""
    if len(model.outputs) != 1:
        raise KerasTurboError(f"model {model.name!r} has {len(model.outputs)} outputs; fine-tuning supports one "
                              "(pass finetune=False)")
    trained, classifier, probs = _trained_view(model, train)
    labels = train.y is not None and classifier
    if teacher is None and (distill or not labels):
        what = "no labels" if train.y is None else "labels, but the output is not a class score"
        raise KerasTurboError(f"fine-tuning needs labelled train data for a classifier, or a teacher "
                              f"(train data {train.source}: {what})")
    return trained, classifier, probs, labels


def _start_check(model, val: Dataset, weights: list, start: tuple) -> dict:
    """`finetune`'s keep_start: the trained weights judged on `val` beside the starting ones
    (`start`, their score), which are put back where they score better."""
    trained = _judged(model, val)[1]
    kept = _better(start, trained)
    if kept:
        model.set_weights(weights)
    return {"start_kept": kept, "val_accuracy_start": start[0], "val_accuracy_trained": trained[0], "val_samples": len(val)}


@contextlib.contextmanager
def _folded_batchnorms_frozen(model):
    """A folded BatchNorm (`holds_statistics` False) trains in inference mode: Keras runs a
    non-trainable BatchNormalization so. Set before compiling, put back after."""
    folded = [(b, b.trainable) for b in batchnorm_layers(model) if not holds_statistics(b)]
    for b, _ in folded:
        b.trainable = False
    try:
        yield
    finally:
        for b, was in folded:
            b.trainable = was


def _trained_view(model, train: Dataset) -> tuple:
    """(the model `finetune` trains, whether it is a classifier, whether what it trains outputs
    probabilities): judged from its outputs on a few train samples."""
    probe = predict(model, tuple(a[:64] for a in train.x))
    classifier = probe.ndim == 2 and probe.shape[-1] > 1
    # Train a softmax classifier through its logits (same variables; see logits_view).
    trained = logits_view(model) if classifier and looks_like_probabilities(probe) else None
    probs = trained is None and looks_like_probabilities(probe)
    return trained or model, classifier, probs


def _fit(model, trained, train: Dataset, y, *, epochs: int, batch_size: int, callbacks: list):
    """`trained.fit` on `train`'s inputs and the target `y`, with `model`'s BatchNorm momenta
    lowered to about one epoch's average while it runs (`_short_momentum`) and put back after."""
    norms = batchnorm_layers(model)
    momenta = _short_momentum(norms, math.ceil(len(train) / batch_size))
    try:
        return trained.fit(feed(model, train.x), y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
                           callbacks=callbacks)
    finally:
        for layer, m in zip(norms, momenta):
            layer.momentum = m


def _finetune_target(keras, train: Dataset, teacher, classifier: bool, labels: bool, probs: bool, *,
                     distill: bool, temperature: float, distill_weight: float):
    """(loss, y, description) of `finetune`: labels alone, the distillation loss, or the
    teacher's outputs under mean squared error."""
    if labels and not distill:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=not probs), train.y, "cross-entropy"
    t_view = logits_view(teacher) if classifier else None
    t_out = predict(t_view or teacher, train.x).astype("float32")
    if not classifier:
        return "mse", t_out, "mean squared error to the teacher"
    soft, hard = finetune_loss_weights(distill_weight, labels)
    label_col = (train.y if labels else np.zeros(len(t_out))).astype("float32")[:, None]
    loss = distillation_loss(keras.ops, temperature=temperature, soft_weight=soft, hard_weight=hard,
                             label_layout="id", teacher_probs=t_view is None and looks_like_probabilities(t_out),
                             student_probs=probs)
    kind = f"distillation (T={temperature}, weight {soft})" + (" + cross-entropy" if labels else "")
    return loss, np.concatenate([label_col, t_out], axis=1), kind


# ---------------------------------------------------------------- a distilled fine-tune's settings

@dataclass(frozen=True)
class DistilledFinetune(TechniqueConfig):
    """The fine-tune of a transform that keeps the original model as its teacher (structured
    pruning, input resolution): the fields, their check and the one call, written once.

    Attributes:
        finetune: train the transformed model on train data; False returns it as built.
        epochs / batch_size / learning_rate: the fine-tuning (Adam with cosine decay).
        distill: fine-tune with the original model as teacher (the one distillation loss,
            `distillation_loss`).
        temperature / distill_weight: the distillation's softmax temperature T and the weight
            of its soft term: the loss is distill_weight x T^2 KL + (1 - distill_weight) x
            cross-entropy on the labels (without labels the soft term alone). `DistillConfig.alpha`
            is instead the hard term's weight beside a soft term of weight 1.
        seed: seeds Keras' random state for the fine-tuning.
        patience: early stopping: with `val` data given to `apply`, keep the best epoch's weights
            and stop after this many epochs without improvement (None: train every epoch).
        keep_start: with labelled `val` data given to `apply`, train every epoch, then judge the
            result beside the model as built and keep whichever scores better on `val`: on a few
            hundred photos a fine-tune can cost more than it recovers (the ImageNet MobileNetV2
            at 1/1.4 resolution: 2.7 points below float on 1,000 photos as built, 4.5 after 6
            epochs at 1e-4 on 300 others; benchmarks/resolution_trained.py).

    Raises:
        KerasTurboError: a setting out of range.
    """

    finetune: bool = True
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    distill: bool = False
    temperature: float = 4.0
    distill_weight: float = 0.5
    seed: int = 0
    patience: int | None = None
    keep_start: bool = False

    def __post_init__(self):
        check_training(self.epochs, self.batch_size, self.learning_rate)
        if not isinstance(self.keep_start, bool):
            raise bad_param("keep_start", "True or False", self.keep_start)
        if not is_number(self.temperature) or not self.temperature > 0:
            raise bad_param("temperature", "a number > 0", self.temperature)
        if not is_number(self.distill_weight) or not 0 <= self.distill_weight <= 1:
            raise bad_param("distill_weight", "a number in [0, 1]", self.distill_weight)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad_param("seed", "an integer", self.seed)
        p = self.patience
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise bad_param("patience", "an integer >= 1 or None", p)

    def train(self, new, teacher, train: Dataset, val: Dataset | None = None) -> dict:
        """Fine-tune `new` in place with these settings, `teacher` the original (early stopping
        on `val` with `patience`, the start kept on `val` with `keep_start`); returns `finetune`'s report. Training runs on a copy (fitting
        compiles a model; the one handed back stays uncompiled)."""
        work = copy_model(new)
        report = finetune(work, train, epochs=self.epochs, batch_size=self.batch_size,
                          learning_rate=self.learning_rate, seed=self.seed, teacher=teacher, distill=self.distill,
                          temperature=self.temperature, distill_weight=self.distill_weight, val=val,
                          patience=self.patience, keep_start=self.keep_start)
        new.set_weights(work.get_weights())
        return report


__all__ = ["NO_FINETUNE_DATA", "DistilledFinetune", "accuracy", "as_logits", "batchnorm_layers", "check_fraction", "check_model",
           "check_training", "clone_layer", "copy_model", "distillation_loss", "feed", "finetune",
           "finetune_loss_weights", "holds_statistics", "input_statistics", "is_number", "linear_dense_class", "logits_view", "looks_like_probabilities",
           "predict", "probe_feed", "recalibrate_batchnorm", "saved_sizes", "sole_batchnorm", "STAT_BATCH"]
