"""Tables a person can read at a glance (rich), for the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from keras_turbo.bench import BenchmarkReport


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}")


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def benchmark_table(report: BenchmarkReport) -> Table:
    """One row per (runtime, batch size); speedup is against keras-predict at the same batch size."""
    t = Table(title=f"{report.model}  ({report.machine.get('cpu', '?')}, threads {report.results[0].threads if report.results else '?'})")
    for col in ("backend", "batch", "p50 ms", "p90 ms", "p99 ms", "items/s", "vs predict", "init ms", "1st ms", "peak MB", "size"):
        t.add_column(col, justify="left" if col == "backend" else "right")
    for r in report.results:
        if not r.ok:
            t.add_row(r.backend, str(r.batch_size), f"[red]failed: {r.error}[/red]", *[""] * 8)
            continue
        base = report.get("keras-predict", r.batch_size)
        speed = f"{base.latency_ms['p50'] / r.latency_ms['p50']:.1f}x" if base and base.ok else "-"
        t.add_row(r.backend, str(r.batch_size), _ms(r.latency_ms["p50"]), _ms(r.latency_ms["p90"]), _ms(r.latency_ms["p99"]),
                  f"{r.throughput_per_s:,.0f}", speed, _ms(r.init_ms), _ms(r.first_inference_ms),
                  f"{r.peak_rss_mb:.0f}", _size(r.model_bytes))
    t.caption = (f"harness overhead {report.harness_overhead_ms * 1000:.1f} us per call; "
                 "each runtime and batch size measured in its own process")
    return t


def print_table(table, console: Console | None = None) -> None:
    (console or Console()).print(table)
