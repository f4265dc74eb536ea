"""Where the service's CPU goes: py-spy on each of its Python processes during a run.

Used by ``python -m benchmarks.throughput --profile`` (needs ``pip install
py-spy`` in the venv). One ``py-spy record --nonblocking`` per process of the
API and of each actor samples on-CPU stacks (idle threads are not sampled);
the collapsed stacks are then summed per kind of process into the functions
that used the most CPU, by their own time (``self``) and with their callees
(``total``), in percent of that kind's samples.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.service import Service, label

PY_SPY = Path(sys.executable).parent / "py-spy"
PROFILED = ("api (uvicorn + Ray driver)", "DeliveryActor", "SchedulerActor", "RouterActor")
_LINE = re.compile(r":\d+\)$")


class Profiler:
    """py-spy attached to the service's Python processes, from :meth:`start` to :meth:`stop`."""

    def __init__(self, service: Service, directory: Path, rate: int = 100) -> None:
        self.service = service
        self.directory = directory
        self.rate = rate
        self._recorders: list[tuple[str, Path, subprocess.Popen[bytes]]] = []

    def start(self) -> None:
        if not PY_SPY.exists():
            raise RuntimeError(f"{PY_SPY} is missing: pip install py-spy")
        self.directory.mkdir(parents=True, exist_ok=True)
        for proc in self.service.processes():
            kind = label(proc)
            if kind not in PROFILED:
                continue
            out = self.directory / f"{kind.split()[0]}-{proc.pid}.collapsed"
            command = [str(PY_SPY), "record", "--pid", str(proc.pid), "--format", "raw"]
            command += ["--rate", str(self.rate), "--nonblocking", "--duration", "300"]
            command += ["--output", str(out)]
            recorder = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self._recorders.append((kind, out, recorder))

    def stop(self) -> None:
        """Stop every recorder (SIGINT makes py-spy write its output)."""
        for _, _, recorder in self._recorders:
            recorder.send_signal(signal.SIGINT)
        for _, _, recorder in self._recorders:
            try:
                recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait(timeout=10)

    def summary(self, top: int = 12) -> dict[str, Any]:
        """Per kind of process: samples, and the top functions by self and total time."""
        stacks: dict[str, Counter[tuple[str, ...]]] = {}
        for kind, out, _ in self._recorders:
            counter = stacks.setdefault(kind, Counter())
            if out.exists():
                for line in out.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    if stack and count.isdigit():
                        frames = tuple(_LINE.sub(")", f) for f in stack.split(";"))
                        counter[frames] += int(count)
        return {kind: _top(counter, top) for kind, counter in stacks.items()}


def _top(stacks: Counter[tuple[str, ...]], top: int) -> dict[str, Any]:
    samples = sum(stacks.values())
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for frames, count in stacks.items():
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count

    def pct(counter: Counter[str]) -> list[list[Any]]:
        return [[f, round(100 * n / samples, 1)] for f, n in counter.most_common(top)]

    return {"samples": samples, "self_pct": pct(own), "total_pct": pct(total)} if samples else {}
