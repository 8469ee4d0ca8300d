"""The `edgepack` command: parse options, build a config, call the library, print. Nothing else.

Heavy libraries (torch, onnxruntime, tensorflow) are imported inside commands so that
`edgepack --help` is instant.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import EXIT_BUDGET, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EdgepackError, InputError, Interrupted

EPILOG = """\b
Examples:
  edgepack build torchvision:mobilenet_v2 --weights mnv2.pt --target raspberry-pi-4 \\
      --calib calibration_data/images --val photos/ --out build/mnv2
  edgepack build model.onnx --target android-arm64 --calib calib.npz --val val.npz --json
  edgepack build --config ci/edgepack.toml          # same settings as a TOML file
  edgepack targets list
  edgepack inspect build/mnv2

\b
Exit codes:
  0 built, every budget met        1 built, a budget was missed (bundle marked failed)
  2 usage or input error           3 output error (exists, unwritable, full)
  4 a stage failed (export/quantize/convert)     5 bundle verification failed
  70 internal error (a bug)        130 interrupted
"""


class Ui:
    """Terminal output for one command: progress on stderr, results on stdout.

    On a terminal a step's line is redrawn in place with its count; in a log (CI) each step gets
    one line when it starts, so logs stay readable.
    """

    def __init__(self, quiet: bool = False):
        self.quiet, self._last = quiet, ""
        self.tty = sys.stderr.isatty()

    def progress(self, step: str, done: int, total: int) -> None:
        if self.quiet:
            return
        new = step != self._last
        if new and self._last and self.tty:
            click.echo("", err=True)
        self._last = step
        if self.tty:
            count = f" {done}/{total}" if total > 1 else ""
            click.echo(f"\r  {step} ...{count}", nl=False, err=True)
        elif new:
            click.echo(f"  {step} ...", err=True)

    def finish(self) -> None:
        if self._last and not self.quiet and self.tty:
            click.echo("", err=True)
        self._last = ""


def _handle_signals() -> None:
    """SIGTERM behaves like Ctrl-C so every cleanup (temp folders, partial bundles) runs."""
    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, raise_interrupt)


def run_command(ctx: click.Context, fn: Any) -> Any:
    """Run a command body, turning errors into a message, a hint and an exit code."""
    debug = ctx.find_root().params.get("debug", False)
    try:
        return fn()
    except EdgepackError as exc:
        _fail(exc, debug)
    except KeyboardInterrupt:
        _fail(Interrupted("interrupted; nothing was left under the output name"), debug)
    except click.exceptions.Exit:
        raise
    except Exception as exc:  # a bug: say so, show the trace only with --debug
        if debug:
            raise
        click.echo(f"Error: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("Hint: run again with --debug and report the traceback", err=True)
        sys.exit(EXIT_INTERNAL)


def _fail(exc: EdgepackError, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    click.echo(f"Error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"Hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code if not isinstance(exc, Interrupted) else EXIT_INTERRUPTED)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepack")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def main(debug: bool) -> None:
    """edgepack: a trained model -> a validated, budgeted INT8 bundle for a named device."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")


def _csv_ints(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers, e.g. 1,3,224,224") from None


def _csv_floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of numbers") from None


BUILD_OPTIONS = [
    click.option("--target", "-t", help="Target profile name (edgepack targets list) or a .toml path."),
    click.option("--calib", help="Calibration data: image folder or .npz (default: calibration_data/images); "
                                 "text: .txt, .jsonl or .csv."),
    click.option("--val", help="Validation data: ImageFolder-style folder, flat folder or .npz with x[,y]; "
                               "text: .jsonl or .csv with text[,label]."),
    click.option("--out", "-o", help="Bundle folder (a .zip is written beside it)."),
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with these settings."),
    click.option("--weights", help="State dict (.pt/.pth/.safetensors), loaded weights-only."),
    click.option("--tokenizer", help="Text models from a factory: tokenizer.json, or a folder holding one."),
    click.option("--max-length", type=int, help="Text models: fixed sequence length in tokens (default 128)."),
    click.option("--num-classes", type=int, help="Classifier size for torchvision architectures."),
    click.option("--input-shape", callback=_csv_ints, help="Model input shape, e.g. 1,3,224,224."),
    click.option("--labels", help="Text file, one class name per line, in output order."),
    click.option("--name", help="Bundle name (default: from the model)."),
    click.option("--calib-samples", type=int, help="Calibration samples (default: the profile's)."),
    click.option("--val-samples", type=int, help="Validation samples, a seeded subset (default: all)."),
    click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"])),
    click.option("--seed", type=int, help="Seed for every sampled subset (default 0)."),
    click.option("--latency-runs", type=int, help="Timed runs per model (default 50)."),
    click.option("--max-search-time", type=float,
                 help="Seconds the accuracy-aware search may spend when INT8 misses the budget (0 = off; 300)."),
    click.option("--resize", type=int, help="Image preprocessing: resize the short side to N px."),
    click.option("--crop", type=int, help="Image preprocessing: centre crop side, px."),
    click.option("--mean", callback=_csv_floats, help="Image preprocessing: per-channel mean, e.g. 127,127,127."),
    click.option("--std", callback=_csv_floats, help="Image preprocessing: per-channel std."),
    click.option("--scale", type=float, help="Image preprocessing: pixel multiplier before mean/std (1/255 default)."),
    click.option("--channel-order", type=click.Choice(["RGB", "BGR", "L"])),
    click.option("--max-accuracy-drop", type=float, help="Budget override: accuracy drop, points."),
    click.option("--min-agreement", type=float, help="Budget override: top-1 agreement, 0-1."),
    click.option("--max-latency-ms", type=float, help="Budget override: INT8 p50 latency, ms."),
    click.option("--max-size-mb", type=float, help="Budget override: INT8 file size, MB."),
    click.option("--prune", "prune_ratio", type=float, help="Structured pruning: fraction of channels to remove."),
    click.option("--prune-keep-macs", type=float, help="Structured pruning goal: fraction of MACs to keep."),
    click.option("--prune-importance", type=click.Choice(["magnitude", "taylor"]), help="Channel importance."),
    click.option("--prune-ignore", multiple=True, help="Module name to leave unpruned (repeatable)."),
    click.option("--prune-round-to", type=int, help="Round channel counts to a multiple of N (default 8)."),
    click.option("--prune-steps", type=int, help="Iterative pruning steps (default 1)."),
    click.option("--finetune", "finetune_data", help="Recovery fine-tuning data after pruning (image folder or "
                 ".npz; for text models .jsonl or .csv with labels)."),
    click.option("--finetune-epochs", type=int),
    click.option("--finetune-lr", type=float),
    click.option("--finetune-batch-size", type=int),
    click.option("--finetune-patience", type=int, help="Early stopping patience, epochs."),
    click.option("--finetune-samples", type=int, help="Use a seeded subset of N fine-tuning samples."),
    click.option("--finetune-minutes", type=float, help="Stop fine-tuning after this many minutes."),
    click.option("--finetune-val-fraction", type=float, help="Held-out fraction for model selection (default 0.1)."),
    click.option("--distill", is_flag=True, default=None, help="Distil from the unpruned model (unlabelled data OK)."),
    click.option("--distill-features", type=float,
                 help="With --distill: weight of matching the unpruned model's penultimate features (1; 0: off)."),
    click.option("--estimate-device", is_flag=True, default=None,
                 help="Also estimate device latency from the profile's published references (labelled estimated)."),
    click.option("--allow-float-ops", is_flag=True, default=None,
                 help="TFLite: keep ops with no INT8 kernel in float (named in the report) instead of failing."),
    click.option("--text-tflite-int8", type=click.Choice(["auto", "dynamic-range", "full-integer"]),
                 help="TFLite text models: auto (try full-integer, else dynamic-range, reported), dynamic-range "
                      "(skip the ~1 min full-integer attempt), full-integer (fail if it cannot run)."),
    click.option("--trust-model", is_flag=True, default=None, help="Allow TorchScript / pickles (can run code)."),
    click.option("--force", is_flag=True, default=None, help="Replace an existing output."),
]


def build_options(fn: Any) -> Any:
    for option in reversed(BUILD_OPTIONS):
        fn = option(fn)
    return fn


def make_config(model: str | None, options: dict[str, Any]) -> Any:
    """Merge the --config file and the command line (command line wins) into a BuildConfig."""
    from . import config as config_mod

    file_path = options.pop("config_file", None)
    merged: dict[str, Any] = config_mod.read_toml(file_path) if file_path else {}
    prune = _prune_table(options, merged.get("prune"))
    merged.update({k: v for k, v in options.items() if v is not None and v != ()})
    if prune:
        merged["prune"] = prune
    if model:
        merged["model"] = model
    if "model" not in merged:
        raise InputError("no MODEL given", hint="edgepack build MODEL ... (or model = '...' in --config)")
    return config_mod.from_mapping(merged, where=file_path or "command line")


PRUNE_FLAGS = {"prune_ratio": "ratio", "prune_keep_macs": "keep_macs", "prune_importance": "importance",
               "prune_ignore": "ignore", "prune_round_to": "round_to", "prune_steps": "iterative_steps"}
FINETUNE_FLAGS = {"finetune_data": "data", "finetune_epochs": "epochs", "finetune_lr": "lr",
                  "finetune_batch_size": "batch_size", "finetune_patience": "patience",
                  "finetune_samples": "samples", "finetune_minutes": "max_minutes", "distill": "distill",
                  "finetune_val_fraction": "val_fraction",
                  "distill_features": "feature_weight"}


def _prune_table(options: dict[str, Any], from_file: Any) -> dict[str, Any] | None:
    """Fold the --prune*/--finetune* flags into a [prune] table over the config file's one."""
    table = dict(from_file) if isinstance(from_file, dict) else {}
    ft = table.get("finetune")
    ft = {"data": ft} if isinstance(ft, str) else dict(ft or {})
    for flags, target in ((PRUNE_FLAGS, table), (FINETUNE_FLAGS, ft)):
        for flag, key in flags.items():
            value = options.pop(flag, None)
            if value is not None and value != ():
                target[key] = list(value) if isinstance(value, tuple) else value
    if ft:
        table["finetune"] = ft
    return table or None


@main.command(epilog=EPILOG)
@click.argument("model", required=False)
@build_options
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the stages, build nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def build(ctx: click.Context, model: str | None, dry_run: bool, as_json: bool, quiet: bool, **options: Any) -> None:
    """Build MODEL for a target: export, quantize to INT8, validate, bundle.

    MODEL is torchvision:<arch>, package.module:factory, a .pt2 program, a TorchScript
    file (with --trust-model) or an .onnx file.
    """
    ui = Ui(quiet=quiet or as_json)
    _handle_signals()

    def body() -> None:
        config = make_config(model, options)
        if dry_run:
            from . import pipeline

            click.echo(json.dumps({"config": config.to_dict(), "stages": pipeline.plan(config)}, indent=2))
            return
        from .api import build as api_build

        try:  # third-party code that print()s (model packages, converters) must not corrupt --json stdout
            with contextlib.redirect_stdout(sys.stderr):
                result = api_build(config, progress=ui.progress)
        finally:
            ui.finish()
        _print_result(result, as_json, quiet)
        sys.exit(EXIT_OK if result.passed else EXIT_BUDGET)

    run_command(ctx, body)


@main.command("prune", epilog=EPILOG)
@click.argument("model", required=False)
@build_options
@click.option("--save", "save_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the pruned model (.pt2).")
@click.option("--json", "as_json", is_flag=True, help="Print the pruning report as JSON.")
@click.option("--quiet", "-q", is_flag=True)
@click.pass_context
def prune_cmd(ctx: click.Context, model: str | None, save_path: str, as_json: bool, quiet: bool,
              **options: Any) -> None:
    """Prune MODEL (and fine-tune it) and save the pruned PyTorch model, without building a bundle.

    Example: edgepack prune torchvision:resnet18 --weights r18.pt --prune 0.4 --calib photos/ --save r18_pruned.pt2
    """
    ui = Ui(quiet=quiet or as_json)
    _handle_signals()

    def body() -> None:
        from .api import prune as api_prune

        config = make_config(model, options)
        try:
            report = api_prune(config, save_path, progress=ui.progress)
        finally:
            ui.finish()
        if as_json:
            click.echo(json.dumps(report, indent=2, default=str))
            return
        rows = [("parameters", f"{report['params_before']:,}", f"{report['params_after']:,}"),
                ("MACs (Torch-Pruning)", f"{report['macs_before']:,}", f"{report['macs_after']:,}"),
                ("MACs (FlopCounterMode)", f"{report['macs_independent_before']:,}",
                 f"{report['macs_independent_after']:,}")]
        click.echo(_table(("", "before", "after"), rows))
        if "finetune" in report:
            ft = report["finetune"]
            click.echo(f"fine-tuning: held-out {ft['metric']} {ft['heldout_before']:.4g} -> {ft['heldout_after']:.4g} "
                       f"({ft['epochs_run']} epochs, stopped: {ft['stopped']})")
        click.echo(f"saved: {', '.join(report['saved']['files'])}")

    run_command(ctx, body)


@main.command(epilog=EPILOG)
@click.argument("model_or_bundle")
@click.option("--data", required=True,
              help="Samples to measure on: image folder or .npz, or texts for a text model (16 are used).")
@build_options
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the per-layer plot (PNG) here.")
@click.option("--top", type=int, default=25, show_default=True, help="Rows to show.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def diagnose(ctx: click.Context, model_or_bundle: str, data: str, plot_path: str | None, top: int, as_json: bool,
             **options: Any) -> None:
    """Per-layer FP32-vs-INT8 error (SQNR), mapped to PyTorch module names, worst first.

    MODEL_OR_BUNDLE is a model source (it is quantized with the default recipe first) or a bundle
    folder (its shipped INT8 model is compared with a fresh FP32 export of its source).
    """
    ui = Ui(quiet=as_json)

    def body() -> None:
        from .api import diagnose as api_diagnose

        bundle = Path(model_or_bundle) if (Path(model_or_bundle) / "manifest.json").is_file() else None
        config = _diagnose_config(model_or_bundle, bundle, data, options)
        try:
            rows = api_diagnose(config, bundle, progress=ui.progress)
        finally:
            ui.finish()
        if plot_path:
            import base64

            from .html_report import layer_plot

            Path(plot_path).write_bytes(base64.b64decode(layer_plot(rows, top)))
        if as_json:
            click.echo(json.dumps(rows[:top], indent=2))
            return
        from .diagnose import drop_text

        table = [(r["name"], r["op"], drop_text(r), f"{r['sqnr_db']:.1f}") for r in rows[:top]]
        click.echo(_table(("layer (PyTorch module)", "op", "SQNR lost here dB", "SQNR so far dB"), table))
        if plot_path:
            click.echo(f"plot: {plot_path}")

    run_command(ctx, body)


def _diagnose_config(model: str, bundle: Path | None, data: str, options: dict[str, Any]) -> Any:
    """The build config to diagnose with: the bundle's own recorded config, or the options given."""
    from . import config as config_mod
    from .bundles import read_manifest

    options.pop("config_file", None)
    if bundle is None:
        return make_config(model, {**options, "val": data, "calib": options.get("calib") or data})
    recorded = dict(read_manifest(bundle)["config"])
    flat = {**{k: v for k, v in recorded.items() if k not in ("preprocess", "prune")},
            **(recorded.get("preprocess") or {})}
    flat.update({"val": data, "calib": data, "val_samples": 16, "force": True})
    return config_mod.from_mapping(flat, where=f"{bundle}/manifest.json")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--device", required=True, help="ssh://user@host[:port] of the real device.")
@click.option("--runs", type=int, default=100, show_default=True, help="Timed runs on the device.")
@click.option("--python", "python_cmd", default="python3", show_default=True, help="Python on the device.")
@click.option("--identity", type=click.Path(dir_okay=False), help="SSH private key file.")
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="known_hosts file to use and fill.")
@click.option("--max-latency-ms", type=float, help="Latency budget to judge the device p50 against.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bench(ctx: click.Context, bundle: str, device: str, runs: int, python_cmd: str, identity: str | None,
          known_hosts: str | None, max_latency_ms: float | None, as_json: bool) -> None:
    """Measure a bundle on a real device over SSH; the latency budget then judges the device p50.

    Copies the bundle with scp, checks its golden output there, times RUNS runs with run.py, and
    writes the measurement (kind measured-device) into the bundle's manifest, report and zip.
    Example: edgepack bench build/mnv2 --device ssh://pi@raspberrypi.local
    """
    from . import remote

    def body() -> None:
        record = remote.bench(Path(bundle), device, runs=runs, python=python_cmd,
                              identity=Path(identity) if identity else None,
                              known_hosts=Path(known_hosts) if known_hosts else None)
        man = remote.record_device_measurement(Path(bundle), record, max_latency_ms=max_latency_ms)
        if as_json:
            click.echo(json.dumps({"measurement": record, "passed": man["passed"]}, indent=2))
        else:
            click.echo(f"measured on device {record.get('device', device)}: p50 {record['p50']:.2f} ms, "
                       f"p90 {record['p90']:.2f} ms over {record['runs']} runs (kind: measured-device)")
            click.echo(_table(("budget", "value", "limit", "verdict"), report.budget_rows(man)))
        sys.exit(EXIT_OK if man["passed"] else EXIT_BUDGET)

    from . import report

    run_command(ctx, body)


def _print_result(result: Any, as_json: bool, quiet: bool) -> None:
    from . import report

    man = result.manifest
    if as_json:
        click.echo(json.dumps({"bundle": str(result.bundle), "zip": str(result.zip), "passed": result.passed,
                               "seconds": result.seconds, "models": man["models"], "warnings": man["warnings"],
                               "timings_s": man.get("timings_s")}, indent=2))
        return
    if quiet:
        click.echo(str(result.bundle))
        return
    click.echo(_table(("metric", "FP32", "INT8", "note"), report.summary_rows(man)))
    rows = report.budget_rows(man)
    if rows:
        click.echo("")
        click.echo(_table(("budget", "value", "limit", "verdict"), rows))
    for w in man["warnings"]:
        click.echo(f"Warning: {w}", err=True)
    verdict = click.style("PASSED", fg="green") if result.passed else click.style("FAILED (budgets missed)", fg="red")
    click.echo(f"\n{verdict} in {result.seconds:.0f} s. Bundle: {result.bundle}  (zip: {result.zip})")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


@main.group()
def targets() -> None:
    """List and show target profiles (targets/*.toml)."""


@targets.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def targets_list(ctx: click.Context, as_json: bool) -> None:
    """List the shipped target profiles."""
    from . import targets as targets_mod

    def body() -> None:
        rows = [(n, ",".join((p := targets_mod.load(n)).formats), str(p.threads), p.description)
                for n in targets_mod.available()]
        if as_json:
            click.echo(json.dumps([dict(zip(("name", "formats", "threads", "description"), r, strict=True))
                                   for r in rows], indent=2))
        else:
            click.echo(_table(("name", "formats", "threads", "description"), rows))

    run_command(ctx, body)


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def targets_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one profile: every key, its value and what it means."""
    from . import schema
    from . import targets as targets_mod

    def body() -> None:
        profile = targets_mod.load(name)
        if as_json:
            click.echo(json.dumps(profile.to_dict(), indent=2))
            return
        values = profile.to_dict()
        rows = [(k, json.dumps(values[k]), doc) for k, _, doc in schema.describe(targets_mod.TargetProfile)]
        click.echo(_table(("key", "value", "meaning"), rows))

    run_command(ctx, body)


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def inspect(ctx: click.Context, bundle: str, as_json: bool) -> None:
    """Show what a bundle holds: target, models, I/O, validation and budgets."""
    from . import report
    from .bundles import read_manifest

    def body() -> None:
        man = read_manifest(Path(bundle))
        if as_json:
            click.echo(json.dumps(man, indent=2))
            return
        click.echo(f"{man['name']} for {man['target']['name']}: {'PASSED' if man['passed'] else 'FAILED'}")
        for m in man["models"]:
            click.echo(f"  {m['file']}  {m['format']} {m['precision']}  {m['size_bytes'] / 1e6:.2f} MB  "
                       f"sha256 {m['sha256'][:16]}...")
            for io_kind in ("inputs", "outputs"):
                for t in m[io_kind]:
                    q = t["quantization"]
                    qs = f" scale={q['scale']:.6g} zero_point={q['zero_point']}" if q else ""
                    click.echo(f"    {io_kind[:-1]} {t['name']} {t['shape']} {t['dtype']} {t['layout'] or ''}{qs}")
        click.echo("")
        click.echo(_table(("metric", "FP32", "INT8", "note"), report.summary_rows(man)))
        click.echo("")
        click.echo(_table(("budget", "value", "limit", "verdict"), report.budget_rows(man)))

    run_command(ctx, body)


@main.command()
@click.argument("bundle", type=click.Path())
@click.pass_context
def verify(ctx: click.Context, bundle: str) -> None:
    """Check every file against the manifest's sha256, and the golden input/output."""
    from .bundles import verify as verify_bundle

    def body() -> None:
        for line in verify_bundle(Path(bundle)):
            click.echo(line)
        click.echo("OK: bundle verified")

    run_command(ctx, body)


@main.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, help="Sweep folder: trials/<key>/ bundles, sweep.json, sweep.html.")
@click.option("--resume", is_flag=True, help="Build only the trials without a result in OUT (they are counted).")
@click.option("--retry-failed", is_flag=True, help="With --resume: rebuild the trials that failed, too.")
@click.option("--force", is_flag=True, help="Forget the earlier trials in OUT and build every trial.")
@click.option("--address", help="Join this Ray cluster (HOST:PORT or ray://HOST:10001); default: an embedded "
                                "local Ray, stopped after the sweep.")
@click.option("--num-cpus", type=int, help="Embedded Ray: CPUs to use, i.e. trials side by side (default: all).")
@click.option("--dry-run", is_flag=True, help="List the trials (and which would be built), build nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the sweep.json summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def sweep_cmd(ctx: click.Context, sweep_file: str, out: str, dry_run: bool, as_json: bool, quiet: bool,
              **options: Any) -> None:
    """Build every trial of SWEEP_FILE (models x targets x settings) on Ray; sweep.html shows the Pareto front
    (quality vs latency) and the best bundle per target.

    Example: edgepack sweep examples/fashion_mnist/sweep.toml --out build/sweep
    Exit code 0: every trial built (budgets may be missed: see sweep.html); 1: some trials failed to build
    (recorded with their error); 130: interrupted (finished trials are kept: run again with --resume).
    """
    _handle_signals()

    def body() -> None:
        from .sweep import api as sweep_api
        from .sweep.cli_ui import SweepUi, summary

        run_options = sweep_api.RunOptions(**options)
        if dry_run:
            trials, todo = sweep_api.preview(sweep_file, out, run_options)
            build = {t.key for t in todo}
            rows = [(t.key[:12], "build" if t.key in build else "kept", t.name) for t in trials]
            click.echo(_table(("key", "action", "trial"), rows))
            click.echo(f"{len(trials)} trials, {len(todo)} to build")
            return
        ui = SweepUi(quiet=quiet or as_json)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                result = sweep_api.run(sweep_file, out, run_options, progress=ui.progress)
        finally:
            ui.finish()
        if as_json:
            doc = result.document
            click.echo(json.dumps({k: doc[k] for k in ("name", "counts", "targets", "run")}, indent=2))
        else:
            click.echo(summary(result))
        sys.exit(EXIT_OK if result.errors == 0 else EXIT_BUDGET)

    run_command(ctx, body)


if __name__ == "__main__":
    main()
