"""results.json: what was built (`variants`, keyed by recipe id) and what was measured
(`measurements`, keyed by recipe id and protocol id), written atomically after every candidate.

A rerun into the same folder reads it back and reuses exactly what matches: a build whose
recipe id matches (and whose artifact is still there), a quality measurement whose quality id
matches, a speed measurement whose speed id matches. Verdicts are never read back: the
`selection` block is a convenience for readers, recomputed on every run and every `report`.
A file of an older layout, or of another model, is not resumed, and the run says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from keras_turbo import quality
from keras_turbo.optimize import select
from keras_turbo.optimize.rows import Measurement, Speed
from keras_turbo.outdir import write_file_atomically

FORMAT = 2


class Store:
    """The run's results.json, in memory, saved after every change."""

    def __init__(self, out: Path, model_fingerprint: str):
        self.path = Path(out) / "results.json"
        self.model = model_fingerprint
        self.note: str | None = None
        self.builds: dict[str, dict] = {}
        self.measurements: list[Measurement] = []
        if self.path.exists():
            self._load_previous()

    def _load_previous(self) -> None:
        if self.path.is_symlink():  # another file's content: never read, and the save replaces the link
            self.note = "results.json is a symbolic link: not read, not resumed"
            return
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            self.note = f"results.json unreadable ({type(e).__name__}): not resumed"
            return
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            self.note = "results.json has an older layout: not resumed (every candidate is measured anew)"
        elif doc.get("model_fingerprint") != self.model:
            self.note = "results.json is of another model: not resumed"
        else:
            builds = {v["id"]: v["build"] for v in doc.get("variants", []) + doc.get("search", []) if v.get("build")}
            # A repair whose walk the time budget cut short is walked again, with the time a rerun has.
            cut = {i for i, b in builds.items() if (b.get("details") or {}).get("partial")}
            self.builds = {i: b for i, b in builds.items() if i not in cut}
            self.measurements = [Measurement.from_dict(m) for m in doc.get("measurements", [])
                                 if isinstance(m, dict) and m.get("recipe_id") not in cut]

    # -------------------------------------------------------------- reuse

    def build_for(self, recipe_id: str) -> dict | None:
        b = self.builds.get(recipe_id)
        return b if b and b.get("ok") and b.get("artifact") and Path(b["artifact"]).exists() else None

    def quality_for(self, recipe_id: str, quality_id: str) -> dict | None:
        """The latest quality measurement of the recipe under that quality id (quality.judge's dict)."""
        for m in reversed(self.measurements):
            if m.recipe_id == recipe_id and m.quality_id == quality_id and m.quality is not None \
                    and m.quality.get("ok", True):
                return m.quality
        return None

    def speed_for(self, recipe_id: str, speed_id: str) -> Speed | None:
        """The latest speed measurement of the recipe under that speed id that worked."""
        for m in reversed(self.measurements):
            if m.recipe_id == recipe_id and m.speed_id == speed_id and m.speed is not None and m.speed.ok:
                return m.speed
        return None

    # -------------------------------------------------------------- recording

    def record_build(self, recipe_id: str, build: dict) -> None:
        self.builds[recipe_id] = build

    def record_measurement(self, recipe_id: str, protocol, quality: dict | None, speed: Speed | None,
                           reused: dict, quality_id: str | None = None) -> Measurement:
        m = Measurement(recipe_id, protocol.id, quality_id or protocol.quality_id, protocol.speed_id, quality, speed,
                        reused, time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.measurements = [x for x in self.measurements
                             if not (x.recipe_id == recipe_id and x.protocol_id == protocol.id)] + [m]
        return m

    def save(self, doc: dict) -> None:
        full = {"format": FORMAT, "model_fingerprint": self.model, **doc,
                "measurements": [m.to_dict() for m in self.measurements]}
        text = json.dumps(full, indent=1, default=str)
        write_file_atomically(self.path, lambda tmp: tmp.write_text(text))


__all__ = ["FORMAT", "Store", "rejudge"]


def rejudge(doc: dict) -> dict:
    """A results.json document with its verdicts, Pareto front and recommendation recomputed from
    the measurements and the budget it records (what `keras-turbo report` renders)."""
    budget = doc.get("budget") or {}
    judged_by = quality.Budget.from_dict(budget)
    rows = [dict(v) for v in doc.get("variants", [])]
    by_id = {m["recipe_id"]: m for m in doc.get("measurements", []) if m.get("protocol_id") == (doc.get("protocol") or {}).get("id")}
    probes = [dict(v) for v in doc.get("search", [])]
    for r in rows + probes:
        if r.get("ok") and r["id"] in by_id:
            r["within_budget"], r["verdict"] = quality.within_budget(by_id[r["id"]]["quality"], judged_by)
    select.pareto(rows, by_agreement=budget.get("min_agreement") is not None)
    best, met = select.recommend(rows, budget.get("objective", "latency"))
    return {**doc, "variants": rows, "search": probes, "recommended": best["name"] if best else None, "budget_met": met}
