"""Techniques that build a new, faster or smaller Keras model from a given one.

Each is one module with a frozen config and `apply(model, config, train, val) -> TechniqueResult`;
none changes its input model. The registry is a dict written out by hand: name -> (config
class, apply function).
"""

from __future__ import annotations

from keras_turbo.techniques import cluster, distill, equalize, prune, qat, resolution, structured
from keras_turbo.techniques.base import TechniqueConfig, TechniqueResult

TECHNIQUES: dict[str, tuple[type, object]] = {
    "prune": (prune.PruneConfig, prune.apply),                  # magnitude pruning: zeros, smaller when compressed
    "structured": (structured.StructuredConfig, structured.apply),  # channel pruning: a smaller dense model
    "distill": (distill.DistillConfig, distill.apply),          # a lighter student taught by the model
    "qat": (qat.QATConfig, qat.apply),                          # quantization-aware training, exported to int8
    "cluster": (cluster.ClusterConfig, cluster.apply),          # weight sharing: smaller when compressed
    "equalize": (equalize.EqualizeConfig, equalize.apply),      # cross-layer equalization: int8 through outliers
    "resolution": (resolution.ResolutionConfig, resolution.apply),  # the network on a smaller image
}

__all__ = ["TECHNIQUES", "TechniqueConfig", "TechniqueResult"]
