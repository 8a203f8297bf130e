"""Fine-tuning the model itself, on its own outputs: the learning-rate check of the strength search.

Every technique that keeps the model's weights and trains them again (structured pruning, magnitude
pruning, input resolution, QAT) fine-tunes at some learning rate, and a rate that suits a small
network trained from scratch in minutes wrecks one trained for days on ImageNet: Adam at 1e-3 moves
every weight by about 1e-3 a step, as much as MobileNetV2's pointwise weights themselves. On the
shared ImageNet-trained MobileNetV2 (300 unlabelled photos, 2 epochs, distilled from itself,
200 labelled photos judged; benchmarks/trained.py), top-1 went from 76.5% to 64.5% at 1e-3,
74.5% at 3e-4 and 77.0% at 1e-4, with nothing about the network changed.

So optimize first fine-tunes the unchanged model on its own outputs at each rate of
`optimize.plan.LEARNING_RATES`, largest first, and the techniques train at the largest rate that
left the model within the budget (a rate that harms the unchanged model harms a pruned one as
much, and the technique would be blamed for it). That fine-tune is this module's `apply`: a
distilled fine-tune whose teacher is the model as given.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_turbo.data import Dataset
from keras_turbo.errors import KerasTurboError
from keras_turbo.techniques._training import DistilledFinetune, accuracy, check_model, copy_model
from keras_turbo.techniques.base import TechniqueResult

NO_TRAIN_DATA = "fine-tuning needs train data (--train-data)"


@dataclass(frozen=True)
class FinetuneConfig(DistilledFinetune):
    """How to fine-tune the model on its own outputs.

    Attributes:
        finetune, epochs, batch_size, learning_rate, distill, temperature, distill_weight, seed,
            patience: the fine-tune (`_training.DistilledFinetune`); distilled from the model as
            given by default (with labels, half the loss is cross-entropy on them), 2 epochs:
            the length of the shortest strength-search probe.

    Raises:
        KerasTurboError: a setting out of range.

    Example:
        >>> FinetuneConfig(learning_rate=1e-4)
    """

    epochs: int = 2
    distill: bool = True


def apply(model, config: FinetuneConfig | None = None, train: Dataset | None = None,
          val: Dataset | None = None) -> TechniqueResult:
    """Fine-tune a copy of `model`, the model itself its teacher.

    Args:
        model: a built keras.Model with one output; never changed.
        config: a `FinetuneConfig` (defaults if None).
        train: the train data; labels optional (without them the copy learns the model's outputs).
        val: labelled data for the accuracy before and after (optional), and early stopping with
            `config.patience`.

    Returns:
        A `TechniqueResult` with the fine-tuned copy and a report: accuracy before and after on
        `val`, and the fine-tune (`_training.finetune`'s report).

    Raises:
        KerasTurboError: no train data, or a model fine-tuning does not support (several outputs).

    Example:
        >>> r = apply(model, FinetuneConfig(learning_rate=1e-3), train, val)
        >>> r.report["accuracy_before"] - r.report["accuracy_after"]   # what the rate cost
    """
    cfg = config or FinetuneConfig()
    check_model(model, "fine-tune")
    if train is None:
        raise KerasTurboError(NO_TRAIN_DATA)
    new = copy_model(model)
    training = cfg.train(new, model, train, val) if cfg.finetune else None
    report = {"learning_rate": cfg.learning_rate, "finetune": training,
              "accuracy_before": accuracy(model, val), "accuracy_after": accuracy(new, val)}
    return TechniqueResult("finetune", new, cfg, report)


__all__ = ["FinetuneConfig", "apply"]
