"""The registration machine's handlers for the kubelet's signals (worker process, main thread).

The kubelet's stream opened or lost, the plugin watcher's answer, a kubelet restart, kubelet.sock
or our own socket gone, and the supervisor's `reregister`: the rules for them are in the
docstring of `workers.registration_fsm`, whose `RegistrationMachine` inherits these handlers.
"""

from __future__ import annotations

from workers.events import StreamLost, StreamOpened, WatcherStatus
from workers.registration_core import LOG, MachineCore
from workers.registration_io import (
    Action,
    KubeletGone,
    KubeletRestart,
    OwnSocketGone,
    ReregisterRequested,
    Serve,
    SetTimer,
    StopServer,
)
from workers.registration_table import State, StreamSeen


class SignalHandlers(MachineCore):
    """One handler per signal kind, named for it (`_on_<kind>`)."""

    def _on_stream_opened(self, ev: StreamOpened) -> list[Action]:
        if self.mode == "watcher" and self._current(ev.generation):
            # The plugin watcher armed this claim with its GetInfo: a kubelet (perhaps a
            # restarted one) is registering the socket we serve.
            self.claim = ev.claim
        if not self._current(ev.generation, ev.claim):
            return []
        self.stream = StreamSeen.LIVE
        if self.state is State.ADOPTING:
            return self._registered("registered")
        return []

    def _on_stream_lost(self, ev: StreamLost) -> list[Action]:
        if not self._current(ev.generation, ev.claim):
            return []
        self.stream = StreamSeen.ENDED
        self._reset_backoff()
        state = self.state
        if self.mode == "watcher" and state in (State.AWAITING_WATCHER, State.REGISTERED):
            # A restarted kubelet's plugin watcher finds the socket we serve and calls GetInfo;
            # only if none does within the grace is the socket made anew for it to see.
            LOG.warning("ListAndWatch stream broke: the kubelet lost us; waiting for its watcher")
            self._move(State.AWAITING_WATCHER, "stream broke")
            return [SetTimer(self.t.stream_grace)]
        if self.mode == "watcher" and state is State.SELF_CHECKING:
            return self._serve_afresh("stream broke")
        if state in (State.REGISTERED, State.ADOPTING):
            LOG.warning("ListAndWatch stream broke: the kubelet lost us; registering again")
            return self._register("stream broke")
        return []  # in flight: the Register's outcome decides (it sees ENDED)

    def _on_watcher_registered(self, ev: WatcherStatus) -> list[Action]:
        if not self._current(ev.generation) or self.state is State.REGISTERED:
            return []
        return self._registered("registered by the plugin watcher")

    def _on_watcher_refused(self, ev: WatcherStatus) -> list[Action]:
        if not self._current(ev.generation):
            return []
        error = ev.error or "no reason given"
        LOG.error("the kubelet refused the registration: %s; retrying with a new socket", error)
        actions: list[Action] = [StopServer(), *self._failed(error, True)]
        self.generation = -1
        self.stream = StreamSeen.NONE
        self._move(State.REFUSED, f"refused: {error}")
        return actions

    def _on_kubelet_restart(self, ev: KubeletRestart) -> list[Action]:
        self._reset_backoff()
        self.kubelet_at = max(self.kubelet_at, ev.at)
        state = self.state
        if state is State.AWAITING_WATCHER:
            # The grace for its plugin watcher counts from the new kubelet's arrival: counted from
            # the stream's end, it ran out while the kubelet was still away and the socket was
            # made anew just as the watcher found the old one (~1 s lost with a real kubelet).
            return [SetTimer(self._watcher_grace_left())]
        if state is State.REGISTERED:
            return self._restart_while_registered(ev)
        if state is State.REGISTERING:
            return self._restart_while_registering(ev)
        if state is State.UNSERVED:
            return [Serve()]
        if state is State.REFUSED and self.mode == "watcher":
            self._move(State.UNSERVED)
            return [Serve()]
        if state in (State.ADOPTING, State.BACKING_OFF, State.REFUSED):
            return self._register()
        return []

    def _restart_while_registered(self, ev: KubeletRestart) -> list[Action]:
        if ev.at <= self.sent_at:
            LOG.info("%s; already registered with this kubelet", ev.reason)
            return []
        if self.stream is StreamSeen.LIVE:
            LOG.info("%s, but the kubelet holds our live stream: it still has us", ev.reason)
            return []
        LOG.info("%s: the kubelet (re)started; registering again", ev.reason)
        if self.mode == "watcher":
            self._move(State.AWAITING_WATCHER, "kubelet restarted")
            return []
        return self._register("kubelet restarted")

    def _restart_while_registering(self, ev: KubeletRestart) -> list[Action]:
        inflight = self.inflight
        if inflight is not None and ev.at <= inflight.started:
            return []  # that Register went out after the new kubelet.sock appeared
        if inflight is not None:
            # kubelet.sock is newer than our Register: that call went to the kubelet before, which
            # may never answer (a kubelet stopping holds the call until it dies). Waiting for it
            # cost ~1 s per restart with a real kubelet; the new kubelet gets its own Register now.
            LOG.info("%s after our Register went out: registering with the new kubelet", ev.reason)
            self.inflight = None
            return self._register()
        self.restart_pending = True
        return []

    def _on_kubelet_gone(self, ev: KubeletGone) -> list[Action]:
        if self.stream is StreamSeen.LIVE:
            LOG.warning("kubelet.sock went away, but our stream is live; watching")
            return []
        LOG.warning("kubelet.sock went away; waiting for the kubelet")
        if self.mode == "watcher":
            self._move(State.AWAITING_WATCHER, "kubelet.sock gone")
            return []
        return self._register("kubelet.sock gone")

    def _on_own_socket_gone(self, ev: OwnSocketGone) -> list[Action]:
        self._reset_backoff()
        if self.state is State.UNSERVED:
            return [Serve()]
        if self.generation < 0:
            return []  # refused in watcher mode: we removed it ourselves
        LOG.warning("%s; serving again", ev.reason)
        self.generation = -1
        self.stream = StreamSeen.NONE
        self._move(State.UNSERVED, "own socket removed")
        return [Serve(relink=True)]

    def _on_reregister(self, ev: ReregisterRequested) -> list[Action]:
        state = self.state
        if state is State.REGISTERED and self.stream is StreamSeen.LIVE:
            LOG.info(
                "re-register request noted, not acted on (%s): the kubelet holds our live "
                "ListAndWatch stream, so it still has us",
                ev.reason,
            )
            return []
        if state not in (State.REGISTERED, State.BACKING_OFF, State.REFUSED):
            LOG.info(
                "re-register request noted, not acted on (%s): %s is in progress",
                ev.reason,
                state.value,
            )
            return []
        LOG.info("re-registering on request: %s", ev.reason)
        self._reset_backoff()
        if self.mode == "watcher":
            if self.generation < 0:
                self._move(State.UNSERVED)
                return [Serve()]
            return self._serve_afresh(ev.reason)
        return self._register(ev.reason)
