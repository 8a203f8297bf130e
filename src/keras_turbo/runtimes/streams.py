"""Throughput settings of the single-stream runtimes (LiteRT, ONNX Runtime): parallel streams.

Under the latency objective a runtime gets one request at a time and every core for it
(intra-op threads). Under the throughput objective a batch is served best as several requests
at once, each on fewer cores, as OpenVINO's THROUGHPUT hint does on its own: at small
per-request work (a small model, or a large one at a batch that a thread pool splits poorly) the
threads of one request spend much of their time waiting for each other. Here `streams` copies of
the runtime, one thread each, serve the slices of a batch from a thread pool; LiteRT's `invoke`
and ONNX Runtime's `run` release the GIL, so the copies run on the cores at the same time (two
LiteRT interpreters of MobileNetV2 at batch 8 in two threads: 1.25x the two run one after the
other, on 2 cores).

One stream per thread the run is given (`threads`, default the usable cores): on the 2-core
machines this project measures on that is 2 streams x 1 thread, OpenVINO's own choice there.
Whether it beats one stream of all threads is measured, not assumed: both are candidates.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_turbo.machine import default_threads
from keras_turbo.model import ModelRef
from keras_turbo.runtimes.base import Predictor
from keras_turbo.runtimes.litert import LiteRTPredictor
from keras_turbo.runtimes.onnxruntime import ONNXRuntimePredictor


class StreamsPredictor(Predictor):
    """`inner` opened once per stream with one thread each; a batch is cut into one slice per
    stream (at least one sample each), run concurrently, and the outputs joined in order. A batch
    of one runs on the first stream alone: the latency path on one core."""

    inner: type[Predictor] = Predictor

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int | None = None, device: str = "auto"):
        self.streams = max(1, threads or default_threads())
        per = -(-batch_size // self.streams) if batch_size else None
        self._parts: list[Predictor] = []
        try:
            for _ in range(self.streams):
                self._parts.append(self.inner(ref, threads=1, batch_size=per, device=device))
        except BaseException:
            self.close()
            raise
        first = self._parts[0]
        super().__init__(first.inputs, first.outputs, threads, device=first.device, model_bytes=first.model_bytes,
                         artifact=first.artifact)
        self.input_ranges = first.input_ranges
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix=f"{self.backend}-stream")

    def run(self, feeds):
        n = feeds[0].shape[0]
        k = min(self.streams, n)
        if k <= 1:
            return self._parts[0].run(feeds)
        size = -(-n // k)
        jobs = [self._pool.submit(part.run, [f[a:a + size] for f in feeds])
                for part, a in zip(self._parts, range(0, n, size))]
        outs = [j.result() for j in jobs]
        return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]

    def executed(self):
        return self._parts[0].executed()

    def settings(self) -> dict:
        """One stream's settings (one thread each), and how many serve the slices of a batch."""
        return {"streams": self.streams, "per_stream": self._parts[0].settings()}

    def close(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
            self._pool = None
        for part in self._parts:
            part.close()
        self._parts = []


class LiteRTThroughput(StreamsPredictor):
    """LiteRT (XNNPACK), one interpreter per stream, one thread each."""

    backend = "litert-throughput"
    inner = LiteRTPredictor


class ONNXRuntimeThroughput(StreamsPredictor):
    """ONNX Runtime (CPU provider), one session per stream, one intra-op thread each."""

    backend = "onnxruntime-throughput"
    inner = ONNXRuntimePredictor
