"""Helpers shared by the benchmark scripts: where they work, and how they update BENCHMARKS.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"          # models and caches (git-ignored)
RESULTS = ROOT / "benchmarks" / "results"     # raw JSON behind every table (committed)
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

HEADER = """# keras-turbo benchmarks

Every table here is written by a script in `benchmarks/`; the raw measurements behind it are in
`benchmarks/results/`. Speed is compared as ratios within one run: these are shared 2-core
machines and an absolute time is only a hint.
"""


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between `<!-- name:begin -->` and `<!-- name:end -->`."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    block = f"<!-- {name}:begin -->\n{body.rstrip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:begin -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)


def app_model_file(arch: str) -> Path:
    """A keras.applications architecture at 224x224x3 with random weights, saved once in WORK."""
    from keras_turbo.zoo import application

    path = WORK / f"{arch}_224.keras"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        application(arch).save(path)
    return path


def machine_line(machine: dict) -> str:
    flags = ", ".join(k for k, v in machine["cpu_flags"].items() if v)
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items() if v)
    gpus = "; ".join(machine["gpus"]) or "no GPU"
    return f"{machine['cpu']}, {machine['usable_cores']} cores ({flags}); {gpus}; {libs}"
