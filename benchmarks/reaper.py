"""A watchdog that kills a service's session when the benchmark that started it dies.

``python -m benchmarks.reaper SID`` waits until its stdin closes, which
happens when the benchmark stops it or dies (even by SIGKILL), then sends
SIGKILL to every process of session ``SID`` until none is left. A benchmark
that stopped the service first leaves it nothing to do. Without it, a
benchmark killed hard would leave Ray's agents behind: they outlive their
raylet when it dies by SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, this one excluded."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            with open(f"/proc/{entry}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def reap(sid: int, rounds: int = 50) -> None:
    """SIGKILL every process of session ``sid`` until none is left (bounded)."""
    for _ in range(rounds):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        time.sleep(0.2)


def main() -> None:
    """Wait for stdin to close, then reap the session given as the only argument."""
    sid = int(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the benchmark's to handle
    while sys.stdin.buffer.read(4096):
        pass
    reap(sid)


if __name__ == "__main__":
    main()
