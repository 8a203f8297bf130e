"""Techniques that build a new, faster or smaller Keras model from a given one.

Each is one module with a frozen config and `apply(model, config, train, val) -> TechniqueResult`;
none changes its input model. The registry is a dict written out by hand: name -> (config
class, apply function).
"""

from __future__ import annotations

from keras_turbo.techniques import biascorrect, cluster, distill, equalize, finetune, prune, qat, resolution, structured
from keras_turbo.techniques.base import TechniqueConfig, TechniqueResult

TECHNIQUES: dict[str, tuple[type, object]] = {
    "prune": (prune.PruneConfig, prune.apply),                  # magnitude pruning: zeros, smaller when compressed
    "structured": (structured.StructuredConfig, structured.apply),  # channel pruning: a smaller dense model
    "distill": (distill.DistillConfig, distill.apply),          # a lighter student taught by the model
    "qat": (qat.QATConfig, qat.apply),                          # quantization-aware training, exported to int8
    "cluster": (cluster.ClusterConfig, cluster.apply),          # weight sharing: smaller when compressed
    "equalize": (equalize.EqualizeConfig, equalize.apply),      # cross-layer equalization: int8 through outliers
    "biascorrect": (biascorrect.BiasCorrectConfig, biascorrect.apply),  # int8 weight rounding's mean error out of the biases
    "resolution": (resolution.ResolutionConfig, resolution.apply),  # the network on a smaller image
    "finetune": (finetune.FinetuneConfig, finetune.apply),      # the model on its own outputs: optimize's learning-rate check
}

#: Techniques that can tell from the model alone, before any work, that they cannot apply to it:
#: name -> refusal(model, setting), the reason or None. optimize asks each at the weakest setting
#: its strength search tries, and leaves the technique out of the plan with that reason.
REFUSALS = {
    "resolution": resolution.refusal,  # one fixed-size image input, large enough to shrink
}

__all__ = ["REFUSALS", "TECHNIQUES", "TechniqueConfig", "TechniqueResult"]
