"""Re-exports the shared technique config and result (they live in keras_turbo.config, outside
this package, so that importing them does not import every technique)."""

from keras_turbo.config import TechniqueConfig, TechniqueResult

__all__ = ["TechniqueConfig", "TechniqueResult"]
