"""The floor plan (docs/architecture.md), kept: every module of keras_turbo sits on one floor and
imports only from its own floor or below, and no set of modules imports each other in a circle;
imports inside functions count as much as those at the top of a file."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "keras_turbo"

#: bottom to top: (floor, the modules and packages on it, what may live there)
FLOORS = [
    ("ground", ("errors", "extras", "_tf", "cache", "outdir", "config", "timing"),
     "errors, the optional extras, quiet TensorFlow, the cache, output folders, the shared config base, timing settings"),
    ("model", ("model",), "what a model file is, loading it safely, its signature and graph, keras-turbo's own layers"),
    ("facts", ("machine", "quality", "data", "ratios"), "machine facts, judging quality, data, speed-up arithmetic"),
    ("exporters", ("exporters",), "Keras model -> LiteRT / ONNX / OpenVINO artifacts"),
    ("runtimes", ("runtimes",), "artifact -> Predictor; the registry of runtime families and entries"),
    ("operations", ("convert", "bench", "describe", "builtin"), "convert, benchmark, inspect, the built-in model"),
    ("techniques", ("techniques",), "Keras -> Keras transforms and the int8 repair"),
    ("optimize", ("optimize", "report"), "the optimize engine and the reports it writes"),
    ("top", ("api", "cli", "keras_turbo"), "the public face"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _floor(module: str) -> int | None:
    short = "keras_turbo" if module == "keras_turbo" else module.removeprefix("keras_turbo.")
    for i, (_, members, _) in enumerate(FLOORS):
        if any(short == m or short.startswith(m + ".") for m in members):
            return i
    return None


def _imports(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported keras_turbo module: first line}, every import in the file (functions too)."""
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        found: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name and t.startswith("keras_turbo"):
                    found.setdefault(t, node.lineno)
        edges[name] = found
    return edges


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_floor():
    unplaced = [m for m in _modules() if _floor(m) is None]
    assert not unplaced, f"modules on no floor (add them to FLOORS and docs/architecture.md): {unplaced}"


def test_no_import_runs_up_a_floor():
    modules = _modules()
    up = [f"{a} ({FLOORS[_floor(a)][0]}) imports {b} ({FLOORS[_floor(b)][0]}) at line {line}"
          for a, targets in _imports(modules).items() for b, line in targets.items() if _floor(b) > _floor(a)]
    assert not up, "imports from a lower floor to a higher one:\n" + "\n".join(up)


def test_no_import_cycle():
    cycles = _cycles(_imports(_modules()))
    assert not cycles, f"modules that import each other in a circle (function-level imports counted): {cycles}"


def test_the_checks_see_what_they_check():
    """The walker reads function-level and relative imports, and the cycle finder finds a cycle."""
    edges = _imports(_modules())
    assert "keras_turbo.model.layers" in edges["keras_turbo.model.load"]  # imported inside load_keras
    assert "keras_turbo.runtimes" in edges["keras_turbo.runtimes.here"]
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


#: what a function may import lazily, outside the CLI and the package face (whose imports keep the
#: start-up fast): the heavy libraries, and keras-turbo's modules that import them when imported
LAZY = ("tensorflow", "keras", "openvino", "onnx", "onnxruntime", "ai_edge_litert", "tf2onnx", "nncf", "ray", "jax",
        "sklearn", "scipy", "matplotlib", "PIL", "h5py", "psutil", "absl", "tf_keras",
        "keras_turbo.techniques", "keras_turbo.model.layers", "keras_turbo.report")


def test_imports_inside_functions_keep_something_heavy_lazy():
    found = []
    for name, path in _modules().items():
        if name in ("keras_turbo", "keras_turbo.cli"):
            continue
        for f in ast.walk(ast.parse(path.read_text())):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for n in ast.walk(f):
                targets = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                    [n.module or ""] if isinstance(n, ast.ImportFrom) else []
                found += [f"{name}:{n.lineno} imports {t}" for t in targets
                          if not any(t == lazy or t.startswith(lazy + ".") for lazy in LAZY)]
    assert not found, "imports inside functions that nothing heavy explains (move them to the top):\n" + "\n".join(found)


def test_no_function_over_60_lines_but_the_cli_parser():
    long = [f"{name}:{f.name} ({f.end_lineno - f.lineno + 1} lines)" for name, path in _modules().items()
            for f in ast.walk(ast.parse(path.read_text())) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and f.end_lineno - f.lineno + 1 > 60 and f.name != "build_parser"]
    assert not long, f"functions over 60 lines: {long}"
