"""Draw ``results/summary.png`` from the benchmarks' JSON results.

``python -m benchmarks.summary [--results-dir DIR]``

Six panels: throughput against the raw HTTP limit, healthy-host latency and
throughput with and without bad hosts, high- against low-priority latency,
recovery's counts (batches, and one event per request), and ingestion's rates
and latencies by events per request. Each backend that has results
(``<name>.sqlite.json``, ``<name>.postgresql.json``, else ``<name>.json``)
gets its own bars.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

from benchmarks.harness import RESULTS

BACKENDS = ("sqlite", "postgresql")
Results = dict[str, dict[str, Any]]


def load_results(directory: Path, name: str) -> Results:
    """``{backend: result}`` of one benchmark."""
    found: Results = {}
    for backend in BACKENDS:
        path = directory / f"{name}.{backend}.json"
        if path.exists():
            found[backend] = json.loads(path.read_text())
    latest = directory / f"{name}.json"
    if not found and latest.exists():
        result = json.loads(latest.read_text())
        found[str(result.get("database", "?"))] = result
    return found


def _bars(ax: Any, groups: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """Grouped bars: one group per label in ``groups``, one bar per series."""
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def draw(directory: Path) -> Path:
    """Draw every panel that has results; return the PNG's path."""
    matplotlib.use("Agg")  # files only, no display; before pyplot is imported
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 8.5))
    (throughput_ax, isolation_ax, ingest_ax), (priority_ax, recovery_ax, latency_ax) = axes

    throughput = load_results(directory, "throughput")
    _bars(
        throughput_ax,
        list(throughput),
        {
            "service deliveries/s": [r["deliveries_per_s"] for r in throughput.values()],
            "raw aiohttp limit/s": [r["raw_limit_per_s"] for r in throughput.values()],
            "ingest events/s": [r["ingest_per_s"] for r in throughput.values()],
        },
        "per second",
    )
    throughput_ax.axhline(2500, color="grey", linestyle="--", linewidth=1)
    throughput_ax.set_title("Throughput vs raw HTTP limit (target 2,500/s, dashed)")

    isolation = load_results(directory, "isolation")
    phases = ("healthy_only", "with_bad_hosts")
    groups = [f"{b}\n{p.replace('_', ' ')}" for b in isolation for p in phases]
    xs = range(len(groups))
    p99 = [r[p]["p99_ms"] for r in isolation.values() for p in phases]
    rate = [r[p]["deliveries_per_s"] for r in isolation.values() for p in phases]
    left = isolation_ax.bar([x - 0.2 for x in xs], p99, 0.4, label="healthy p99 ms")
    isolation_ax.bar_label(left, fmt="%.0f", fontsize=7)
    isolation_ax.set_ylabel("p99 ms")
    rate_ax = isolation_ax.twinx()
    right = rate_ax.bar([x + 0.2 for x in xs], rate, 0.4, color="tab:orange", label="healthy /s")
    rate_ax.bar_label(right, fmt="%.0f", fontsize=7)
    rate_ax.set_ylabel("healthy deliveries/s")
    isolation_ax.set_xticks(list(xs), groups)
    isolation_ax.legend(handles=[left, right], fontsize=7, loc="upper center")
    for ax, values in ((isolation_ax, p99), (rate_ax, rate)):
        ax.set_ylim(top=max(values, default=1) * 1.15)  # room for the labels
    isolation_ax.set_title("The same 40 hosts, beside 10 healthy, then 5 hanging + 5 failing")

    priority = load_results(directory, "priority")
    _bars(
        priority_ax,
        list(priority),
        {
            "high p99 ms": [r["high_p99_ms"] for r in priority.values()],
            "low p99 ms": [r["low_p99_ms"] for r in priority.values()],
        },
        "ms (log)",
    )
    priority_ax.set_yscale("log")
    priority_ax.set_ylim(bottom=100)  # bars start at 100 ms, not at the smallest value
    priority_ax.set_title("Priority: high-priority events through a low-priority backlog")

    recovery = {
        f"{backend}{label}": result
        for name, label in (("recovery", ""), ("recovery_single", "\n1 event/request"))
        for backend, result in load_results(directory, name).items()
    }
    _bars(
        recovery_ax,
        list(recovery),
        {
            key: [float(r[key]) for r in recovery.values()]
            for key in ("accepted", "delivered", "lost", "duplicates")
        },
        "events",
    )
    recovery_ax.set_title("Recovery after kill -9 of every service process")

    ingest = load_results(directory, "ingest")
    _bars(
        ingest_ax,
        list(ingest),
        {
            "1/request (c64, delivering)": [r["single_per_s"] for r in ingest.values()],
            "bare FastAPI limit": [r["bare_limit_per_s"] for r in ingest.values()],
            "10/request": [r["ten_per_s"] for r in ingest.values()],
            "500/request": [r["batch_per_s"] for r in ingest.values()],
        },
        "events/s (log)",
    )
    ingest_ax.set_yscale("log")
    for target in (2_000, 8_000, 10_000):
        ingest_ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    ingest_ax.set_title("Ingestion, events/s (targets 2,000 / 8,000 / 10,000, dashed)")

    ingest_phases = ("single_c16", "single_c64", "ten_c16", "ten_c64", "batch_c16", "batch_c64")
    _bars(
        latency_ax,
        [p.replace("_", "\n") for p in ingest_phases],
        {
            f"{backend} p99 ms": [
                next(x["p99_ms"] for x in r["phases"] if x["phase"] == p) for p in ingest_phases
            ]
            for backend, r in ingest.items()
        },
        "request to 202, p99 ms (log)",
    )
    latency_ax.set_yscale("log")
    latency_ax.axhline(100, color="grey", linestyle="--", linewidth=1)
    latency_ax.set_title("Ingestion p99, request to 202 (target 100 ms at 1/request)")

    fig.tight_layout()
    out = directory / "summary.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    """Parse options and draw."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    print(draw(args.results_dir))


if __name__ == "__main__":
    main()
