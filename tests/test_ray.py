"""optimize on Ray: the same answer as the local executor, builds spread over a (simulated)
multi-node cluster while every latency measurement runs on the target node, and a worker node
lost mid-run loses no finished candidate.

The cluster is `ray.cluster_utils.Cluster` on this one machine: three raylets, one of which
carries the custom resource `target` that marks the deployment hardware.
"""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")  # a pinned dependency: `make` installs it

from keras_turbo.optimize import OptimizeConfig, optimize  # noqa: E402
from keras_turbo.quality import Budget  # noqa: E402
from keras_turbo.optimize.executor import RayExecutor  # noqa: E402

QUICK = dict(min_runs=5, min_seconds=0.05, calibration_size=100, eval_size=200)
MB = 1024 ** 2


def _cfg(**kw):
    return OptimizeConfig(Budget(max_accuracy_drop=1.0), **{"objective": "size", "techniques": ("runtimes", "int8"),
                             "runtimes": ("litert", "onnxruntime"), **QUICK, **kw})


def test_ray_executor_gives_the_local_answer(tmp_path, digits_model):
    """Same recipes, same quality numbers, same recommendation (objective size: deterministic)."""
    cfg = _cfg(runtimes=("litert",))  # (the multi-node test below runs onnxruntime and openvino on Ray too)
    local = optimize(digits_model[0], "builtin:digits:test", None, cfg, tmp_path / "local")
    remote = optimize(digits_model[0], "builtin:digits:test", None, cfg, tmp_path / "ray", executor="ray")
    assert not ray.is_initialized()  # the run started its own Ray instance and shut it down
    key = lambda res: {v["id"]: (v["ok"], v.get("accuracy"), v.get("top1_agreement"), v.get("model_bytes"))  # noqa: E731
                       for v in res.variants}
    assert key(local) == key(remote) and len(key(local)) == 4
    assert remote.recommended["id"] == local.recommended["id"] and remote.doc["executor"] == "ray"
    assert all(v["timed_on"]["node_id"] for v in remote.variants if v["ok"])  # recorded where it was timed


@pytest.fixture(scope="module")
def cluster():
    """One simulated cluster for the tests below (starting one costs seconds); the multi-node test
    takes its spare worker away, which the tests after it do not need."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * MB,
                                                       "include_dashboard": False})
    workers = [c.add_node(num_cpus=1, object_store_memory=80 * MB),
               c.add_node(num_cpus=1, object_store_memory=80 * MB, resources={"target": 1})]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


def test_multi_node_builds_spread_timing_on_target_and_a_lost_node_loses_nothing(tmp_path, digits_model, cluster):
    c, (spare, target) = cluster
    removed = []

    def progress(what, done, total, left):
        # Take a worker node away as soon as the first candidate is built: the run must go on.
        if what.startswith("built") and not removed:
            c.remove_node(spare, allow_graceful=False)
            removed.append(what)

    cfg = _cfg(runtimes=("litert", "onnxruntime", "openvino"))
    ex = RayExecutor(target_resource="target")
    res = optimize(digits_model[0], "builtin:digits:test", None, cfg, tmp_path / "cluster", executor=ex, progress=progress)
    assert removed, "the node was never removed"
    assert len(res.variants) == 9 and all(v["ok"] for v in res.variants), [v.get("error") for v in res.variants]
    doc = json.loads((tmp_path / "cluster" / "results.json").read_text())
    build_nodes = {st["node"]["node_id"] for v in doc["variants"] for st in v["build"]["steps"] if not st["cached"]}
    judge_nodes = {v["build"]["quality"]["node"]["node_id"] for v in doc["variants"]}
    assert len(build_nodes | judge_nodes) >= 2, "builds and checks did not spread over the nodes"
    assert {v["timed_on"]["node_id"] for v in res.variants} == {target.node_id}  # latency on the target only
    # A rerun resumes everything: nothing finished was lost.
    again = optimize(digits_model[0], "builtin:digits:test", None, cfg, tmp_path / "cluster", executor=ex)
    assert all(v["reused"] == {"build": True, "quality": True, "speed": True} for v in again.variants)


def test_unknown_target_is_a_clear_error(cluster):
    from keras_turbo.errors import KerasTurboError

    with pytest.raises(KerasTurboError, match="--target-resource gpu_box: no node"):
        RayExecutor(target_resource="gpu_box")
    with pytest.raises(KerasTurboError, match="--target-node 10.9.9.9: no live node"):
        RayExecutor(target_node="10.9.9.9")
