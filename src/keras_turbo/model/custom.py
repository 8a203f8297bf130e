"""The user's own custom layers and objects (`--custom-objects FILE.py`, `custom_objects=`).

A model with a custom layer cannot be built from its file alone: the layer's code lives in the
user's project. The user names that code explicitly, as a Python file that registers its classes
(`@keras.saving.register_keras_serializable`) or lists them (a module-level `CUSTOM_OBJECTS`
dict), or in the API as a dict of classes. It is the user's own trusted code, run only because
they named it; a model file never names code for keras-turbo to import. `--unsafe` is another
matter (a Lambda layer's bytecode inside the file) and stays what it is.

Keras' registry is per process, and keras-turbo works in several: benchmark workers (one per
runtime and batch), the Keras-on-JAX worker, optimize's build and timing tasks (Ray workers
included). What travels is a `spec`, plain data: ("file", absolute path) for a file and
("module", name, attribute) for a class given in a dict. Child processes find it in the
environment (`ENV`); Ray tasks get it as an argument. `activate(spec)` makes it effective in the
process it runs in, once per content.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from keras_turbo import _tf
from keras_turbo.errors import KerasTurboError

ENV = "KERAS_TURBO_CUSTOM_OBJECTS"
_done: set[str] = set()  # specs already active in this process, by content


def spec_of(custom_objects) -> tuple:
    """The picklable spec for what the user gave: None, a path to a .py file, or a dict
    {name: class or function} (each must live in an importable module, so workers can import it).

    Raises:
        KerasTurboError: a missing or non-.py file, or a dict entry no other process could import.
    """
    if custom_objects is None or custom_objects == () or custom_objects == {}:
        return ()
    if isinstance(custom_objects, (str, os.PathLike)):
        p = Path(custom_objects)
        if p.suffix != ".py" or not p.is_file():
            raise KerasTurboError(f"--custom-objects: {p}: expected a Python file (.py) that registers or lists the "
                                  "model's custom objects")
        return (("file", str(p.resolve())),)
    if isinstance(custom_objects, dict):
        entries = []
        for name, obj in sorted(custom_objects.items()):
            mod = getattr(obj, "__module__", None)
            if not mod or mod == "__main__" or getattr(obj, "__qualname__", "").count("<locals>"):
                raise KerasTurboError(f"custom_objects: {name!r} is defined in {mod or 'no module'}, which worker processes "
                                      "cannot import; put it in a module or pass a .py file")
            entries.append(("module", mod, obj.__qualname__, str(name)))
        return tuple(entries)
    if isinstance(custom_objects, tuple):
        return custom_objects  # already a spec
    raise KerasTurboError(f"custom_objects: expected a .py path or a dict of classes, received {type(custom_objects).__name__}")


def current() -> tuple:
    """The spec active in this process (from the environment, where activate() put it)."""
    raw = os.environ.get(ENV)
    return tuple(tuple(e) for e in json.loads(raw)) if raw else ()


def fingerprint(spec: tuple | None = None) -> str:
    """A content id of the custom code (file contents, module names): part of a model's cache
    key, so an artifact built with one version of a custom layer is not served for another."""
    spec = current() if spec is None else spec
    if not spec:
        return ""
    h = hashlib.sha256()
    for entry in spec:
        h.update(json.dumps(entry).encode())
        if entry[0] == "file" and Path(entry[1]).is_file():
            h.update(Path(entry[1]).read_bytes())
    return h.hexdigest()[:12]


def _load_file(path: str) -> dict:
    """Import the user's file (its decorators register with Keras) and return its CUSTOM_OBJECTS."""
    name = "user_custom_objects_" + hashlib.sha256(path.encode()).hexdigest()[:10]

    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # classes pickle by reference to it
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        raise KerasTurboError(f"--custom-objects {path}: importing it failed ({type(e).__name__}: {first})") from e
    objs = getattr(module, "CUSTOM_OBJECTS", {})
    if not isinstance(objs, dict):
        raise KerasTurboError(f"--custom-objects {path}: CUSTOM_OBJECTS must be a dict of name -> class or function")
    return objs


def activate(spec: tuple) -> None:
    """Make the spec's objects known to Keras in this process (once per content) and to every
    process it starts from now on (the environment)."""
    if not spec:
        return
    os.environ[ENV] = json.dumps([list(e) for e in spec])
    key = json.dumps(spec) + fingerprint(spec)
    if key in _done:
        return

    # Keras as this process has it (on JAX in a keras-jax worker, where TensorFlow is hidden)
    keras = sys.modules.get("keras") or _tf.keras()
    objs = {}
    for entry in spec:
        if entry[0] == "file":
            objs.update(_load_file(entry[1]))
        else:
            _, mod, qualname, name = entry
            obj = importlib.import_module(mod)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            objs[name] = obj
    keras.saving.get_custom_objects().update(objs)
    _done.add(key)


def activate_from_env() -> None:
    """In a worker process: activate what the parent named (a no-op without it)."""
    activate(current())


@contextmanager
def activated(custom_objects):
    """`activate` for the length of a call: the environment is restored after it (what Keras
    registered stays; it is keyed by name and harmless to keep)."""
    spec = spec_of(custom_objects)
    before = os.environ.get(ENV)
    activate(spec)
    try:
        yield spec
    finally:
        if spec:
            if before is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = before


def accepts(fn):
    """Give an API function its keyword `custom_objects=`: effective for the length of the call,
    in this process and in every process the call starts."""
    @functools.wraps(fn)
    def wrapper(*args, custom_objects=None, **kwargs):
        with activated(custom_objects):
            return fn(*args, custom_objects=custom_objects, **kwargs)

    return wrapper


_UNKNOWN = re.compile(r"(?:Could not locate (?:class|function)|Unknown (?:layer|object|class)(?: type)?:?)\s*'?\"?([\w.>]+)")


def unknown_class(message: str) -> str | None:
    """The class Keras could not find, from its error message (None if it is not that error)."""
    m = _UNKNOWN.search(message)
    return m.group(1) if m else None


__all__ = ["ENV", "accepts", "activate", "activate_from_env", "activated", "current", "fingerprint", "spec_of", "unknown_class"]
