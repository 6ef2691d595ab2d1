"""The worker's counters, sent to the supervisor with every heartbeat (worker process, any thread).

Mutable totals behind a lock; `snapshot()` gives the message form (`WorkerCounters`).
"""

from __future__ import annotations

import bisect
import errno
import threading

from common.messages import ALLOCATE_BUCKETS, CDI_ERROR_REASONS, WorkerCounters


def cdi_error_reason(exc: OSError) -> str:
    """The CDI_ERROR_REASONS label of a failed spec write."""
    return {
        errno.EROFS: "read_only",
        errno.ENOSPC: "no_space",
        errno.EDQUOT: "no_space",
        errno.EACCES: "permission",
        errno.EPERM: "permission",
        errno.ENOENT: "missing_folder",
        errno.ENOTDIR: "missing_folder",
    }.get(exc.errno or 0, "other")


class Counters:
    """Mutable totals behind a lock; `snapshot()` gives the message form."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.allocations_ok = 0
        self.allocations_refused = 0
        self.allocate_seconds_sum = 0.0
        self.allocate_count = 0
        self.allocate_buckets = [0] * len(ALLOCATE_BUCKETS)  # per bucket, made cumulative on read
        self.registrations_ok = 0
        self.registrations_failed = 0
        self.stream_open = False
        self.cdi_spec_current: bool | None = None
        self.cdi_write_errors = [0] * len(CDI_ERROR_REASONS)
        self.cdi_error = ""

    def cdi_write_failed(self, exc: OSError) -> None:
        """A CDI spec write failed (main loop); counted by reason until a publish clears it."""
        reason = cdi_error_reason(exc)
        with self._lock:
            self.cdi_write_errors[CDI_ERROR_REASONS.index(reason)] += 1
            self.cdi_error = reason

    def cdi_published(self, use_cdi: bool, current: bool) -> None:
        with self._lock:
            self.cdi_spec_current = current if use_cdi else None
            if current or not use_cdi:
                self.cdi_error = ""

    def allocation(self, ok: bool, seconds: float) -> None:
        index = bisect.bisect_left(ALLOCATE_BUCKETS, seconds)
        with self._lock:
            if ok:
                self.allocations_ok += 1
            else:
                self.allocations_refused += 1
            self.allocate_seconds_sum += seconds
            self.allocate_count += 1
            if index < len(self.allocate_buckets):
                self.allocate_buckets[index] += 1

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> WorkerCounters:
        with self._lock:
            cumulative: list[int] = []
            total = 0
            for n in self.allocate_buckets:
                total += n
                cumulative.append(total)
            return WorkerCounters(
                allocations_ok=self.allocations_ok,
                allocations_refused=self.allocations_refused,
                allocate_seconds_sum=self.allocate_seconds_sum,
                allocate_count=self.allocate_count,
                allocate_buckets=tuple(cumulative),
                registrations_ok=self.registrations_ok,
                registrations_failed=self.registrations_failed,
                stream_open=self.stream_open,
                cdi_spec_current=self.cdi_spec_current,
                cdi_write_errors=tuple(self.cdi_write_errors),
                cdi_error=self.cdi_error,
            )
