"""``sentinmail serve --dev`` as a subprocess: start, health, memory, CPU, stop, kill -9.

The service starts in a session of its own (``start_new_session``). Ray's
daemons stay in its process group, but Ray gives each actor's worker process
a group of its own: a group kill misses them. They all stay in the service's
*session*, though, so "the service's processes" here means every process
whose session id is the service's pid, plus any descendant of it (none has
been seen leaving the session; the union is a safety net).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

SENTINMAIL = Path(sys.executable).parent / "sentinmail"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(proc: Any) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def label(proc: Any) -> str:
    """A short name for a process of the service: its Ray actor or daemon, or ``api``."""
    try:
        cmdline: list[str] = proc.cmdline()
    except psutil.Error:
        return "?"
    first = cmdline[0] if cmdline else ""
    if first.startswith("ray::"):
        return first.removeprefix("ray::")
    if "sentinmail" in " ".join(cmdline[:2]):
        return "api (uvicorn + Ray driver)"
    if "multiprocessing.spawn" in " ".join(cmdline):  # an API process of serve --workers
        return "api worker"
    for part in cmdline[:3]:
        name = Path(part).name
        if name in ("gcs_server", "raylet") or name.endswith(".py"):
            return f"ray {name.removesuffix('.py')}"
    return Path(first).name or "?"


@dataclass
class Service:
    """One running ``sentinmail serve --dev``; ``env`` adds ``SENTINMAIL_*`` settings.

    ``args`` are more options for ``serve`` (``--workers 2``, say).
    """

    database_url: str
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sentinmail-")))
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    starts: int = 0
    _reader: threading.Thread | None = None
    _reaper: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"serve-{self.starts}.log"

    def start(self) -> None:
        """Start the service, and a reaper that kills it should this process die first.

        Its stdout lines are collected in ``lines``; on a fresh database the
        first is the new API key.
        """
        self.starts += 1
        env = {
            **os.environ,
            # Before edf2d27, ray.init() joined any cluster `ray start` left on this
            # machine (/tmp/ray/ray_current_cluster) instead of starting its own Ray.
            "RAY_ADDRESS": "local",
            **self.env,
            "SENTINMAIL_DATABASE_URL": self.database_url,
        }
        command = [str(SENTINMAIL), "serve", "--dev", "--port", str(self.port), *self.args]
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        # Kills the service's session if this benchmark dies before stopping it.
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.reaper", str(self.proc.pid)],
            stdin=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        stdout = self.proc.stdout
        assert stdout is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
        self._reader.start()

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def processes(self) -> list[Any]:
        """Every live process of the service (see the module docstring)."""
        if self.proc is None:
            return []
        sid = self.proc.pid
        found: dict[int, Any] = {}
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid:
                    found[proc.pid] = proc
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        try:
            for child in psutil.Process(sid).children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            pass
        return [p for pid, p in found.items() if pid != os.getpid() and _alive(p)]

    def kill(self) -> None:
        """``kill -9`` every process of the service, until none is left (bounded)."""
        for _ in range(50):
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                try:
                    proc.send_signal(signal.SIGKILL)
                except psutil.Error:
                    continue
            psutil.wait_procs(procs, timeout=1)
        if self._reaper is not None:
            self._reaper.communicate(timeout=15)  # closes its stdin: it checks, finds none
            self._reaper = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self._reader is not None:
                self._reader.join(timeout=5)  # at EOF now that every writer is dead
            if self.proc.stdout is not None and not self._reader_alive():
                self.proc.stdout.close()

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then ``kill -9`` of whatever is left after ``grace`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and (self.proc.poll() is None or self.processes()):
                time.sleep(0.2)
        self.kill()


class Sampler(threading.Thread):
    """Samples the service's memory (sum of RSS and of PSS) and CPU time while it runs."""

    def __init__(self, service: Service, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.service = service
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self._known: dict[int, Any] = {}
        self._cpu: dict[int, tuple[str, float]] = {}
        self._cpu_at_start: dict[int, float] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        ticks = 0
        while not self._halt.is_set():
            self.sample(pss=ticks % 4 == 0)
            ticks += 1
            self._halt.wait(self.interval)

    def sample(self, pss: bool = False) -> None:
        with self._lock:
            self._sample(pss)

    def _sample(self, pss: bool) -> None:
        rss = pss_total = 0
        for proc in self.service.processes():
            proc = self._known.setdefault(proc.pid, proc)
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    cpu = times.user + times.system
                    if pss:
                        pss_total += proc.memory_full_info().pss
                kind = self._cpu[proc.pid][0] if proc.pid in self._cpu else label(proc)
            except psutil.Error:
                continue
            self._cpu[proc.pid] = (kind, cpu)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss_total)

    def reset_cpu(self) -> None:
        """Count CPU time from now on (the start-up's is left out)."""
        self.sample()
        self._cpu_at_start = {pid: cpu for pid, (_, cpu) in self._cpu.items()}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds since :meth:`reset_cpu`, per kind of process."""
        self.sample()
        totals: dict[str, float] = {}
        for pid, (kind, cpu) in self._cpu.items():
            used = cpu - self._cpu_at_start.get(pid, 0.0)  # born later: all of it
            totals[kind] = totals.get(kind, 0.0) + used
        return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v}

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (default: this one)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)
