"""Honest host latency while trials run side by side: a per-node exclusive timing window.

Each node has one TimingGate (a Ray actor pinned to it). A trial registers when it starts and leaves when it
ends; whenever its build is about to time latency (`edgepack.measure.latency`: the validate stage, the
accuracy-aware search, reference timings) it parks at the gate. The gate lets one parked trial time only when
no other trial on the node is computing: every other registered trial is parked too (or gone). While anyone
is parked, newly started trials wait at the door, so the node drains instead of filling up again. The timed
figures therefore come from a quiet node, as in a sequential run, and the bundle stays the output of one
ordinary build (its manifest, verdicts and reports are written from those figures; nothing is patched later).

Why not the alternatives: a Ray resource `timing_slot: 1` per node stops two timings from overlapping but not
the other trials' exports and quantizations from loading the cores during a timing; a separate timing phase
after all builds would have to keep every FP32 model and rewrite each bundle's manifest, budget verdicts,
reports and zip after the fact. The cost of the gate is idle CPU while a node drains (measured in
benchmarks/bench_sweep.py).

GateState is the pure policy (tested alone); TimingGate wraps it as an async Ray actor; `gated_latency`
routes a worker's `measure.latency` calls through its node's gate for the duration of one trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

RUN, PARKED, TIMING, DOOR = "run", "parked", "timing", "door"
POLL_S = 0.05
HOLD_S = 1.0  # a trial that just timed keeps the window this long: validate times at N threads, then at one


@dataclass
class GateState:
    """Who is on one node and in which state. ``alive(pid)`` says whether a trial's worker still exists."""

    alive: Callable[[int], bool]
    clock: Callable[[], float] = time.monotonic
    trials: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (worker pid, state)
    queue: list[str] = field(default_factory=list)                     # parked keys, first come first timed
    held: dict[str, float] = field(default_factory=dict)               # key -> end of its hold (clock s)

    def _states(self) -> list[str]:
        self._expire()
        return [s for _, s in self.trials.values()]

    def _expire(self) -> None:
        for key, until in list(self.held.items()):
            if self.clock() >= until:
                del self.held[key]
                if key in self.trials and self.trials[key][1] == TIMING:
                    self.trials[key] = (self.trials[key][0], RUN)

    def reap(self) -> list[str]:
        """Forget trials whose worker died (killed, node lost): they will never leave by themselves."""
        dead = [k for k, (pid, _) in self.trials.items() if not self.alive(pid)]
        for key in dead:
            self.leave(key)
        return dead

    def enter(self, key: str, pid: int) -> bool:
        """Register a starting trial; True when it may compute now, False when it waits at the door."""
        busy = any(s in (PARKED, TIMING) for s in self._states())
        self.trials[key] = (pid, DOOR if busy else RUN)
        return not busy

    def admitted(self, key: str) -> bool:
        """A trial at the door is let in once nobody is parked or timing."""
        if key not in self.trials:
            return True
        if self.trials[key][1] == DOOR and not any(s in (PARKED, TIMING) for s in self._states()):
            for k, (pid, s) in list(self.trials.items()):
                if s == DOOR:
                    self.trials[k] = (pid, RUN)
        return self.trials[key][1] != DOOR

    def park(self, key: str, pid: int) -> None:
        self._expire()
        if self.held.pop(key, None) is not None and self.trials.get(key, (0, ""))[1] == TIMING:
            return  # timing again within its hold: the window is still its own
        self.trials[key] = (pid, PARKED)
        self.queue.append(key)

    def may_time(self, key: str) -> bool:
        """True (and the trial is now timing) when it is first in line and no other trial computes."""
        if self.trials.get(key, (0, ""))[1] == TIMING and key not in self.queue:
            return True  # re-granted within its hold
        states = self._states()
        if RUN in states or TIMING in states or not self.queue or self.queue[0] != key:
            return False
        self.queue.pop(0)
        self.trials[key] = (self.trials[key][0], TIMING)
        return True

    def give_up(self, key: str) -> None:
        """Waited too long: time anyway (labelled shared) and stop blocking the others."""
        if key in self.queue:
            self.queue.remove(key)
        if key in self.trials:
            self.trials[key] = (self.trials[key][0], RUN)

    def done(self, key: str) -> None:
        """Timing finished: the trial keeps the window for HOLD_S (its next timing call may follow at once)."""
        if key in self.trials:
            self.held[key] = self.clock() + HOLD_S

    def leave(self, key: str) -> None:
        self.trials.pop(key, None)
        self.held.pop(key, None)
        if key in self.queue:
            self.queue.remove(key)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TimingGate:
    """The Ray actor around GateState (async: many trials wait on it at once). Made remote by `remote_class`."""

    def __init__(self, max_wait_s: float):
        self.state = GateState(alive=pid_alive)
        self.max_wait_s = max_wait_s

    def ping(self) -> int:
        return os.getpid()

    async def enter(self, key: str, pid: int) -> None:
        self.state.reap()
        if self.state.enter(key, pid):
            return
        t0 = time.monotonic()
        while not self.state.admitted(key) and time.monotonic() - t0 < self.max_wait_s:
            await asyncio.sleep(POLL_S)
            self.state.reap()
        self.state.give_up(key)

    async def request(self, key: str, pid: int) -> str:
        """Wait for the exclusive window; 'exclusive', or 'shared' after max_wait_s."""
        self.state.park(key, pid)
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.max_wait_s:
            self.state.reap()
            if self.state.may_time(key):
                return "exclusive"
            await asyncio.sleep(POLL_S)
        self.state.give_up(key)
        return "shared"

    def done(self, key: str) -> None:
        self.state.done(key)

    def leave(self, key: str) -> None:
        self.state.leave(key)


def remote_class():
    """TimingGate as a Ray actor class (ray imported lazily, only where a sweep runs)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(TimingGate)


@contextlib.contextmanager
def gated_latency(gate, key: str, record: dict) -> Iterator[None]:
    """While a trial builds, route every `measure.latency` call through ``gate`` (None: no gate, labelled
    'shared'). ``record`` collects the timing mode ('exclusive' when every call was, 'shared' when any was not,
    'untimed' when the build timed nothing through `measure.latency`) and the seconds spent waiting. A Ray
    worker runs one task at a time, so swapping the module attribute is safe here. A gate that is gone (its
    node was lost) no longer blocks anyone: the trial times without it, labelled 'shared'."""
    import ray

    from .. import measure

    original, pid = measure.latency, os.getpid()
    state = {"gate": gate}
    record.update(timing="untimed", timing_wait_s=0.0)  # stays so if the build timed nothing through measure

    def call(method: str, *args):
        try:
            return ray.get(getattr(state["gate"], method).remote(*args))
        except ray.exceptions.RayActorError:
            state["gate"] = None
            record["timing"] = "shared"
            return None

    def latency(*args, **kwargs):
        if state["gate"] is None:
            record["timing"] = "shared"
            return original(*args, **kwargs)
        t0 = time.perf_counter()
        mode = call("request", key, pid)
        record["timing"] = "shared" if mode != "exclusive" or record["timing"] == "shared" else "exclusive"
        record["timing_wait_s"] = round(record["timing_wait_s"] + time.perf_counter() - t0, 1)
        try:
            return original(*args, **kwargs)
        finally:
            if state["gate"] is not None:
                call("done", key)

    if gate is not None:
        call("enter", key, pid)
    measure.latency = latency
    try:
        yield
    finally:
        measure.latency = original
        if state["gate"] is not None:
            with contextlib.suppress(Exception):
                ray.get(state["gate"].leave.remote(key))
