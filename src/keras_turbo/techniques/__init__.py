"""Techniques that build a new, faster or smaller Keras model from a given one.

The registry is a dict written out by hand: name -> (config class, apply function).
"""

from __future__ import annotations

from keras_turbo.techniques.base import TechniqueConfig, TechniqueResult

TECHNIQUES: dict[str, tuple[type, object]] = {}

__all__ = ["TECHNIQUES", "TechniqueConfig", "TechniqueResult"]
