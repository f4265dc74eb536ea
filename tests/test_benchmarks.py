"""The benchmark scripts keep working: each runs as a user runs it, with tiny parameters.

No timing is asserted (these are benchmarks, not tests): only that each
script finishes, prints its result as JSON on its last stdout line, writes
the same to ``<results-dir>/<name>.json``, has its fields, and lost nothing.
Each run starts ``sentinmail serve`` and a Ray of its own (~15 s); they start
in two waves (see ``WAVES``), so the module costs about as long as the slowest
run of each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).parent.parent
TINY: dict[str, list[str]] = {
    "isolation": [
        *("--events", "200", "--hosts", "10", "--hang", "3", "--attempt-timeout", "1"),
        *("--rounds", "2"),
    ],
    "throughput": ["--events", "200", "--hosts", "3", "--raw-requests", "200"],
    "priority": ["--events", "200", "--high", "20", "--hosts", "2"],
    "recovery": ["--events", "400", "--hosts", "2", "--ingest-rate", "200"],
    "recovery_single": ["--events", "400", "--hosts", "2", "--ingest-rate", "200", "--single"],
    "ingest": [
        *("--hosts", "3", "--single-requests", "200", "--ten-events", "400"),
        *("--batch-events", "2000"),
    ],
    # benchmarks.overhead MODE, and the soak, each a fraction of a minute.
    "overhead-purge": ["purge", "--rounds", "1", "--events", "200", "--hosts", "2",
                       "--expired", "4000", "--purge-within", "60"],
    "overhead-scrape": ["scrape", "--rounds", "1", "--events", "200", "--hosts", "2",
                        "--idle-scrapes", "2"],
    "endpoint_stats": ["--attempts", "3000", "--calls", "3", "--days", "29"],
    "soak": ["--minutes", "0.3", "--rate", "100", "--retention", "5", "--hosts", "2",
             "--sample-every", "2"],
}  # fmt: skip
MODULE = {"recovery_single": "recovery"}  # a mode of another script
FIELDS: dict[str, set[str]] = {
    "throughput": {
        "events",
        "deliveries",
        "ingest_per_s",
        "deliveries_per_s",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "raw_limit_per_s",
        "ratio_to_raw",
        "lost",
        "peak_rss_mb",
        "raw_cpu_ms",
        "worker_limit_per_s",
        "worker_cpu_ms",
        "duplicates",
    },
    "isolation": {
        "healthy_only",
        "with_bad_hosts",
        "throughput_ratio",
        "p99_ratio",
        "all_healthy_throughput_ratio",
        "lost",
        "duplicates",
    },
    "priority": {"high_p99_ms", "low_p99_ms", "ratio", "lost", "duplicates"},
    "recovery": {"accepted", "delivered", "lost", "duplicates"},
    "recovery_single": {"accepted", "delivered", "lost", "duplicates", "reposted_already_stored"},
    "ingest": {
        "single_per_s",
        "single_ratio",
        "single_p99_ms",
        "ten_per_s",
        "batch_per_s",
        "bare_limit_per_s",
        "lost",
        "duplicates",
        "phases",
    },
    "overhead-purge": {
        "baseline",
        "feature",
        "deliveries_per_s_ratio",
        "cpu_ms_per_delivery_ratio",
        "runs",
    },
    "overhead-scrape": {
        "baseline",
        "feature",
        "deliveries_per_s_ratio",
        "cpu_ms_per_delivery_ratio",
        "runs",
    },
    "soak": {"rows", "size", "samples", "events_posted", "lost", "duplicates"},
    "endpoint_stats": {"attempts", "windows", "rollup_ms_per_batch_p95", "lost", "duplicates"},
}


# Isolation's tiny run gives attempts 1 s, which a healthy host misses when nine
# services share two cores (duplicates): it runs beside the first wave only, and
# the second wave starts as soon as it has finished.
WAVES = [
    ["isolation", "throughput", "priority", "recovery"],
    ["recovery_single", "ingest", "overhead-purge", "overhead-scrape", "soak", "endpoint_stats"],
]
GATE = "isolation"


@dataclass
class Run:
    """A benchmark's process, then what it printed."""

    proc: subprocess.Popen[str]
    results: Path
    stdout: str = ""
    stderr: str = ""
    done: bool = False

    def finish(self) -> Run:
        if not self.done:
            self.stdout, self.stderr = self.proc.communicate(timeout=300)
            self.done = True
        return self


class Runs:
    """The benchmarks in two waves (see ``WAVES``); :meth:`get` waits for one to finish."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self.tmp = tmp
        self.started: dict[str, Run] = {}

    def get(self, name: str) -> Run:
        if not self.started:
            self._start_wave(0)
        if name not in self.started or name == GATE:
            self.started[GATE].finish()
            self._start_wave(1)
        return self.started[name].finish()

    def _start_wave(self, index: int) -> None:
        for name in WAVES[index]:
            if name not in self.started:
                self.started[name] = self._start(name)

    def _start(self, name: str) -> Run:
        results = self.tmp.mktemp(name)
        # overhead-purge: benchmarks.overhead purge; recovery_single: benchmarks.recovery --single
        module = f"benchmarks.{MODULE.get(name, name.split('-')[0])}"
        command = [sys.executable, "-m", module, *TINY[name], "--results-dir", str(results)]
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return Run(proc, results)

    def stop(self) -> None:
        for run in self.started.values():
            proc = run.proc
            if proc.poll() is None:
                proc.terminate()  # the scripts stop everything they started on SIGTERM
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """The benchmarks, each writing to a results directory of its own."""
    started = Runs(tmp_path_factory)
    try:
        yield started
    finally:
        started.stop()


def test_every_benchmark_runs_in_one_wave() -> None:
    assert sorted(name for wave in WAVES for name in wave) == sorted(TINY)


@pytest.mark.parametrize("name", list(TINY))
def test_benchmark_runs_and_loses_nothing(name: str, runs: Runs) -> None:
    run = runs.get(name)
    assert run.proc.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert json.loads((run.results / f"{name}.json").read_text()) == result
    assert FIELDS[name] <= result.keys()
    assert result["lost"] == 0
    if not name.startswith("recovery"):  # no fault is injected: every delivery arrives once
        assert result["duplicates"] == 0
    if name == "throughput":
        assert result["deliveries"] == result["events"] == 200
    if name == "isolation":
        # The ratios compare the same 8 hosts and their 160 events in both phases.
        assert result["healthy_only"]["compared_deliveries"] == 160
        assert result["with_bad_hosts"]["compared_deliveries"] == 160
        assert result["healthy_only"]["all_healthy"]["deliveries"] == 200
        assert result["with_bad_hosts"]["all_healthy"]["deliveries"] == 160
        assert len(result["rounds"]) == 2  # each on a service of its own
        assert all(r["with_bad_hosts"]["lost"] == 0 for r in result["rounds"])
    if name.startswith("recovery"):
        assert result["delivered"] == result["accepted"] == 400
        assert result["lost_of_accepted_before_kill"] == 0
    if name == "recovery_single":
        assert result["events_per_request"] == 1
    if name == "ingest":
        phases = {p["phase"]: p for p in result["phases"]}
        assert set(phases) == {
            "single_c16", "single_c64", "ten_c16", "ten_c64", "batch_c16", "batch_c64",
            "single_c64_no_delivery", "ten_c64_no_delivery",
        }  # fmt: skip
        assert all(p["errors"] == {} for p in phases.values())
        assert phases["single_c64"]["events"] == phases["single_c64"]["requests"] == 200
        assert phases["ten_c16"]["events"] == 400
        assert result["bare_limit_per_s"] == max(result["bare_runs_per_s"]) > 0
    if name == "overhead-purge":
        purged = next(r for r in result["runs"] if r["variant"] == "feature")
        kept = next(r for r in result["runs"] if r["variant"] == "baseline")
        assert purged["expired_events_left"] == 0  # retention on: all gone
        assert kept["expired_events_left"] == kept["expired_events"] == 1000  # off: all kept
    if name == "overhead-scrape":
        scraped = next(r for r in result["runs"] if r["variant"] == "feature")
        assert "cpu_ms_per_scrape" in scraped["idle"]
    if name == "endpoint_stats":
        assert result["windows"]["30d"]["attempts"] == 3000
    if name == "soak":
        assert result["events_posted"] > 0
        assert len(result["samples"]) >= 3
        assert (run.results / "soak.png").stat().st_size > 0
