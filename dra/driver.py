"""Preparing and unpreparing claims: the state the kubelet's calls act on (DRA process).

Called from gRPC threads (v1 and v1beta1 alike). Claims are read from the API server and their
CDI specs written outside the lock, so many claims are served at once; checking and recording
are done under one lock, and the checkpoint is saved before the answer leaves, with concurrent
calls sharing one save. Both calls are idempotent: a claim
prepared before is answered from the checkpoint without another API read, and unpreparing a
claim this driver does not know succeeds after removing any spec of its UID.

At start, `reconcile` removes claim specs in the CDI folder that the checkpoint does not hold
(a prepare cut short by a kill before its answer was recorded: the kubelet will ask again).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dra import claim_cdi
from dra.checkpoint import Checkpoint, PreparedClaim, PreparedDevice
from dra.claims import ClaimError, ClaimRef, results
from dra.counters import DriverCounters
from dra.devices import DraDevice
from dra.kube_api import ApiError
from dra.names import claim_uid_of_spec

LOG = logging.getLogger(__name__)

GetClaim = Callable[[str, str], Mapping[str, Any]]
#: A claim to prepare: its reference, CDI spec and the answer for the kubelet.
_Planned = tuple[ClaimRef, dict[str, Any], tuple[PreparedDevice, ...]]


@dataclass(frozen=True)
class Outcome:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class Driver:
    def __init__(
        self,
        driver: str,
        pool: str,
        get_claim: GetClaim,
        cdi_dir: str,
        checkpoint: Checkpoint,
        counters: DriverCounters,
    ) -> None:
        self.driver = driver
        self.pool = pool
        self._get_claim = get_claim
        self.cdi_dir = cdi_dir
        self.checkpoint = checkpoint
        self.counters = counters
        self._lock = threading.Lock()
        self._devices: dict[str, DraDevice] = {}
        self.prepared: dict[str, PreparedClaim] = checkpoint.load()
        self._save_lock = threading.Lock()
        self._version = 0  # bumped under _lock at each change of `prepared`
        self._saved = 0  # the version the checkpoint on disk holds

    def set_devices(self, devices: Sequence[DraDevice]) -> None:
        with self._lock:
            self._devices = {d.name: d for d in devices}

    def prepared_count(self) -> int:
        with self._lock:
            return len(self.prepared)

    def reconcile(self) -> list[str]:
        """Remove claim specs the checkpoint does not hold; the UIDs removed."""
        removed = []
        try:
            names = os.listdir(self.cdi_dir)
        except OSError:
            return []
        with self._lock:
            for name in names:
                uid = claim_uid_of_spec(name)
                if uid is not None and uid not in self.prepared:
                    claim_cdi.delete(self.cdi_dir, uid)
                    removed.append(uid)
        if removed:
            LOG.info("removed CDI specs of claims never recorded as prepared uids=%s", removed)
        return removed

    # ---- NodePrepareResources -------------------------------------------------------------

    def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, Outcome]:
        started = time.monotonic()
        with self._lock:
            todo = [r for r in refs if r.uid not in self.prepared]
        fetched = self._fetch(todo)
        out: dict[str, Outcome] = {}
        specs = self._plan(refs, fetched, out)
        self._write_specs(specs, out)
        version = self._record(specs, out)
        if version:
            self._persist(version)  # before the kubelet hears of it
        results_by = Counter("error" if o.error else "ok" for o in out.values())
        self.counters.call("prepare", time.monotonic() - started, results_by)
        return out

    def _fetch(self, todo: Sequence[ClaimRef]) -> dict[str, Mapping[str, Any] | str]:
        fetched: dict[str, Mapping[str, Any] | str] = {}
        for ref in todo:
            try:
                fetched[ref.uid] = self._get_claim(ref.namespace, ref.name)
            except ApiError as err:
                self.counters.api_error("get_claim")
                fetched[ref.uid] = f"cannot read claim {ref} from the API server: {err}"
        return fetched

    def _plan(
        self,
        refs: Sequence[ClaimRef],
        fetched: Mapping[str, Mapping[str, Any] | str],
        out: dict[str, Outcome],
    ) -> dict[str, _Planned]:
        """Answers for claims prepared before; checks (against the devices we publish now)
        and CDI specs for the others."""
        specs: dict[str, _Planned] = {}
        with self._lock:
            for ref in refs:
                known = self.prepared.get(ref.uid)
                if known is not None:
                    out[ref.uid] = Outcome(known.devices)
                    continue
                checked = self._check(ref, fetched.get(ref.uid, "not fetched"))
                if isinstance(checked, Outcome):
                    out[ref.uid] = checked
                else:
                    specs[ref.uid] = (ref, *checked)
        return specs

    def _write_specs(self, specs: Mapping[str, _Planned], out: dict[str, Outcome]) -> None:
        for uid, (ref, spec, devices) in specs.items():  # one file each: no lock needed
            try:
                claim_cdi.write(self.cdi_dir, uid, spec)
                out[uid] = Outcome(devices)
            except OSError as err:
                text = f"cannot write the CDI spec of claim {ref} in {self.cdi_dir}: {err}"
                LOG.error("%s", text)
                out[uid] = Outcome(error=text)

    def _record(self, specs: Mapping[str, _Planned], out: Mapping[str, Outcome]) -> int:
        """Record the prepared claims; the new version to persist (0: nothing changed)."""
        with self._lock:
            for uid, (ref, _, devices) in specs.items():
                if not out[uid].error:
                    self.prepared[uid] = PreparedClaim(ref.namespace, ref.name, devices)
                    LOG.info("prepared claim=%s uid=%s", ref, uid)
            if not specs:
                return 0
            self._version += 1
            return self._version

    def _check(
        self, ref: ClaimRef, claim: Mapping[str, Any] | str
    ) -> Outcome | tuple[dict[str, Any], tuple[PreparedDevice, ...]]:
        """The claim's CDI spec and answer, or an Outcome with the error (under the lock)."""
        if isinstance(claim, str):
            LOG.warning("prepare failed claim=%s uid=%s: %s", ref, ref.uid, claim)
            return Outcome(error=claim)
        try:
            assigned = results(claim, ref, self.driver, self.pool, self._devices)
        except ClaimError as err:
            LOG.warning("prepare refused claim=%s uid=%s: %s", ref, ref.uid, err)
            return Outcome(error=str(err))
        spec = claim_cdi.build(self.driver, ref.uid, [self._devices[a.device] for a in assigned])
        devices = tuple(
            PreparedDevice(
                request=a.request,
                pool=a.pool,
                device=a.device,
                share_id=a.share_id,
                cdi_ids=(claim_cdi.device_id(self.driver, ref.uid, a.device),),
            )
            for a in assigned
        )
        return spec, devices

    def _persist(self, version: int) -> None:
        """Save the checkpoint at least as new as `version`: calls that arrive while a save is
        under way share the next one (one fsync for a burst of claims, not one each)."""
        with self._save_lock:
            if self._saved >= version:
                return
            with self._lock:
                snapshot, current = dict(self.prepared), self._version
            self.checkpoint.save(snapshot)
            self._saved = current

    # ---- NodeUnprepareResources -----------------------------------------------------------

    def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        started = time.monotonic()
        out: dict[str, str] = {}
        results_by: Counter[str] = Counter()
        with self._lock:
            changed = False
            for ref in refs:
                try:
                    claim_cdi.delete(self.cdi_dir, ref.uid)
                except OSError as err:
                    out[ref.uid] = f"cannot remove the CDI spec of claim {ref}: {err}"
                    results_by["error"] += 1
                    continue
                if self.prepared.pop(ref.uid, None) is not None:
                    changed = True
                    LOG.info("unprepared claim=%s uid=%s", ref, ref.uid)
                out[ref.uid] = ""
                results_by["ok"] += 1
            version = 0
            if changed:
                self._version += 1
                version = self._version
        if version:
            self._persist(version)
        self.counters.call("unprepare", time.monotonic() - started, results_by)
        return out
