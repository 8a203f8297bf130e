"""The optimize engine: recipes (data), a planner (pure), a builder with cached prefixes,
measurements keyed by protocol, an executor that runs locally or on Ray, and the selection.

    recipe.py    Step, Recipe: frozen data; recipe.id = hash(model fingerprint, steps)
    plan.py      first plan and follow-ups, no TensorFlow
    build.py     step builders; every prefix cached by its own id (trains once, fails once)
    measure.py   Protocol (quality id, speed id); quality on held-out data, speed on the target
    executor.py  LocalExecutor, RayExecutor
    store.py     results.json: variants[] and measurements[]; atomic writes; resume
    select.py    budget verdicts at selection time, Pareto front, recommendation
    driver.py    optimize(): plan, build, measure, follow up, select
"""

from keras_turbo.optimize.config import FAMILIES, OBJECTIVES, OptimizeConfig
from keras_turbo.optimize.driver import OptimizeResult, optimize

__all__ = ["FAMILIES", "OBJECTIVES", "OptimizeConfig", "OptimizeResult", "optimize"]
