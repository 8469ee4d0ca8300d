"""Ray underneath a sweep: an embedded local Ray started (and removed) for the sweep, or an existing cluster.

Embedded: `ray.init(address="local", num_cpus=N, include_dashboard=False)` with its session files in a temp
folder of our own (deleted after `ray.shutdown()`), token authentication off and loopback addresses only
(EMBEDDED_ENV, set only around this session): nothing is left in /tmp/ray or ~/.ray. With an address,
edgepack joins the cluster as it is configured, authentication included (RAY_AUTH_MODE and the token come
from the environment: see docs/sweep-cluster.md).

Each trial is one Ray task reserving `cpus_per_trial` CPUs, retried `max_retries` times when its worker or node
dies. Results are handed to the caller as they finish; Ctrl-C cancels (and kills) what is still running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import InputError, StageError
from edgepack.sweep.plan import Trial
from edgepack.sweep.spec import SweepOptions

# The embedded Ray is one machine's: no token authentication (no ~/.ray/auth_token is written); every Ray
# process addressed on loopback only (Ray's own switch for single-machine clusters; without it Ray swaps
# 127.0.0.1 for the machine's network address); and Ray's memory monitor off: it kills Ray workers when the
# whole machine's memory is above 95 %, so on a shared machine other programs' memory failed every trial (seen
# here). A build that really runs out of memory is still killed by the kernel, and Ray retries it. Workers at
# the driver's own priority: Ray's default worker niceness (+15) made every trial, and the latency it times,
# yield to all other programs, unlike the same `edgepack build` run in a shell.
EMBEDDED_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_memory_monitor_refresh_ms": "0", "RAY_worker_niceness": "0"}
OBJECT_STORE_BYTES = 512 * 1024 * 1024  # bundles pass through it as zips; Ray spills to disk beyond this
WAIT_S = 1.0
STARTS = 3


@dataclass
class Cluster:
    """Where the sweep runs: a description for people, and where workers stage trials (None: their temp)."""

    description: str
    embedded: bool
    staging_root: str | None
    nodes: int
    cpus: float


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("edgepack sweep needs Ray", hint="pip install 'edgepack[sweep]' (ray[default]==2.60.0)") \
            from None
    return ray


@contextlib.contextmanager
def session(address: str | None, num_cpus: int | None) -> Iterator[Cluster]:
    """Start an embedded Ray (address None) or join ``address``; always disconnect, and for the embedded
    one stop it and delete its session folder."""
    if address:
        ray = _ray()
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot join the Ray cluster at {address}: {str(exc)[:300]}",
                             hint="check `ray status --address ADDRESS` on that machine, and the auth token "
                                  "(docs/sweep-cluster.md)") from None
        try:
            yield _describe(ray, f"Ray cluster at {address}", embedded=False, staging_root=None)
        finally:
            ray.shutdown()
        return
    temp = Path(tempfile.mkdtemp(prefix="edgepack-ray-"))
    with _environ(EMBEDDED_ENV):
        ray = _ray()  # imported after the variables are set: Ray reads them at import
        try:
            _start_embedded(ray, num_cpus, temp)
            yield _describe(ray, "embedded local Ray", embedded=True, staging_root=str(temp / "trials"))
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def _start_embedded(ray, num_cpus: int | None, temp: Path) -> None:
    """ray.init, tried STARTS times: Ray gives its raylet a fixed 30 s to register, which a heavily loaded
    machine can miss ("The current node timed out during startup")."""
    for attempt in range(1, STARTS + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=str(temp),
                     log_to_driver=False, logging_level=logging.WARNING, object_store_memory=OBJECT_STORE_BYTES)
            return
        except Exception as exc:  # Ray raises a bare Exception for the startup timeout
            ray.shutdown()
            if attempt == STARTS or "timed out during startup" not in str(exc):
                raise StageError(f"the embedded Ray did not start: {str(exc)[:300]}",
                                 hint="the machine may be overloaded: try again, or pass --num-cpus 1") from None


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by the Ray processes started meanwhile), then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _describe(ray, what: str, *, embedded: bool, staging_root: str | None) -> Cluster:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
    return Cluster(description=f"{what} ({len(nodes)} node(s), {cpus:g} CPUs)", embedded=embedded,
                   staging_root=staging_root, nodes=len(nodes), cpus=cpus)


def execute(trials: list[Trial], options: SweepOptions, cluster: Cluster,
            on_result: Callable[[Trial, dict], None], on_tick: Callable[[], None] | None = None) -> None:
    """Run ``trials`` as Ray tasks; call ``on_result(trial, {"record", "zip"})`` as each finishes (in the
    calling thread). A task that Ray gave up on (worker or node died max_retries + 1 times) becomes an
    error record. KeyboardInterrupt cancels every unfinished task, then propagates."""
    ray = _ray()
    from edgepack.sweep.trial import run_trial

    wait = options.max_timing_wait_s if options.exclusive_timing else None
    task = ray.remote(run_trial).options(num_cpus=options.cpus_per_trial, max_retries=options.max_retries,
                                         retry_exceptions=False)
    refs = {task.remote(t.key, t.name, t.settings, wait, cluster.staging_root): t for t in trials}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=WAIT_S)
            for ref in ready:
                on_result(refs[ref], _get(ray, ref, options))
            if on_tick:
                on_tick()
    except BaseException:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise


def _get(ray, ref, options: SweepOptions) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # worker or node died past its retries, result object lost, ...
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return {"zip": None, "record": {"status": "error", "error": {
            "type": type(exc).__name__, "message": f"the trial's worker died {options.max_retries + 1} time(s) "
                                                   f"(crash, out of memory or node lost): {first}",
            "hint": "run the trial alone with `edgepack build --debug` to see where it dies"}}}


def reap_local_staging() -> None:
    """Remove trial folders of dead workers from this machine's temp (a joined cluster's workers that were
    killed mid-trial leave them; their next trial on the node removes them too)."""
    from edgepack.sweep.trial import STAGING_DIR, reap

    with contextlib.suppress(OSError):
        reap(Path(tempfile.gettempdir()) / STAGING_DIR)
