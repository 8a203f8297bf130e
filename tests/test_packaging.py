"""keras-turbo installs beside a user's stack (issue 28, point 1): ranges rather than pins, the
runtimes and the Ray executor as extras, no dependency nothing uses, and a runtime that is not
installed shown as a skipped row that names the extra bringing it.

A real install of the wheel into fresh virtual environments, core only and then [all], is CI's
(.ci/packaging); here, a missing runtime is simulated by blocking its modules in a subprocess
(`sys.modules[name] = None`: find_spec then says absent, and an import raises ImportError)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from keras_turbo import extras
from keras_turbo.optimize import driver
from keras_turbo.optimize import plan as planner
from keras_turbo.optimize.config import OptimizeConfig

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OPTIONAL = PROJECT["optional-dependencies"]


def _requirements(*extras_: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for e in extras_ or [e for e in OPTIONAL if e != "all"]:
        reqs += [Requirement(r) for r in OPTIONAL[e]]
    return [r for r in reqs if canonicalize_name(r.name) != "keras-turbo"]


def _lock() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            out[canonicalize_name(name)] = Version(version.strip())
    return out


def test_ranges_not_pins_and_python_open_above():
    reqs = _requirements()
    pinned = [str(r) for r in reqs if any(s.operator in ("==", "===", "~=") for s in r.specifier)]
    assert not pinned, f"pinned in pyproject.toml (requirements.lock is where pins live): {pinned}"
    unbounded = [str(r) for r in reqs if not any(s.operator == ">=" for s in r.specifier)]
    assert not unbounded, f"no tested lower bound: {unbounded}"
    assert PROJECT["requires-python"] == ">=3.11"


def test_the_lock_make_installs_satisfies_every_range():
    """Each lower bound is a version the suite runs on: the lock's version lies in every range."""
    lock = _lock()
    outside = [f"{r} (lock: {lock.get(canonicalize_name(r.name))})" for r in _requirements()
               if canonicalize_name(r.name) not in lock or lock[canonicalize_name(r.name)] not in r.specifier]
    assert not outside, outside


def test_runtimes_and_executors_are_extras_matching_the_extras_table():
    core = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    dist_of = {m: canonicalize_name(d[0]) for m, d in packages_distributions().items()}
    for extra, modules in extras.EXTRAS.items():
        brought = {canonicalize_name(Requirement(r).name) for r in OPTIONAL[extra]}
        for m in modules:
            assert dist_of[m] in brought, f"{m} is in extras.EXTRAS[{extra!r}] but not in pyproject's [{extra}]"
            assert dist_of[m] not in core, f"{m}: a runtime or executor in the core dependencies"
    assert set(extras.EXTRAS) <= set(OPTIONAL)
    assert re.fullmatch(r"keras-turbo\[(.*)\]", OPTIONAL["all"][0])[1].split(",") == list(extras.EXTRAS)


def _imported_modules() -> set[str]:
    found = set()
    for p in (ROOT / "src" / "keras_turbo").rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Import):
                found |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                found.add(n.module.split(".")[0])
    return found


def test_no_dependency_goes_unused():
    """Every dependency (core and extras) is imported by the package: optuna, pinned before and
    never imported, is gone."""
    modules_of: dict[str, set[str]] = {}
    for m, dists in packages_distributions().items():
        for d in dists:
            modules_of.setdefault(canonicalize_name(d), set()).add(m)
    used = _imported_modules()
    runtime = _requirements(*(e for e in OPTIONAL if e not in ("all", "test")))  # [test] is the suite's
    unused = [str(r) for r in runtime if not modules_of.get(canonicalize_name(r.name), set()) & used]
    assert not unused, f"dependencies keras-turbo never imports: {unused}"
    assert "optuna" not in (ROOT / "requirements.lock").read_text().lower()


BLOCKED = ("openvino", "nncf", "onnxruntime", "onnx", "tf2onnx", "jax", "ray")
RUNNER = """import sys
for m in {blocked!r}:
    sys.modules[m] = None  # as if not installed
from keras_turbo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli_without_extras(tmp_path, *argv, blocked=BLOCKED) -> subprocess.CompletedProcess:
    script = tmp_path / "without_extras.py"
    script.write_text(RUNNER.format(blocked=blocked))
    return subprocess.run([sys.executable, str(script), *map(str, argv)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)


def test_devices_and_benchmark_without_the_extras_skip_and_name_them(tmp_path):
    run = _cli_without_extras(tmp_path, "devices", "--json", tmp_path / "d.json")
    assert run.returncode == 0, run.stderr
    rows = json.loads((tmp_path / "d.json").read_text())["runtimes"]
    assert rows["litert"]["usable"] and rows["litert"]["not_installed"] is None
    assert rows["tf-function"]["not_installed"] is None
    for name, extra in (("openvino", "openvino"), ("openvino-bf16", "openvino"), ("onnxruntime", "onnx"),
                        ("onnxruntime-throughput", "onnx"), ("keras-jax", "jax")):
        assert not rows[name]["usable"] and f"pip install 'keras-turbo[{extra}]'" in rows[name]["not_installed"], name
    assert "skipped: openvino is not" in run.stdout and "'keras-turbo[openvino]')" in run.stdout  # rich kept the brackets

    run = _cli_without_extras(tmp_path, "benchmark", "builtin:digits", "--backend", "litert", "--backend", "onnxruntime",
                              "--backend", "openvino", "--min-runs", "3", "--min-seconds", "0.05", "--json", tmp_path / "b.json")
    assert run.returncode == 0, run.stderr
    res = {r["backend"]: r for r in json.loads((tmp_path / "b.json").read_text())["results"]}
    assert res["litert"]["ok"] and res["litert"]["skipped"] is None
    assert not res["onnxruntime"]["ok"] and res["onnxruntime"]["error"] is None
    assert "tf2onnx" in res["onnxruntime"]["skipped"] and "keras-turbo[onnx]" in res["onnxruntime"]["skipped"]
    assert "keras-turbo[openvino]" in res["openvino"]["skipped"]

    # Converted once with OpenVINO present, so the run without it finds the artifact in the cache:
    # a cached artifact still needs its runtime (CI's failure of stop 31).
    made = _cli_without_extras(tmp_path, "convert", "builtin:digits", "--to", "openvino", blocked=())
    assert made.returncode == 0, made.stderr
    run = _cli_without_extras(tmp_path, "convert", "builtin:digits", "--to", "openvino", "-o", tmp_path / "m.xml")
    assert run.returncode == 2 and run.stderr.strip() == (
        "keras-turbo: error: export to openvino: openvino is not installed (pip install 'keras-turbo[openvino]')")
    assert not (tmp_path / "m.xml").exists()


def test_optimize_leaves_a_missing_runtime_out_naming_its_extra(monkeypatch):
    real = extras.installed
    monkeypatch.setattr(extras, "installed", lambda m: m not in ("onnxruntime", "tf2onnx", "onnx") and real(m))
    caps = driver.machine_caps()
    assert "onnxruntime" not in caps.backends and "litert" in caps.backends
    assert dict(caps.missing)["onnxruntime-throughput"].endswith("(pip install 'keras-turbo[onnx]')")
    p = planner.first_plan(planner.ModelInfo("f" * 8), caps, OptimizeConfig(), has_train=False)
    left = dict(p.left_out)
    assert left["onnxruntime"].startswith("onnxruntime, tf2onnx and onnx are not installed (pip install 'keras-turbo[onnx]')")
    assert "its conversions (int8, dynamic) are left out too" in left["onnxruntime"]
    assert not [r for r in p.recipes + p.later if r.backend.startswith("onnxruntime")]
    assert [r for r in p.recipes if r.backend == "litert"]


def test_missing_says_which_extra_brings_what(monkeypatch):
    monkeypatch.setattr(extras, "installed", lambda m: m not in ("nncf", "ray", "numpy"))
    assert extras.missing("openvino") is None
    assert extras.missing("nncf") == "nncf is not installed (pip install 'keras-turbo[openvino]')"
    assert extras.missing("ray", "nncf") == "ray and nncf are not installed (pip install 'keras-turbo[openvino,ray]')"
    assert "a core dependency" in extras.missing("numpy")
    try:
        extras.require("--executor ray", "ray")
    except extras.MissingExtra as e:
        assert str(e) == "--executor ray: ray is not installed (pip install 'keras-turbo[ray]')"
    else:
        raise AssertionError("require did not raise")
