"""Input resolution: the same network run on a smaller image, fine-tuned to it.

A convolutional network's work grows with the height x width of its input, and images are often
larger than the task needs (small objects photographed at 224 x 224, scans upsampled from a
low-resolution source). This technique shrinks the image by `factor` in front of the network, so
every layer after it runs on about 1/factor^2 of the positions, re-estimates the BatchNorm
statistics at the new scale, and fine-tunes the network, distilling from the original, to the
scale it now sees (the resolution knob of compound scaling, Tan & Le 2019, "EfficientNet"; why a
network needs fine-tuning at a new input size: Touvron et al. 2019, "Fixing the train-test
resolution discrepancy").

The model keeps its input: callers still feed full-size images, and the shrinking layer (named
`resolution_pool`) is the first layer. A whole factor is an `AveragePooling2D` of factor x factor
pixels with 'valid' padding (exact on every runtime); a fractional one (1.4: 224 -> 160) is a
bilinear `Resizing` to round(size / factor), a gentler step where halving costs accuracy. The weights are copied from the original, which works where no weight depends on
the height and width: convolutions, normalizations and a global-pooling head. A model whose head
flattens the spatial map into a Dense layer cannot take another size, and is refused with that
reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from keras_turbo.data import Dataset
from keras_turbo.describe import describe_keras
from keras_turbo.errors import KerasTurboError, bad_param, cause
from keras_turbo.model.graph import tensor_refs
from keras_turbo.techniques._training import (
    DistilledFinetune,
    accuracy,
    check_model,
    is_number,
    recalibrate_batchnorm,
    saved_sizes,
)
from keras_turbo.techniques.base import TechniqueResult

POOL = "resolution_pool"
NOTE = ("input resolution: the network runs on the image shrunk by the factor (average pooling, or a bilinear "
        "resize for a fractional factor), about 1/factor^2 of its FLOPs, its BatchNorm statistics re-estimated "
        "and its weights fine-tuned at that scale; the model still takes full-size images")
NO_TRAIN_DATA = "input resolution scaling fine-tunes the network to its new scale: it needs train data (--train-data)"


@dataclass(frozen=True)
class ResolutionConfig(DistilledFinetune):
    """How much to shrink the image the network sees, and how to fine-tune it.

    Attributes:
        factor: how many times smaller the image the network sees is, a number > 1: 2 runs the
            network on half the height and width (about a quarter of its FLOPs) by averaging
            2 x 2 pixels; a fractional factor resizes bilinearly (1.4: 224 -> 160, about half).
        finetune, epochs, batch_size, learning_rate, distill, temperature, distill_weight, seed,
            patience: the fine-tune at the new scale (`_training.DistilledFinetune`), here
            distilled from the original on the full-size image by default; False `finetune`
            returns the network as built (usually far below the original's accuracy).

    Raises:
        KerasTurboError: a setting out of range.

    Example:
        >>> ResolutionConfig(factor=2, epochs=20)
    """

    factor: float = 2
    distill: bool = True

    def __post_init__(self):
        if not is_number(self.factor) or not 1.0 < self.factor <= 64:
            raise bad_param("factor", "a number > 1 (2 = half the height and width; 1.4 = 224 -> 160)", self.factor)
        super().__post_init__()


def whole(factor: float) -> bool:
    """A whole factor is average pooling; any other a bilinear resize."""
    return float(factor).is_integer()


def shrunk(size: int, factor: float) -> int:
    """The side the network runs at: whole multiples of the pooling, else the nearest pixel."""
    return size // int(factor) if whole(factor) else max(1, round(size / factor))


def refusal(model, factor: float = 2) -> str | None:
    """Why this model cannot run at a smaller input (None: it may). Reads the model's inputs
    only; a head whose weights depend on the size shows when the weights are copied."""
    if len(model.inputs) != 1:
        return f"needs one image input, the model has {len(model.inputs)} inputs"
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        return f"needs an image input (batch, height, width, channels), the model's input is {shape}"
    h, w = shape[1], shape[2]
    if h is None or w is None:
        return "the model takes images of any size: feed smaller images instead"
    if min(shrunk(h, factor), shrunk(w, factor)) < 2:
        return f"the model's {h}x{w} input is too small to shrink by {factor:g}"
    return None


def _with_pool(keras, model, factor: float):
    """The model's architecture with the shrinking layer after its input (an average pooling by a
    whole `factor`, else a bilinear resize), built fresh (every layer takes its shape from it)."""
    cfg = copy.deepcopy(model.get_config())
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not layers or layers[0].get("class_name") != "InputLayer":
        raise KerasTurboError(f"input resolution: model {model.name!r} is not a functional or Sequential model "
                              "with an Input")
    names = {layer.get("config", {}).get("name") for layer in layers}
    pool_name = POOL if POOL not in names else next(f"{POOL}_{i}" for i in range(1, 10**6) if f"{POOL}_{i}" not in names)
    full = list(layers[0]["config"]["batch_shape"])
    pooled = [full[0], shrunk(full[1], factor), shrunk(full[2], factor), full[3]]
    if whole(factor):
        shrink = keras.layers.AveragePooling2D(int(factor), strides=int(factor), padding="valid", name=pool_name)
    else:  # bilinear with half-pixel centres, no antialiasing: one op on every runtime
        shrink = keras.layers.Resizing(pooled[1], pooled[2], interpolation="bilinear", name=pool_name)
    pool = keras.saving.serialize_keras_object(shrink)
    for layer in layers:
        layer.pop("build_config", None)  # the saved build shapes are the full-size ones
    # Resizing's call defaults to training=True, and Keras hands a layer's resolved `training` on
    # to the layers after it: a plain model(x) would then run every BatchNorm in training mode
    # (batch statistics, moving averages overwritten). An explicit None keeps the caller's mode,
    # or inference when the caller names none.
    kwargs = {} if whole(factor) else {"training": None}
    if isinstance(model, keras.Sequential):
        # Rebuilt as a functional model: a Sequential passes no explicit None to its layers.
        inp = keras.Input(batch_shape=tuple(full), dtype=layers[0]["config"].get("dtype", "float32"),
                          name=layers[0]["config"].get("name"))
        h = keras.saving.deserialize_keras_object(pool)(inp, **kwargs)
        for layer in layers[1:]:
            h = keras.saving.deserialize_keras_object(layer)(h)
        return keras.Model(inp, h, name=model.name), pool_name
    source = layers[0]["name"]
    for layer in layers[1:]:  # what read the input reads the shrinking layer instead
        for ref in tensor_refs(layer.get("inbound_nodes", [])):
            hist = ref["keras_history"]
            if isinstance(hist, (list, tuple)) and hist and hist[0] == source:
                ref["keras_history"] = [pool_name, *hist[1:]]
                ref["shape"] = pooled
    tensor = {"class_name": "__keras_tensor__",
              "config": {"shape": full, "dtype": layers[0]["config"].get("dtype", "float32"),
                         "keras_history": [source, 0, 0]}}
    layers.insert(1, {**pool, "name": pool_name, "inbound_nodes": [{"args": [tensor], "kwargs": kwargs}]})
    return keras.Model.from_config(cfg), pool_name


def _scaled(keras, model, factor: float):
    """The model with the shrinking layer in front and the original's weights (shared by nothing)."""
    try:
        new, pool_name = _with_pool(keras, model, factor)
    except KerasTurboError:
        raise
    except Exception as e:
        raise KerasTurboError(f"input resolution: model {model.name!r} cannot be rebuilt at 1/{factor:g} of its "
                              f"input's size ({cause(e)})") from e
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            new.get_layer(layer.name).set_weights(layer.get_weights())
        except Exception as e:  # a Dense behind a Flatten: its kernel's size is the spatial map's
            raise KerasTurboError(
                f"input resolution: layer {layer.name!r} has weights sized to the input's height and width "
                f"({cause(e)}); only a model whose weights fit any input size (convolutions and a global-pooling "
                "head) can run on a smaller image") from e
    new.name = f"{model.name}_res{factor:g}".replace(".", "_")
    return new, pool_name


def apply(model, config: ResolutionConfig | None = None, train: Dataset | None = None,
          val: Dataset | None = None) -> TechniqueResult:
    """Run the model on its image shrunk by `config.factor`, fine-tuned to that scale.

    With train data, the BatchNorm statistics are first re-estimated on it at the new scale
    (`recalibrate_batchnorm`; on MobileNetV2 at 1/2 size this alone took the held-out accuracy
    from 20% to 56%), then the weights are fine-tuned when `config.finetune` says so.

    Args:
        model: a built functional or Sequential keras.Model with one image input (batch, height,
            width, channels) of fixed size. It is not changed.
        config: a `ResolutionConfig`; default `ResolutionConfig()` (factor 2, 10 epochs distilled
            from the original).
        train: data to fine-tune on; needed when `config.finetune` is True. Without fine-tuning
            it still serves, labels or not, to re-estimate the BatchNorm statistics.
        val: labelled data for the accuracy before and after (optional), and for early stopping
            with `config.patience`.

    Returns:
        A `TechniqueResult` whose `model` takes the same full-size input and outputs as the
        original, and whose `report` holds the factor, the size the network now runs at, FLOPs
        before and after, accuracy before and after on `val`, the fine-tuning, and the sizes.

    Raises:
        KerasTurboError: bad settings, no train data to fine-tune on, a model that is not one
            fixed-size image input, or one whose weights depend on the input's size.

    Example:
        >>> from keras_turbo.techniques import resolution
        >>> res = resolution.apply(model, resolution.ResolutionConfig(factor=2), train, val)
        >>> res.report["flops_reduction"]
        3.9
    """
    config = config or ResolutionConfig()
    keras = check_model(model, "input resolution")
    why = refusal(model, config.factor)
    if why:
        raise KerasTurboError(f"input resolution: {why}")
    if config.finetune and train is None:
        raise KerasTurboError(NO_TRAIN_DATA)
    new, pool_name = _scaled(keras, model, config.factor)
    training, recalibrated = None, 0
    if train is not None:
        recalibrated = recalibrate_batchnorm(new, train, config.batch_size)
    if config.finetune:
        training = config.train(new, model, train, val)
    report = _report(model, new, config, pool_name, val, recalibrated, training)
    return TechniqueResult("resolution", new, config, report)


def _report(model, new, config: ResolutionConfig, pool_name: str, val: Dataset | None, recalibrated: int,
            training: dict | None) -> dict:
    """`apply`'s report: the scale, FLOPs and accuracy before and after, the BatchNorm
    re-estimation, the fine-tuning and the saved sizes."""
    before, after = describe_keras(model), describe_keras(new)
    runs_at = tuple(new.get_layer(pool_name).output.shape[1:3])
    return {
        "factor": config.factor,
        "input": list(model.inputs[0].shape[1:3]),
        "runs_at": list(runs_at),
        "params_before": before["params"], "params_after": after["params"],
        "flops_before": before["flops_per_sample"], "flops_after": after["flops_per_sample"],
        "flops_reduction": round(before["flops_per_sample"] / max(after["flops_per_sample"], 1), 3),
        "accuracy_before": accuracy(model, val),
        "accuracy_after": accuracy(new, val),
        "val_samples": len(val) if val is not None else 0,
        "batchnorm_recalibrated": recalibrated,
        "finetune": training,
        "size": {"before": saved_sizes(model, compress=False), "after": saved_sizes(new, compress=False)},
        "note": NOTE,
    }


__all__ = ["ResolutionConfig", "apply", "refusal", "shrunk", "whole"]
