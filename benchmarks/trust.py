"""Bounded resources on hostile or huge input (issue 15), measured as peak memory of the real CLI:

  (a) `keras-turbo inspect` on a config bomb: a small .keras whose config.json inflates to
      4 GiB of JSON (the issue's 4.8 MB file declared 4.3 GiB and drove the old pre-scan to
      9.4-9.8 GB). Target: under 1 GB.
  (b) `keras-turbo evaluate` on a ~3 GB uncompressed .npz (float32 images, 64x64x3) with a tiny
      model. Target: under 1.5x the data (the old reader peaked at 4.3 GB on 3 GB); and
      `optimize` on the same data (one candidate; it peaked at 6.4 GB before).

Peak memory is the child's peak resident set (getrusage of the waited-for child: ru_maxrss),
which counts the pages of the memory-mapped data it touched. The files are written to /tmp in
chunks (the script itself stays small) and deleted afterwards.

Writes the `trust` section at the end of BENCHMARKS.md and benchmarks/results/trust.json.
Run: `.venv/bin/python benchmarks/trust.py` (about 3 minutes on 2 cores; needs ~8 GB of free
disk in /tmp and ~5 GB of memory).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, ROOT, WORK, machine_line, write_section  # noqa: E402

os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))

import numpy as np  # noqa: E402

GIB = 1 << 30


def run_child(args: list[str]) -> tuple[int, float, float, str]:
    """(exit code, peak RSS in MB, seconds, last stderr line) of `keras-turbo ARGS` in a fresh
    wrapper process, so ru_maxrss of its children is this command's alone."""
    code = ("import resource, subprocess, sys, json, time\n"
            "t = time.time()\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "err = [ln for ln in p.stderr.splitlines() if ln.strip()]\n"
            "print(json.dumps([p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,"
            " time.time() - t, err[-1] if err else '']))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "keras_turbo.cli", *args],
                         capture_output=True, text=True, env=env, check=True)
    rc, peak, secs, last = json.loads(out.stdout)
    return rc, peak, secs, last


def tiny_model(path: Path, shape) -> None:
    from keras_turbo import _tf

    keras = _tf.keras()
    inp = keras.Input(shape, name="image")
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, strides=4)(inp))
    keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h)).save(path)


def config_bomb(model: Path, out: Path, size: int) -> None:
    """`model` with its config.json replaced by `size` bytes of JSON whitespace (deflated)."""
    with zipfile.ZipFile(model) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
        for item in zin.infolist():
            if item.filename != "config.json":
                zout.writestr(item, zin.read(item))
        with zout.open("config.json", "w", force_zip64=True) as fh:
            block = b" " * (16 << 20)
            for _ in range(size // len(block)):
                fh.write(block)
            fh.write(zin_config(model))


def zin_config(model: Path) -> bytes:
    with zipfile.ZipFile(model) as z:
        return z.read("config.json")


def big_npz(path: Path, n: int, shape, seed: int = 0) -> int:
    """An uncompressed .npz with x (n, *shape) float32 and y (n,), written in chunks."""
    rng = np.random.default_rng(seed)
    x_header = {"descr": "<f4", "fortran_order": False, "shape": (n, *shape)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("x.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_2_0(fh, x_header)
            step = 2048
            for i in range(0, n, step):
                fh.write(rng.random((min(step, n - i), *shape), dtype="float32").tobytes())
        with z.open("y.npy", "w") as fh:
            np.lib.format.write_array(fh, rng.integers(0, 10, n))
    return path.stat().st_size


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kt-trust-bench-", dir="/tmp"))
    from keras_turbo import machine

    doc: dict = {"machine": machine_line(machine.facts())}
    try:
        model = tmp / "tiny.keras"
        tiny_model(model, (64, 64, 3))

        bomb = tmp / "bomb.keras"
        config_bomb(model, bomb, 4 * GIB)
        rc, peak, secs, last = run_child(["inspect", str(bomb)])
        doc["config_bomb"] = {"file_mb": bomb.stat().st_size / 2**20, "declared_gib": 4.0, "exit": rc,
                              "peak_rss_mb": peak, "seconds": secs, "message": last}
        print("config bomb:", doc["config_bomb"])
        bomb.unlink()

        data = tmp / "big.npz"
        n = 3 * GIB // (64 * 64 * 3 * 4)
        size = big_npz(data, n, (64, 64, 3))
        rc, peak, secs, last = run_child(["evaluate", str(model), "--data", str(data), "--backend", "tf-function",
                                          "--batch-size", "512"])
        doc["big_npz"] = {"samples": n, "file_mb": size / 2**20, "exit": rc, "peak_rss_mb": peak,
                          "ratio_to_data": peak * 2**20 / size, "seconds": secs, "message": last}
        print("3 GB npz:", doc["big_npz"])
        rc, peak, secs, last = run_child(["optimize", str(model), "--data", str(data), "--min-agreement", "0.9",
                                          "--techniques", "fallback", "--out", str(tmp / "opt")])
        doc["big_npz_optimize"] = {"exit": rc, "peak_rss_mb": peak, "ratio_to_data": peak * 2**20 / size,
                                   "seconds": secs, "message": last}
        print("3 GB npz, optimize:", doc["big_npz_optimize"])
        rc, peak, secs, last = run_child(["inspect", str(model)])
        doc["baseline_inspect_rss_mb"] = peak  # what TensorFlow and the tiny model take on their own
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trust.json").write_text(json.dumps(doc, indent=2))
    b, d, o = doc["config_bomb"], doc["big_npz"], doc["big_npz_optimize"]
    body = f"""## Bounded resources: config bomb and a 3 GB npz (peak memory)

Written by `benchmarks/trust.py` ({time.strftime('%Y-%m-%d')}; {doc['machine']}). Peak resident memory of the real
CLI in a child process (ru_maxrss, which counts the touched pages of memory-mapped data); the
files are made in /tmp in chunks and deleted afterwards. Reproduce: `.venv/bin/python benchmarks/trust.py`.

| input | command | peak memory | target | exit | time |
| --- | --- | --- | --- | --- | --- |
| .keras of {b['file_mb']:.1f} MB whose config.json inflates to {b['declared_gib']:.0f} GiB | `inspect` | {b['peak_rss_mb']:,.0f} MB | < 1 GB (was 9.4-9.8 GB) | {b['exit']} | {b['seconds']:.1f} s |
| uncompressed .npz of {d['file_mb'] / 1024:.2f} GB ({d['samples']:,} float32 64x64x3 images), tiny model | `evaluate --batch-size 512` | {d['peak_rss_mb']:,.0f} MB ({d['ratio_to_data']:.2f}x the data) | < 1.5x the data (was 1.4x; 2.1x in optimize) | {d['exit']} | {d['seconds']:.1f} s |
| the same .npz | `optimize --techniques fallback` (one candidate) | {o['peak_rss_mb']:,.0f} MB ({o['ratio_to_data']:.2f}x the data) | (was 6.4 GB, 2.1x) | {o['exit']} | {o['seconds']:.1f} s |
| the tiny model alone | `inspect` | {doc['baseline_inspect_rss_mb']:,.0f} MB | (TensorFlow's own floor) | 0 | |

The bomb is refused from the size its zip entry declares, before a byte of it is inflated
("{b['message'].split('.keras: ', 1)[-1]}"). The npz's arrays are memory-mapped straight from the file (stored members;
compressed ones are inflated in chunks into their final array), checked for NaN a block at a time,
and fed to the runtime a batch at a time, so the peak is the data once plus TensorFlow. optimize
judges on a 1,000-sample subset and copies only that subset (it copied all the rest before).
"""
    write_section("trust", body)


if __name__ == "__main__":
    main()
