"""A two-node Ray cluster on loopback for the sweep tests, and the killed-node scenario they run in it.

Run inside a network namespace that has only loopback (`unshare -n`, see test_sweep_ray.py), so every Ray
process can only reach 127.0.0.1:

    python tests/sweep_cluster.py WORKDIR     (WORKDIR holds sweep.toml; prints one JSON line; the sweep's
                                               output goes to WORKDIR/sweep.stdout and sweep.stderr)

The scenario: `ray start --head --num-cpus 1` and a second `ray start --address ... --num-cpus 1` node, each with
its own temp folder (and TMPDIR, so each node's trial staging folders are told apart); `edgepack sweep
--address` in a child process; as soon as a trial starts on the second node, that node's raylet is killed
(SIGKILL); the sweep must still finish. Every process this started is stopped by pid (never `ray stop`,
which would stop other people's Ray on a shared machine) and every temp folder is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
STAGING = "edgepack-sweep-trials"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """Head + one worker node, 1 CPU each, on 127.0.0.1; stop() ends exactly the processes they started."""

    def __init__(self, env: dict[str, str]):
        self.port = free_port()
        self.dirs = {k: Path(tempfile.mkdtemp(prefix=f"ep-{k}-")) for k in ("head", "worker", "htmp", "wtmp")}
        self.env = {**env, "RAY_AUTH_MODE": "disabled"}
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        subprocess.run([RAY, "start", "--head", f"--port={self.port}", f"--temp-dir={self.dirs['head']}",
                        "--include-dashboard=false", *common], env={**self.env, "TMPDIR": str(self.dirs["htmp"])},
                       check=True, capture_output=True, timeout=300)
        subprocess.run([RAY, "start", f"--address={self.address}", f"--temp-dir={self.dirs['worker']}",
                        f"--dashboard-agent-listen-port={free_port()}", *common],
                       env={**self.env, "TMPDIR": str(self.dirs["wtmp"])}, check=True, capture_output=True,
                       timeout=300)

    def raylet_pid(self, node: str) -> int | None:
        for p in _procs():
            cmd = " ".join(p.info["cmdline"] or [])
            if "/raylet/raylet " in cmd and str(self.dirs[node]) in cmd:
                return p.pid
        return None

    def stop(self) -> list[int]:
        """Terminate (then kill) every process whose command line names our temp folders or port, and their
        children; remove the folders."""
        import psutil

        me = psutil.Process()
        skip = {me.pid, *(p.pid for p in me.parents())}
        marks = [str(d) for d in self.dirs.values()] + [f":{self.port} "]
        found: dict[int, psutil.Process] = {}
        for p in _procs():
            cmd = " ".join(p.info["cmdline"] or []) + " "
            if p.pid not in skip and any(m in cmd for m in marks):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        procs = [p for pid, p in found.items() if pid not in skip]
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        for d in self.dirs.values():
            shutil.rmtree(d, ignore_errors=True)
        return sorted(found)


def _procs():
    import psutil

    return list(psutil.process_iter(["pid", "cmdline"]))


def scenario(work: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cluster = LoopbackCluster(env)
    info: dict = {"address": cluster.address}
    try:
        cluster.start()
        with open(work / "sweep.stdout", "w") as out, open(work / "sweep.stderr", "w") as err:
            sweep = subprocess.Popen([sys.executable, "-m", "edgepack.cli", "sweep", "sweep.toml", "--out", "out",
                                      "--address", cluster.address], cwd=work,
                                     env={**env, "RAY_AUTH_MODE": "disabled"}, stdout=out, stderr=err)
            info["killed"] = _kill_worker_node_during_a_trial(cluster, sweep)
            info["sweep_exit"] = sweep.wait(timeout=1500)
    finally:
        info["stopped_pids"] = len(cluster.stop())
    return info


def _kill_worker_node_during_a_trial(cluster: LoopbackCluster, sweep: subprocess.Popen) -> dict | None:
    """Wait for a trial's staging folder on the worker node, then SIGKILL that node's raylet."""
    staging = cluster.dirs["wtmp"] / STAGING
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and sweep.poll() is None:
        trials = [d.name for d in staging.iterdir()] if staging.is_dir() else []
        if trials:
            time.sleep(1.0)  # well inside the build (a toy build takes tens of seconds here)
            pid = cluster.raylet_pid("worker")
            if pid is None:
                return None
            os.kill(pid, signal.SIGKILL)
            return {"raylet_pid": pid, "trial_folder": trials[0]}
        time.sleep(0.2)
    return None


if __name__ == "__main__":
    print(json.dumps(scenario(Path(sys.argv[1]))))
