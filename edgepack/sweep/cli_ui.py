"""What `edgepack sweep` shows on the terminal (used by cli.py only; the library never prints).

Progress on stderr: one line per finished trial in logs; on a terminal, the count line is redrawn in place and
each finished trial gets a line above it. Counts, failures and an ETA (elapsed / done x remaining).
"""

from __future__ import annotations

import sys

import click

from edgepack.sweep.api import SweepProgress, SweepResult


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class SweepUi:
    def __init__(self, quiet: bool = False):
        self.quiet, self.tty, self._started, self._drawn = quiet, sys.stderr.isatty(), False, False

    def progress(self, p: SweepProgress) -> None:
        if self.quiet:
            return
        if not self._started:
            self._started = True
            kept = p.total - p.todo
            what = (f"resuming: {p.todo} of {p.total} trials missing ({kept} finished, kept)" if kept
                    else f"{p.total} trials")
            click.echo(f"{what}" + (f" on {p.cluster}" if p.cluster else ""), err=True)
        if p.last is not None:
            r = p.last
            verdict = r["status"] if r["status"] != "error" else f"ERROR {(r.get('error') or {}).get('message', '')}"
            self._clear()
            eta = f", ETA {_duration(p.eta_s)}" if p.done < p.todo else ""
            click.echo(f"  [{p.done}/{p.todo}] {r['name']}: {verdict[:160]} ({r.get('seconds') or 0:.0f} s){eta}",
                       err=True)
        line = (f"  {p.done}/{p.todo} done, {p.errors} failed, elapsed {_duration(p.elapsed_s)}, "
                f"ETA {_duration(p.eta_s) if p.done else '?'}")
        if self.tty:
            click.echo("\r" + line, nl=False, err=True)
            self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            click.echo("\r\033[K", nl=False, err=True)
            self._drawn = False

    def finish(self) -> None:
        if self._drawn:
            click.echo("", err=True)
            self._drawn = False


def summary(result: SweepResult) -> str:
    """Per target: trials, errors, Pareto size and the best bundle that met every budget; then the files."""
    doc = result.document
    rows = {r["key"]: r for r in doc["trials"]}
    lines = [f"{result.total} trials ({result.ran} built now, {result.kept} kept from earlier runs), "
             f"{doc['counts']['passed']} met every budget, {doc['counts']['budget-missed']} missed one, "
             f"{doc['counts']['error']} failed to build; {result.seconds:.0f} s"]
    for target, s in doc["targets"].items():
        best = rows.get(s["best"]) if s["best"] else None
        pick = (f"best: {best['name']} ({best['metric']} {best['quality']:g}, {best['latency_ms']:.3f} ms "
                f"{best['latency_kind']}, {best['size_bytes'] / 1e6:.2f} MB) -> {result.out / best['bundle']}"
                if best else ("no trial met every budget" if not s.get("unranked") else
                              f"{s['unranked']} trial(s) built without a quality metric to rank them"))
        lines.append(f"  {target}: {s['trials']} trials, {len(s['pareto'])} on the Pareto front; {pick}")
    lines.append(f"results: {result.json_path}  report: {result.html_path}")
    return "\n".join(lines)
