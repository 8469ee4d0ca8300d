"""Honest host latency while trials run side by side: a per-machine exclusive timing window.

A trial registers at its machine's gate when it starts and leaves when it ends; whenever its build is about to
time latency (`edgepack.device.measure.latency`: the validate stage, the accuracy-aware search, reference timings) it
parks at the gate. The gate lets one parked trial time only when no other trial on the machine is computing:
every other registered trial is parked too (or gone). While anyone is parked, newly started trials wait at the
door, so the machine drains instead of filling up again. The timed figures therefore come from a quiet
machine, as in a sequential run, and the bundle stays the output of one ordinary build (its manifest, verdicts
and reports are written from those figures; nothing is patched later).

Why not the alternatives: a Ray resource `timing_slot: 1` per node stops two timings from overlapping but not
the other trials' exports and quantizations from loading the cores during a timing; a separate timing phase
after all builds would have to keep every FP32 model and rewrite each bundle's manifest, budget verdicts,
reports and zip after the fact. The cost of the gate is idle CPU while a machine drains (measured in
benchmarks/bench_sweep.py).

The gate is a small JSON file under a file lock in the machine's temp folder (FileGate), not a Ray actor: a
Ray task that waits in `ray.get` hands its CPUs back to Ray, which then starts another trial on them, so a
trial waiting for its window must wait with plain sleeps. Being a file, it also covers every trial on the
machine: two Ray nodes on one host, or two sweeps at once. GateState is the pure policy (tested alone);
`gated_latency` routes a worker's `measure.latency` calls through the gate for the duration of one trial.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

RUN, PARKED, TIMING, DOOR = "run", "parked", "timing", "door"
POLL_S = 0.1
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


GATE_FILE = "edgepack-timing-gate-{uid}.json"


class FileGate:
    """GateState kept in ``path`` (JSON) under an exclusive flock; every trial process on the machine polls it."""

    def __init__(self, path: Path | None = None, max_wait_s: float = 1800.0):
        self.path = path or Path(tempfile.gettempdir()) / GATE_FILE.format(uid=os.getuid())
        self.max_wait_s = max_wait_s

    @contextlib.contextmanager
    def _state(self) -> Iterator[GateState]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                data = json.loads(fh.read() or "{}")
            except ValueError:  # a writer died mid-write: start over (at worst one timing is not exclusive)
                data = {}
            state = GateState(alive=pid_alive, trials={k: tuple(v) for k, v in data.get("trials", {}).items()},
                              queue=list(data.get("queue", [])), held=dict(data.get("held", {})))
            state.reap()
            yield state
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"trials": state.trials, "queue": state.queue, "held": state.held}))

    def _wait(self, ready: Callable[[GateState], bool], key: str) -> bool:
        """Poll until ``ready(state)``; False (and the trial no longer blocks anyone) after max_wait_s."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.max_wait_s:
            with self._state() as st:
                if ready(st):
                    return True
            time.sleep(POLL_S)
        with self._state() as st:
            st.give_up(key)
        return False

    def enter(self, key: str, pid: int) -> None:
        with self._state() as st:
            if st.enter(key, pid):
                return
        self._wait(lambda st: st.admitted(key), key)

    def request(self, key: str, pid: int) -> str:
        """Wait for the exclusive window: 'exclusive', or 'shared' after max_wait_s."""
        with self._state() as st:
            st.park(key, pid)
        return "exclusive" if self._wait(lambda st: st.may_time(key), key) else "shared"

    def done(self, key: str) -> None:
        with self._state() as st:
            st.done(key)

    def leave(self, key: str) -> None:
        with self._state() as st:
            st.leave(key)


@contextlib.contextmanager
def gated_latency(gate: FileGate | None, key: str, record: dict) -> Iterator[None]:
    """While a trial builds, route every `measure.latency` call through ``gate`` (None: no gate, labelled
    'shared'). ``record`` collects the timing mode ('exclusive' when every call was, 'shared' when any was not,
    'untimed' when the build timed nothing through `measure.latency`) and the seconds spent waiting. A Ray
    worker runs one task at a time, so swapping the module attribute is safe here."""
    from edgepack.device import measure

    original, pid = measure.latency, os.getpid()
    record.update(timing="untimed", timing_wait_s=0.0)  # stays so if the build timed nothing through measure

    def latency(*args, **kwargs):
        if gate is None:
            record["timing"] = "shared"
            return original(*args, **kwargs)
        t0 = time.perf_counter()
        mode = gate.request(key, pid)
        record["timing"] = "shared" if mode != "exclusive" or record["timing"] == "shared" else "exclusive"
        record["timing_wait_s"] = round(record["timing_wait_s"] + time.perf_counter() - t0, 1)
        try:
            return original(*args, **kwargs)
        finally:
            gate.done(key)

    if gate is not None:
        gate.enter(key, pid)
    measure.latency = latency
    try:
        yield
    finally:
        measure.latency = original
        if gate is not None:
            gate.leave(key)
