"""The one place that orders the stages: (prune) -> export -> quantize -> validate -> (device) -> bundle."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edgepack import targets
from edgepack.stages import bundle, device, export, prune, quantize, validate
from edgepack.stages.context import BuildContext

log = logging.getLogger(__name__)

Stage = tuple[str, Callable[[BuildContext], object]]
STAGES: list[Stage] = [
    ("prune", prune.run),      # skips itself unless the config asks for pruning
    ("export", export.run),
    ("quantize", quantize.run),
    ("validate", validate.run),
    ("device", device.run),    # the emulated ARM device; skips itself unless the profile emulates (device.wanted)
    ("bundle", bundle.run),
]


def run(ctx: BuildContext) -> dict:
    """Run every stage in order; return the manifest the bundle stage wrote. Records stage timings (s)."""
    timings: dict[str, float] = {}
    manifest: dict = {}
    for name, stage in STAGES:
        t0 = time.perf_counter()
        log.info("stage %s", name)
        result = stage(ctx)
        timings[name] = round(time.perf_counter() - t0, 2)
        if name == "bundle":
            manifest = result  # type: ignore[assignment]
    manifest["timings_s"] = timings
    return manifest


def plan(config) -> list[str]:
    """The stage names a build with ``config`` would run, for --dry-run."""
    emulate = device.wanted(config, targets.load(config.target))
    return [name for name, _ in STAGES if (name != "prune" or config.prune is not None)
            and (name != "device" or emulate)]
