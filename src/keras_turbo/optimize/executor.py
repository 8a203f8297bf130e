"""Where the work runs: in this process, or spread over a Ray cluster.

An executor does two things. `builds` takes a wave of `BuildJob`s (conversion, calibration,
training, and the accuracy check on the held-out data) and yields their results as they finish;
those may run in parallel, anywhere. `time` measures one artifact's speed, and is only ever
called one job at a time: latency measured in parallel on one machine is not latency. With Ray,
timing runs on the target node only (`target_node` by node id or IP, or `target_resource`, a Ray
custom resource that marks the deployment hardware's nodes; by default the driver's node), and
every measurement records the node it ran on.

Artifacts are written into content-addressed folders under the run's output folder, so a
cluster needs that folder on storage every node sees (NFS, a shared disk): a worker's build is
then found by any other, and a worker lost mid-build leaves no status, so its prefix is built
again by Ray's retry or by the next run.
"""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Iterator, Protocol

from keras_turbo import machine
from keras_turbo.errors import KerasTurboError
from keras_turbo.extras import require
from keras_turbo.model import custom
from keras_turbo.optimize.build import (
    BuildJob,
    BuildStopped,
    build,
    error_text,
    no_result,
)
from keras_turbo.optimize.measure import measure_speed, node_facts

EXECUTORS = ("local", "ray")

#: how long a build told to stop at the deadline gets to unwind (remove its partial folder)
STOP_WAIT_S = 10.0
_running: set[threading.Thread] = set()


def running_builds() -> list[str]:
    """The local builds still running in this process: ones the time budget or an interrupt told
    to stop while they were inside a long native call (a converter), which stop when it returns.
    A program about to exit need not wait for them (the CLI does not)."""
    return sorted(t.name for t in _running if t.is_alive())


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise `exc` in `thread` at its next Python instruction: a build stops where it is, its
    context managers and cleanup run, and nothing is recorded as its result."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


def _stopped(job: BuildJob, why: str, seconds: float | None = None) -> dict:
    took = "" if seconds is None else f" after {seconds:.0f} s of building"
    # (a build stuck in a native call may still finish after the run, in a process that outlives
    # it; its cached prefix is then reused by the next run)
    return no_result(job.recipe, f"stopped: {why}{took}; this run keeps nothing of it, a rerun builds it",
                     skipped=True, stopped=True)


def bounded_build(job: BuildJob) -> dict:
    """`build(job)`, stopped at the job's deadline: a build still running then (one conversion of
    a large model can take minutes) is told to stop and recorded as stopped, so the run ends on
    its time budget and recommends what it measured. The build runs in a thread of this process
    (the model and every cache stay in memory, as before) while this one waits."""
    if job.deadline is None or time.time() >= job.deadline:
        return build(job)  # (past the deadline it returns at once: skipped, nothing built)
    box: dict = {}

    def work():
        try:
            box["res"] = build(job)
        except BaseException as e:  # BuildStopped or an interrupt passed on: it unwound
            box["exc"] = e

    t = threading.Thread(target=work, name=f"keras-turbo build {job.recipe.name}", daemon=True)
    began = time.time()
    _running.add(t)
    t.start()
    try:
        while t.is_alive() and time.time() < job.deadline:
            t.join(min(5.0, max(0.01, job.deadline - time.time())))
    except BaseException:  # Ctrl-C / SIGTERM while waiting: the build is interrupted too
        _raise_in(t, KeyboardInterrupt)
        t.join(STOP_WAIT_S)
        raise
    if t.is_alive():
        _raise_in(t, BuildStopped)
        t.join(STOP_WAIT_S)
    if "res" in box:
        if not t.is_alive():
            _running.discard(t)
        return box["res"]
    if not t.is_alive():
        _running.discard(t)
        if not isinstance(box.get("exc"), BuildStopped):
            raise box["exc"]
    return _stopped(job, "the time budget ran out while it was being built", time.time() - began)


class Executor(Protocol):
    name: str
    sequential: bool  # builds one job after another (the driver then times each as it is built)

    def builds(self, jobs: list[BuildJob]) -> Iterator[dict]: ...

    def time(self, artifact: str, backend: str, batch_size: int, threads: int, bench: dict, unsafe: bool) -> dict: ...

    def target_machine(self) -> dict: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Everything in this process, one job after another; speed in a fresh process per job."""

    name = "local"
    #: builds run one after another here, so nothing else runs while a variant is timed: the
    #: driver times each variant as soon as it is built (what the time budget ends on is measured)
    sequential = True

    def builds(self, jobs: list[BuildJob]) -> Iterator[dict]:
        for job in jobs:
            yield bounded_build(job)

    def time(self, artifact, backend, batch_size, threads, bench, unsafe) -> dict:
        return measure_speed(artifact, backend, batch_size, threads, bench, unsafe)

    def target_machine(self) -> dict:
        return machine.facts()

    def close(self) -> None:
        pass


def _build_task(job: BuildJob, *after) -> dict:
    """A Ray task: `after` are the results of builds this one shares a trained prefix with (Ray
    waits for them, so the technique is trained once and then found in the shared folder)."""
    return build(job)


def _time_task(artifact, backend, batch_size, threads, bench, unsafe, custom_objects=()) -> dict:
    custom.activate(custom_objects)  # the benchmark worker it starts inherits it
    return measure_speed(artifact, backend, batch_size, threads, bench, unsafe)


def _facts_task() -> dict:
    return {**machine.facts(), "node": node_facts()}


class RayExecutor:
    """Builds fan out as Ray tasks; timing runs one at a time on the target node.

    Args:
        address: None starts (or reuses) a local Ray instance on this machine; "auto" or
            "ray://HOST:PORT" joins an existing cluster.
        target_node: the node id or IP address where speed is measured.
        target_resource: alternatively, a custom resource name that marks the target nodes.
        retries: how often Ray retries a build whose worker or node died.
    """

    name = "ray"
    sequential = False  # builds run in parallel: variants are timed once the wave's builds are done

    def __init__(self, address: str | None = None, target_node: str | None = None,
                 target_resource: str | None = None, retries: int = 3):
        require("--executor ray", "ray")
        import ray

        self.ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except Exception as e:
                raise KerasTurboError(f"--ray-address {address}: cannot reach a Ray cluster: {error_text(e)}") from None
        self.retries = retries
        self.gpus = ray.cluster_resources().get("GPU", 0) > 0
        self._timing = self._timing_options(target_node, target_resource)

    def _timing_options(self, node: str | None, resource: str | None) -> dict:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if resource:
            if self.ray.cluster_resources().get(resource, 0) <= 0:
                raise KerasTurboError(f"--target-resource {resource}: no node of the cluster has that resource")
            return {"resources": {resource: 0.01}, "num_cpus": 0}
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        if node:
            match = [n for n in alive if node in (n["NodeID"], n.get("NodeManagerAddress"), n.get("NodeManagerHostname"))]
            if not match:
                raise KerasTurboError(f"--target-node {node}: no live node of the cluster has that id or address "
                                      f"(nodes: {', '.join(n['NodeID'][:12] + '@' + n.get('NodeManagerAddress', '?') for n in alive)})")
            node_id = match[0]["NodeID"]
        else:
            node_id = self.ray.get_runtime_context().get_node_id()
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False), "num_cpus": 0}

    def builds(self, jobs: list[BuildJob]) -> Iterator[dict]:
        ray = self.ray
        task = ray.remote(_build_task)
        refs, by_prefix = {}, {}
        for job in jobs:
            trains = [k for k, s in enumerate(job.recipe.steps) if s.kind == "train"]
            shared = job.recipe.prefix_ids()[trains[-1]] if trains else None
            after = [by_prefix[shared]] if shared in by_prefix else []
            opts = {"num_cpus": 1, "max_retries": self.retries, "retry_exceptions": False}
            if trains and self.gpus:
                opts["num_gpus"] = 1
            ref = task.options(**opts).remote(job, *after)
            if shared and shared not in by_prefix:
                by_prefix[shared] = ref
            refs[ref] = job
        pending = list(refs)
        deadline = max((j.deadline for j in jobs if j.deadline is not None), default=None)
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.time())
            done, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not done:  # the time budget ran out: what is still building is cancelled
                for ref in pending:
                    ray.cancel(ref, force=True)
                    yield _stopped(refs[ref], "the time budget ran out while it was queued or being built")
                return
            try:
                yield ray.get(done[0])
            except Exception as e:  # the task failed past its retries: that candidate's failure
                job = refs[done[0]]
                yield no_result(job.recipe, f"ray task lost: {error_text(e)}")

    def time(self, artifact, backend, batch_size, threads, bench, unsafe) -> dict:
        task = self.ray.remote(_time_task).options(max_retries=self.retries, **self._timing)

        return self.ray.get(task.remote(artifact, backend, batch_size, threads, bench, unsafe, custom.current()))

    def target_machine(self) -> dict:
        return self.ray.get(self.ray.remote(_facts_task).options(**self._timing).remote())

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def make_executor(name: str = "local", address: str | None = None, target_node: str | None = None,
                  target_resource: str | None = None) -> Executor:
    """The executor the CLI's --executor names (local, ray)."""
    if name == "local":
        if address or target_node or target_resource:
            raise KerasTurboError("--ray-address / --target-node / --target-resource need --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, target_node, target_resource)
    raise KerasTurboError(f"--executor: unknown {name!r} (expected one of {', '.join(EXECUTORS)})")


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "bounded_build", "make_executor", "running_builds"]
