"""optimize with train data on the digits CNN: the local executor vs the Ray executor on a
simulated three-node cluster (ray.cluster_utils.Cluster on this one machine), wall time and
per-candidate build times; and from the measured times, a PROJECTION of the wall time on 4, 16
and 64 worker nodes.

The projection replays the run's own waves: within a wave, builds (training, conversion,
calibration, the accuracy check) are list-scheduled over N workers, longest first, a trained
technique's exports waiting for its training (the critical path is the longest such chain);
then the wave's timings run one after another on the target node, as they must. It assumes
every node as fast as this one and ignores start-up and data transfer: a projection, not a
measurement. Writes the `scaleout` section of BENCHMARKS.md and benchmarks/results/scaleout.json.

Run: `.venv/bin/python benchmarks/scaleout.py` (about 30 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, WORK, machine_line, write_section  # noqa: E402

os.environ.setdefault("KERAS_TURBO_CACHE", str(WORK / "cache"))

import keras_turbo  # noqa: E402
from keras_turbo.optimize import OptimizeConfig  # noqa: E402
from keras_turbo.builtin import digits_model_path  # noqa: E402
from keras_turbo.quality import Budget  # noqa: E402

MB = 1024 ** 2
NODES = (1, 4, 16, 64)


def run(executor, out, cfg):
    shutil.rmtree(out, ignore_errors=True)  # measure afresh: no resume
    t = time.time()
    res = keras_turbo.optimize(digits_model_path(), "builtin:digits:test", "builtin:digits:train", cfg, out,
                               executor=executor, progress=lambda what, d, n, left: print(f"  {what} ({d}/{n})", flush=True))
    return res, time.time() - t


def candidates(out) -> list[dict]:
    """Per candidate: its build steps (prefix id, seconds, cached or not), quality and timing seconds."""
    doc = json.loads((out / "results.json").read_text())
    timing = {m["recipe_id"]: (m.get("speed") or {}).get("seconds", 0.0) for m in doc["measurements"]}
    rows = []
    for v in doc["variants"] + doc.get("search", []):  # the strength search's probes are builds too
        b = v.get("build") or {}
        rows.append({"name": v["name"], "id": v["id"], "ok": v["ok"],
                     "steps": [{"prefix": s["prefix_id"], "kind": s["kind"], "seconds": s["seconds"] or 0.0,
                                "cached": s["cached"]} for s in b.get("steps", [])],
                     "quality_s": ((b.get("quality") or {}).get("seconds") or 0.0), "timing_s": timing.get(v["id"], 0.0),
                     "wave": v.get("wave", 1)})
    return rows


def project(rows: list[dict], workers: int, serial_s: float = 0.0) -> float:
    """Wall time of the run's waves on `workers` build workers (see the module docstring), plus
    `serial_s`: what the run spent outside builds, checks and timings (the driver's own work:
    loading, the float reference, starting processes), which does not spread."""
    total = serial_s
    for wave in sorted({r["wave"] for r in rows}):
        jobs = [r for r in rows if r["wave"] == wave]
        # each prefix's real cost once (its first, uncached build), shared prefixes as dependencies
        cost = {s["prefix"]: s["seconds"] for r in jobs for s in r["steps"] if not s["cached"]}
        chains = sorted(jobs, key=lambda r: -sum(cost.get(s["prefix"], 0) for s in r["steps"]))
        free = [0.0] * workers
        done_at: dict[str, float] = {}
        for r in chains:
            i = min(range(workers), key=lambda k: free[k])
            t = free[i]
            for s in r["steps"]:
                if s["prefix"] in done_at:  # built by another job: wait for it
                    t = max(t, done_at[s["prefix"]])
                else:
                    t += cost.get(s["prefix"], 0.0)
                    done_at[s["prefix"]] = t
            free[i] = t + r["quality_s"]
        total += max(free) + sum(r["timing_s"] for r in jobs)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    raw_path = RESULTS / "scaleout.json"
    if not args.render_only:
        cfg = OptimizeConfig(budget=Budget(max_accuracy_drop=1.0), techniques=("runtimes", "int8", "structured", "distill", "prune", "qat"),
                             runtimes=("litert", "onnxruntime", "openvino"))
        local, local_s = run("local", WORK / "scaleout-local", cfg)
        local_rows = candidates(WORK / "scaleout-local")
        import ray
        from ray.cluster_utils import Cluster

        from keras_turbo.optimize.executor import RayExecutor

        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * MB,
                                                           "include_dashboard": False})
        c.add_node(num_cpus=1, object_store_memory=100 * MB)
        c.add_node(num_cpus=1, object_store_memory=100 * MB, resources={"target": 1})
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        try:
            remote, remote_s = run(RayExecutor(target_resource="target"), WORK / "scaleout-ray", cfg)
        finally:
            ray.shutdown()
            c.shutdown()
        raw = {"machine": local.doc["machine"], "local_wall_s": local_s, "ray_wall_s": remote_s,
               "local_recommended": local.doc["recommended"], "ray_recommended": remote.doc["recommended"],
               "candidates": local_rows, "ray_candidates": candidates(WORK / "scaleout-ray")}
        RESULTS.mkdir(parents=True, exist_ok=True)
        raw_path.write_text(json.dumps(raw, indent=2, default=str))
    raw = json.loads(raw_path.read_text())
    rows = raw["candidates"]
    accounted = sum(sum(s["seconds"] for s in r["steps"] if not s["cached"]) + r["quality_s"] + r["timing_s"] for r in rows)
    serial = max(0.0, raw["local_wall_s"] - accounted)
    proj = {n: project(rows, n, serial) for n in NODES}
    longest = max(rows, key=lambda r: sum(s["seconds"] for s in r["steps"]) + r["quality_s"])
    table = "\n".join(
        f"| {r['name']} | {'ok' if r['ok'] else 'failed'} | "
        + ", ".join(f"{s['kind']} {s['seconds']:.1f} s" + (" (cached)" if s["cached"] else "") for s in r["steps"])
        + f" | {r['quality_s']:.1f} | {r['timing_s']:.1f} |" for r in rows)
    body = (
        "## Scale-out: optimize with train data, local vs Ray\n\n"
        "Reproduce: `.venv/bin/python benchmarks/scaleout.py` (raw: `benchmarks/results/scaleout.json`). The digits CNN "
        "with train data; runtimes LiteRT, ONNX Runtime, OpenVINO; int8; structured pruning, distillation, magnitude "
        "pruning and QAT at optimize's settings.\n"
        f"Machine: {machine_line(raw['machine'])}.\n\n"
        f"| executor | wall time | recommended |\n| --- | ---: | --- |\n"
        f"| local (one process) | {raw['local_wall_s']:.0f} s | `{raw['local_recommended']}` |\n"
        f"| Ray, simulated 3-node cluster on this machine | {raw['ray_wall_s']:.0f} s | `{raw['ray_recommended']}` |\n\n"
        "The simulated cluster shares this machine's 2 cores, so it cannot be faster than the local run here: its "
        "row shows that the Ray path runs the same search end to end, not a speed-up."
        + ("" if raw["local_recommended"] == raw["ray_recommended"] else
           " The two runs recommended different variants: fine-tuning on a CPU is not bit-for-bit repeatable across "
           "processes and thread layouts, and the strength search's probes sit near the 1-point budget (one validation "
           "sample is 0.53 points), so a probe can land on either side of it. With no training in the plan the two "
           "executors give the same recommendation (test_ray.py).")
        + "\n\n"
        "**Projection** (not a measurement) from the local run's own build, check and timing times, replayed wave "
        "by wave with builds spread over N equally fast workers and timing kept one at a time on one target node, "
        f"plus the {serial:.0f} s the local run spent outside them (loading, the float reference, process start-up), "
        "which does not spread:\n\n"
        "| build workers | projected wall time |\n| ---: | ---: |\n"
        + "\n".join(f"| {n} | {proj[n]:.0f} s |" for n in NODES)
        + f"\n\nThe critical path is the longest chain, `{longest['name']}` "
        f"({sum(s['seconds'] for s in longest['steps']) + longest['quality_s']:.0f} s of build and check), plus the "
        f"timings, which do not parallelise ({sum(r['timing_s'] for r in rows):.0f} s in all): past a few workers "
        "more nodes buy nothing on a model this small; a larger model, more techniques or a strength search "
        "(more candidates per wave) is where they pay.\n\n"
        "Per candidate (local run):\n\n| candidate | result | build steps | check s | timing s |\n| --- | --- | --- | ---: | ---: |\n"
        + table)
    write_section("scaleout", body)
    print(f"local {raw['local_wall_s']:.0f} s, ray {raw['ray_wall_s']:.0f} s; projection {proj}")


if __name__ == "__main__":
    main()
