"""Resource footprints of real processes, for the reliability suite (test process).

A reliability test measures a process before and after its churn and asserts the growth stays
under a bound; `Footprint` reads threads, open fds and memory from /proc through psutil. Memory
is USS where the kernel gives it (what the process alone holds), else RSS.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import psutil

#: Growth allowed after warm-up: Python's allocator keeps freed arenas, so a few MiB of
#: fluctuation is not a leak; a leak of even 100 bytes per call over 10 000 calls is 1 MiB more.
MEMORY_SLACK = 4 * 1024 * 1024
#: Threads and fds come and go with gRPC's own housekeeping (a poller thread, a wakeup fd).
THREAD_SLACK = 2
FD_SLACK = 4


@dataclass(frozen=True)
class Footprint:
    threads: int
    fds: int
    memory: int

    @classmethod
    def of(cls, pid: int) -> Footprint:
        proc = psutil.Process(pid)
        # The smallest of three reads: a single smaps read was once off by gigabytes for a
        # forked worker (a transient, not a leak: a leak stays in every read).
        try:
            memory = min(proc.memory_full_info().uss for _ in range(3))
        except psutil.AccessDenied:  # pragma: no cover - we run as root
            memory = proc.memory_info().rss
        return cls(proc.num_threads(), proc.num_fds(), memory)

    @classmethod
    def self(cls) -> Footprint:
        gc.collect()
        return cls.of(os.getpid())

    def growth(self, later: Footprint) -> Footprint:
        return Footprint(
            later.threads - self.threads, later.fds - self.fds, later.memory - self.memory
        )

    def assert_bounded(self, later: Footprint, what: str, memory_slack: int = MEMORY_SLACK) -> None:
        grown = self.growth(later)
        assert grown.threads <= THREAD_SLACK, f"{what}: threads {self.threads} -> {later.threads}"
        assert grown.fds <= FD_SLACK, f"{what}: fds {self.fds} -> {later.fds}"
        assert grown.memory <= memory_slack, (
            f"{what}: memory grew by {grown.memory / 2**20:.1f} MiB "
            f"({self.memory / 2**20:.1f} -> {later.memory / 2**20:.1f} MiB)"
        )

    def describe(self) -> str:
        return f"threads={self.threads} fds={self.fds} memory={self.memory / 2**20:.1f}MiB"


def soak() -> bool:
    """RDMA_SHARED_DP_SOAK=1 turns the bounded runs into long ones."""
    return os.environ.get("RDMA_SHARED_DP_SOAK", "") not in ("", "0")


def scale(normal: int, long: int) -> int:
    return long if soak() else normal
