"""The supervisor's one view of which pods hold which devices (supervisor process).

A role of its own: the arbiter runs its poller child (`supervisor.pod_resources`) and reads it on
every loop pass; held IDs (`supervisor.held_ids`) read the snapshot from here, and metrics are
told of each new snapshot (`Observer.pods_listed`). So held IDs work with the metrics endpoint
off, and nothing in the supervisor's core reads from metrics.
"""

from __future__ import annotations

import logging

from supervisor.children import ChildSpec
from supervisor.held_ids import HeldIds
from supervisor.pod_resources import PodAllocation, PodResourcesReader

LOG = logging.getLogger(__name__)


class PodResources:
    """Which pods hold which devices, as the kubelet last said, and the IDs held because of it.

    An empty `socket_path` turns PodResources off: nothing is known, nothing is held.
    """

    def __init__(self, socket_path: str = "", interval: float = 10.0) -> None:
        self.reader: PodResourcesReader | None = None
        #: The latest snapshot's rows (every resource the kubelet lists; empty while unavailable).
        self.rows: tuple[PodAllocation, ...] = ()
        #: What each worker keeps advertising above its rdmaHcaMax, from `known()`.
        self.held_ids = HeldIds()
        if socket_path.strip():
            try:
                # The supervisor's lifecycle runs the poller child (`child_spec`); this reads it.
                self.reader = PodResourcesReader(socket_path.strip(), interval, supervise=False)
            except (OSError, ValueError) as err:  # no pipe: a supervisor without pods beats none
                LOG.error("cannot start the PodResources poller: %s; no pod allocations", err)

    @property
    def available(self) -> bool:
        """Whether the API answered at the last poll."""
        return self.reader is not None and self.reader.available

    def known(self) -> tuple[PodAllocation, ...] | None:
        """The latest snapshot, or None when unknown (no poller, kubelet away).

        Unknown is not empty: an empty list while the kubelet restarts would release held IDs
        exactly when it re-admits the pods holding them.
        """
        return self.rows if self.available else None

    def child_spec(self) -> ChildSpec | None:
        return self.reader.child_spec() if self.reader is not None else None

    def fileno(self) -> int | None:
        return self.reader.fileno() if self.reader is not None else None

    def timeout(self) -> float | None:
        return self.reader.timeout() if self.reader is not None else None

    def read(self) -> bool:
        """Take the newest snapshot from the poller's pipe (never blocks); True when one came."""
        rows = self.reader.read() if self.reader is not None else None
        if rows is None:
            return False
        self.rows = tuple(rows)
        return True

    def stop(self) -> None:
        """Close the pipe (idempotent); the lifecycle stops the poller child itself."""
        if self.reader is not None:
            self.reader.stop()
