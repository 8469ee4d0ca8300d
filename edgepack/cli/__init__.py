"""The `edgepack` command: parse options, build a config, call the library, print. Nothing else.

Heavy libraries (torch, onnxruntime, tensorflow) are imported inside commands so that
`edgepack --help` is instant.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from edgepack.bundle.tables import text_table
from edgepack.cli.options import FINETUNE_FLAGS, PRUNE_FLAGS, build_options, diagnose_options, prune_options
from edgepack.errors import EXIT_BUDGET, EXIT_INTERNAL, EXIT_OK, ConfigError, EdgepackError, InputError
from edgepack.version import __version__

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
  70 internal error (a bug)        129 hung up (SIGHUP)     130 interrupted
"""

DIAGNOSE_EPILOG = """\b
Examples:
  edgepack diagnose torchvision:mobilenet_v2 --weights mnv2.pt --data photos/ --target raspberry-pi-4
  edgepack diagnose build/mnv2 --data photos/ --plot layers.png      # a bundle: its recorded settings

\b
Exit codes:
  0 measured                       2 usage or input error (a model option given with a bundle)
  4 a stage failed (export/quantize)              5 the bundle's model differs from its manifest
  70 internal error (a bug)        129 hung up (SIGHUP)     130 interrupted
"""

PRUNE_EPILOG = """\b
Exit codes:
  0 saved                          2 usage or input error
  3 output error (exists, unwritable, full)      4 a stage failed
  70 internal error (a bug)        129 hung up (SIGHUP)     130 interrupted
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
    """SIGTERM and SIGHUP behave like Ctrl-C so every cleanup (temp folders, partial bundles) runs."""
    from edgepack.guards.interrupts import install

    install()


def run_command(ctx: click.Context, fn: Any) -> Any:
    """Run a command body, turning errors into a message, a hint and an exit code."""
    from edgepack.guards import interrupts, resources

    debug = ctx.find_root().params.get("debug", False)
    as_json = bool(ctx.params.get("as_json"))
    _handle_signals()
    try:
        return fn()
    except EdgepackError as exc:
        _fail(exc, debug, as_json)
    except KeyboardInterrupt as exc:
        _fail(interrupts.error_for(exc), debug, as_json)
    except click.exceptions.Exit:
        raise
    except Exception as exc:  # a bug: say so, show the trace only with --debug
        translated = _stdout_error(exc) or resources.translate(exc)  # no memory, disk, file size: not a bug
        if translated is not None:
            _fail(translated, debug, as_json and not isinstance(exc, OSError))
        if debug:
            raise
        message = f"internal error: {type(exc).__name__}: {exc}"
        sub = ctx.command_path.split(" ")[1:]  # --debug is the root's option: it goes before the command
        hint = f"run again as `{' '.join(['edgepack', '--debug', *sub])} ...` and report the traceback"
        _say(f"Error: {message}", f"Hint: {hint}")
        if as_json:
            _json_error(message, hint, EXIT_INTERNAL, "InternalError")
        sys.exit(EXIT_INTERNAL)


def _say(*lines: str) -> None:
    """Lines on stderr; a dead stderr (a closed SSH session) does not turn an error into a traceback."""
    try:
        for line in lines:
            click.echo(line, err=True)
    except OSError:
        pass


def _stdout_error(exc: Exception) -> EdgepackError | None:
    """An OSError raised while click.echo wrote our results (stdout: /dev/full, a full disk, a closed pipe)."""
    if not isinstance(exc, OSError) or getattr(exc, "filename", None):
        return None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "echo" and "click" in code.co_filename:
            from edgepack.errors import OutputError

            return OutputError(f"cannot write to standard output: {exc.strerror or exc}",
                               hint="stdout goes to a full disk, /dev/full or a closed pipe: redirect it elsewhere")
        tb = tb.tb_next
    return None


def _drop_unwritable_stdout() -> None:
    """When stdout cannot take what is buffered (/dev/full, a closed pipe), point it at /dev/null so Python's
    exit does not print 'Exception ignored ... OSError' after our one error line."""
    import os

    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass


def _fail(exc: EdgepackError, debug: bool, as_json: bool = False) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    _say(f"Error: {exc.message}", *([f"Hint: {exc.hint}"] if exc.hint else []))
    if as_json:
        _json_error(exc.message, exc.hint, exc.exit_code, type(exc).__name__)
    _drop_unwritable_stdout()
    sys.exit(exc.exit_code)


def _json_error(message: str, hint: str | None, exit_code: int, kind: str) -> None:
    """With --json, a failure is a JSON object on stdout too, so a CI script that parses stdout reads why."""
    try:
        click.echo(json.dumps({"error": {"message": message, "hint": hint, "exit_code": exit_code, "type": kind}},
                              indent=2))
    except OSError:
        pass


class _Group(click.Group):
    """A usage error (unknown option, bad value) of a command run with --json is also a JSON object on stdout."""

    def invoke(self, ctx: click.Context) -> Any:
        wants_json = "--json" in [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if wants_json:
                _json_error(exc.format_message(), "see --help", exc.exit_code, "UsageError")
            raise


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepack")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def main(debug: bool) -> None:
    """edgepack: a trained model -> a validated, budgeted INT8 bundle for a named device."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")


def make_config(model: str | None, options: dict[str, Any]) -> Any:
    """Merge the --config file and the command line (command line wins) into a BuildConfig."""
    from edgepack import config as config_mod

    file_path = options.pop("config_file", None)
    from_file: dict[str, Any] = config_mod.read_toml(file_path) if file_path else {}
    merged = dict(from_file)
    prune = _prune_table(options, merged.get("prune"))
    given = {k: v for k, v in options.items() if v is not None and v != ()}
    merged.update(given)
    if prune:
        merged["prune"] = prune
    if model:
        merged["model"] = model
    if "model" not in merged:
        raise InputError("no MODEL given", hint="edgepack build MODEL ... (or model = '...' in --config)")
    config = config_mod.from_mapping(merged, where=file_path or "command line",
                                     elsewhere={k: "--" + k.replace("_", "-") for k in given} if file_path else None)
    if file_path:
        from edgepack.inputs import preflight

        preflight.check_config_paths(file_path, from_file, merged)
    return config


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
@click.option("--dry-run", is_flag=True, help="Check that the files, folders, factory module and target named exist "
                                              "(nothing loaded), print the resolved config and the stages, build "
                                              "nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a machine-readable summary on stdout (progress stays on stderr; -q hides it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def build(ctx: click.Context, model: str | None, dry_run: bool, as_json: bool, quiet: bool, **options: Any) -> None:
    """Build MODEL for a target: export, quantize to INT8, validate, bundle.

    MODEL is torchvision:<arch>, package.module:factory, a .pt2 program, a TorchScript
    file (with --trust-model), an .onnx file or a transformers folder (a text classifier
    with its tokenizer.json, or an image classifier). A text model from a factory or an
    .onnx file takes --tokenizer.
    """
    ui = Ui(quiet=quiet)
    _handle_signals()

    def body() -> None:
        from edgepack.guards.tempdirs import sweep_stale

        sweep_stale()  # work folders of builds killed with SIGKILL
        config_file = options.get("config_file")
        config = make_config(model, options)
        if config_file and not dry_run:  # the one input BuildConfig does not name
            from edgepack.guards.safety import check_output

            check_output(Path(config.out), [("config file", config_file)])
        if dry_run:
            from edgepack import pipeline
            from edgepack.inputs import preflight

            preflight.check(config)  # what a CI config check needs: every named file there, the factory findable
            click.echo(json.dumps({"config": config.to_dict(), "stages": pipeline.plan(config)}, indent=2))
            return
        from edgepack.api import build as api_build

        try:  # third-party code that print()s (model packages, converters) must not corrupt --json stdout
            with contextlib.redirect_stdout(sys.stderr):
                result = api_build(config, progress=ui.progress)
        finally:
            ui.finish()
        _print_result(result, as_json, quiet)
        sys.exit(EXIT_OK if result.passed else EXIT_BUDGET)

    run_command(ctx, body)


@main.command("prune", epilog=PRUNE_EPILOG)
@click.argument("model", required=False)
@prune_options
@click.option("--save", "save_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the pruned model (.pt2).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the pruning report as JSON on stdout (progress stays on stderr).")
@click.option("--quiet", "-q", is_flag=True)
@click.pass_context
def prune_cmd(ctx: click.Context, model: str | None, save_path: str, as_json: bool, quiet: bool,
              **options: Any) -> None:
    """Prune MODEL (and fine-tune it) and save the pruned PyTorch model, without building a bundle.

    Example: edgepack prune torchvision:resnet18 --weights r18.pt --prune 0.4 --calib photos/ --save r18_pruned.pt2
    """
    ui = Ui(quiet=quiet)
    _handle_signals()

    def body() -> None:
        from edgepack.api import prune as api_prune

        if Path(save_path).suffix.lower() != ".pt2":  # torch.export writes a .pt2 zip whatever the name says
            raise ConfigError(f"--save {save_path}: prune writes a torch.export program, a .pt2 file",
                              hint="name it .pt2; `edgepack build FILE.pt2` then exports ONNX and TFLite from it")
        config = make_config(model, options)
        try:
            report = api_prune(config, save_path, progress=ui.progress)
        finally:
            ui.finish()
        if as_json:
            click.echo(json.dumps(report, indent=2, default=str))
            return
        if quiet:  # the saved files only
            click.echo(f"saved: {', '.join(report['saved']['files'])}")
            return
        rows = [("parameters", f"{report['params_before']:,}", f"{report['params_after']:,}"),
                ("MACs (Torch-Pruning)", f"{report['macs_before']:,}", f"{report['macs_after']:,}"),
                ("MACs (FlopCounterMode)", f"{report['macs_independent_before']:,}",
                 f"{report['macs_independent_after']:,}")]
        click.echo(text_table(("", "before", "after"), rows))
        if "finetune" in report:
            ft = report["finetune"]
            click.echo(f"fine-tuning: held-out {ft['metric']} {ft['heldout_before']:.4g} -> {ft['heldout_after']:.4g} "
                       f"({ft['epochs_run']} epochs, stopped: {ft['stopped']})")
        click.echo(f"saved: {', '.join(report['saved']['files'])}")
        if report.get("build_options"):  # an HF folder's own preprocessing is not in the saved program
            click.echo(f"build it with the source's preprocessing: edgepack build {save_path} "
                       f"{report['build_options']}")

    run_command(ctx, body)


@main.command(epilog=DIAGNOSE_EPILOG)
@click.argument("model_or_bundle")
@click.option("--data", required=True,
              help="Samples to measure on: image folder or .npz, or texts for a text model. For a MODEL it is also "
                   "the calibration data (up to --calib-samples, default the profile's); the per-layer error is "
                   "measured on 16 of them.")
@diagnose_options
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the per-layer plot (PNG) here.")
@click.option("--top", type=int, default=25, show_default=True, help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON on stdout (progress stays on stderr).")
@click.option("--output-cost", is_flag=True,
              help="Also measure, for each row shown, the outputs' SQNR when only that activation is rounded: what "
                   "keeping it in float would win (one model run per row). The accuracy search ranks by it.")
@click.pass_context
def diagnose(ctx: click.Context, model_or_bundle: str, data: str, plot_path: str | None, top: int, as_json: bool,
             output_cost: bool, **options: Any) -> None:
    """Per-layer FP32-vs-INT8 error (SQNR), mapped to PyTorch module names, worst first.

    MODEL_OR_BUNDLE is a model source (it is quantized with the default recipe first; the options below
    say how to load, feed and quantize it) or a bundle folder (its shipped INT8 model is compared with
    itself without activation rounding, with the preprocessing and input its manifest records, so the
    options below do not apply; nothing the bundle names is imported).
    """
    ui = Ui()

    def body() -> None:
        from edgepack.api import diagnose as api_diagnose

        bundle = Path(model_or_bundle) if (Path(model_or_bundle) / "manifest.json").exists() else None
        if bundle is not None:
            _refuse_for_bundle(ctx, bundle, options)
        try:
            if bundle is not None:  # untrusted: the bundle alone, never the model source its manifest names
                from edgepack.bundle import diagnose as diagnose_bundle

                rows = diagnose_bundle.run(bundle, data, progress=ui.progress, output_costs=top if output_cost else 0)
            else:
                rows = api_diagnose(_diagnose_config(model_or_bundle, data, options), None,
                                    progress=ui.progress, output_costs=top if output_cost else 0)
        finally:
            ui.finish()
        if plot_path:
            import base64

            from edgepack.bundle.html import layer_plot

            Path(plot_path).write_bytes(base64.b64decode(layer_plot(rows, top)))
        if as_json:
            click.echo(json.dumps(rows[:top], indent=2))
            return
        from edgepack.bundle.tables import drop_text

        header = ("layer (PyTorch module)", "op", "SQNR lost here dB", "SQNR so far dB")
        table = [(r["name"], r["op"], drop_text(r), f"{r['sqnr_db']:.1f}") for r in rows[:top]]
        if output_cost:
            header += ("outputs SQNR, only this rounded dB",)
            table = [(*t, "-" if r.get("output_sqnr_db") is None else f"{r['output_sqnr_db']:.1f}")
                     for t, r in zip(table, rows, strict=False)]
        click.echo(text_table(header, table))
        if plot_path:
            click.echo(f"plot: {plot_path}")

    run_command(ctx, body)


def _refuse_for_bundle(ctx: click.Context, bundle: Path, options: dict[str, Any]) -> None:
    """diagnose BUNDLE runs the bundle's model as its manifest records it: a model option given with it would be
    silently ignored, so it is refused, named as it was typed."""
    given = []
    for param in ctx.command.params:
        value = options.get(param.name)
        if param.name in options and value is not None and value != ():
            off = isinstance(param, click.Option) and value is False and param.secondary_opts
            given.append((param.secondary_opts if off else param.opts)[0])
    if given:
        raise ConfigError(f"{', '.join(given)}: not for a bundle; {bundle} is diagnosed with the preprocessing, "
                          "input shape, target and INT8 model its manifest records",
                          hint="drop them (diagnose BUNDLE takes --data, --plot, --top, --json), or diagnose the "
                               "model source with them: edgepack diagnose MODEL --data ... [options]")


def _diagnose_config(model: str, data: str, options: dict[str, Any]) -> Any:
    """The build config to diagnose a model source with: the --config file and the options given, --data as the
    validation data (and the calibration data without --calib)."""
    merged_calib = options.get("calib")
    if merged_calib is None and options.get("config_file"):
        from edgepack import config as config_mod

        merged_calib = config_mod.read_toml(options["config_file"]).get("calib")
    return make_config(model, {**options, "val": data, "calib": merged_calib or data})


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
    from edgepack.bundle import update
    from edgepack.device import remote

    def body() -> None:
        record = remote.bench(Path(bundle), device, runs=runs, python=python_cmd,
                              identity=Path(identity) if identity else None,
                              known_hosts=Path(known_hosts) if known_hosts else None)
        man = update.record_device_measurement(Path(bundle), record, max_latency_ms=max_latency_ms)
        if as_json:
            click.echo(json.dumps({"measurement": record, "passed": man["passed"]}, indent=2))
        else:
            click.echo(f"measured on device {record.get('device', device)}: p50 {record['p50']:.2f} ms, "
                       f"p90 {record['p90']:.2f} ms over {record['runs']} runs (kind: measured-device)")
            click.echo(text_table(("budget", "value", "limit", "verdict"), tables.budget_rows(man)))
        sys.exit(EXIT_OK if man["passed"] else EXIT_BUDGET)

    from edgepack.bundle import tables

    run_command(ctx, body)


def _print_result(result: Any, as_json: bool, quiet: bool) -> None:
    from edgepack.bundle import tables

    man = result.manifest
    if as_json:
        click.echo(json.dumps({"bundle": str(result.bundle), "zip": str(result.zip), "passed": result.passed,
                               "seconds": result.seconds, "models": man["models"], "warnings": man["warnings"],
                               "timings_s": man.get("timings_s")}, indent=2))
        return
    if quiet:
        click.echo(str(result.bundle))
        return
    click.echo(text_table(("metric", "FP32", "INT8", "note"), tables.summary_rows(man)))
    rows = tables.budget_rows(man)
    if rows:
        click.echo("")
        click.echo(text_table(("budget", "value", "limit", "verdict"), rows))
    for w in man["warnings"]:
        click.echo(f"Warning: {w}", err=True)
    verdict = click.style("PASSED", fg="green") if result.passed else click.style("FAILED (budgets missed)", fg="red")
    click.echo(f"\n{verdict} in {result.seconds:.0f} s. Bundle: {result.bundle}  (zip: {result.zip})")


@main.group()
def targets() -> None:
    """List and show target profiles (targets/*.toml)."""


@targets.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def targets_list(ctx: click.Context, as_json: bool) -> None:
    """List the shipped target profiles."""
    from edgepack import targets as targets_mod

    def body() -> None:
        rows = [(n, ",".join((p := targets_mod.load(n)).formats), str(p.threads), p.description)
                for n in targets_mod.available()]
        if as_json:
            click.echo(json.dumps([dict(zip(("name", "formats", "threads", "description"), r, strict=True))
                                   for r in rows], indent=2))
        else:
            click.echo(text_table(("name", "formats", "threads", "description"), rows))

    run_command(ctx, body)


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def targets_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one profile: every key, its value and what it means."""
    from edgepack import schema
    from edgepack import targets as targets_mod

    def body() -> None:
        profile = targets_mod.load(name)
        if as_json:
            click.echo(json.dumps(profile.to_dict(), indent=2))
            return
        values = profile.to_dict()
        rows = [(k, _short_value(values[k]), doc) for k, _, doc in schema.describe(targets_mod.TargetProfile)]
        click.echo(text_table(("key", "value", "meaning"), rows))
        if any(_short_value(v) != json.dumps(v) for v in values.values()):
            click.echo(f"(long values shortened: edgepack targets show {name} --json prints them whole)")

    run_command(ctx, body)


def _short_value(value, width: int = 60) -> str:
    """A profile value for the table: a list of tables (the published references) as its count and models,
    anything longer than ``width`` cut with an ellipsis."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        names = sorted({str(v.get("model", "?")) for v in value})
        text = f"{len(value)} entries: {', '.join(names)}"
    else:
        text = json.dumps(value)
    return text if len(text) <= width else text[:width - 3] + "..."


@main.group()
def device() -> None:
    """Emulated devices: qemu-user + an arm64 userland + the device's own runtime wheels (edgepack.device)."""


@device.command("prepare")
@click.argument("targets_", metavar="TARGET...", nargs=-1, required=True)
@click.option("--qemu-cpu", help="Emulate this qemu CPU model instead of the profile's (e.g. max, for comparisons).")
@click.option("--force", is_flag=True, help="Rebuild even when the cached device is there.")
@click.option("--no-references", is_flag=True,
              help="Skip counting the profile's reference networks on the device (the CPI fit).")
@click.option("--recount", is_flag=True, help="Count the reference networks again even where shipped counts exist "
                                              "(builds and emulates each: tens of minutes).")
@click.pass_context
def device_prepare(ctx: click.Context, targets_: tuple[str, ...], qemu_cpu: str | None, force: bool,
                   no_references: bool, recount: bool) -> None:
    """Build each TARGET's emulated device once into ~/.cache/edgepack/devices (offline after the first time),
    and count the instructions of its reference networks there (the device latency fit)."""
    from edgepack import targets as targets_mod
    from edgepack.device import cpi, emulation
    from edgepack.util import host_cores

    ui = Ui()

    def body() -> None:
        for name in targets_:
            profile = targets_mod.load(name)
            try:
                dev = emulation.prepare(profile, qemu_cpu=qemu_cpu, force=force, progress=ui.progress)
                counts = {} if no_references else cpi.reference_counts(profile, dev, processes=host_cores(),
                                                                       recount=recount, progress=ui.progress)
            finally:
                ui.finish()
            click.echo(f"{name}: {dev.emulation.qemu_cpu} device ready in {dev.root}"
                       + ("" if no_references else f"; {sum(1 for v in counts.values() if v)}/"
                          f"{len(profile.reference)} reference networks counted"))

    run_command(ctx, body)


def _manifest_text(man: dict, report: Any) -> str:
    """What `edgepack inspect` shows of a manifest."""
    lines = [f"{man['name']} for {man['target']['name']}: {'PASSED' if man['passed'] else 'FAILED'}"]
    for m in man["models"]:
        lines.append(f"  {m['file']}  {m['format']} {m['precision']}  {m['size_bytes'] / 1e6:.2f} MB  "
                     f"sha256 {m['sha256'][:16]}...")
        for io_kind in ("inputs", "outputs"):
            for t in m[io_kind]:
                q = t["quantization"]
                qs = f" scale={q['scale']:.6g} zero_point={q['zero_point']}" if q else ""
                lines.append(f"    {io_kind[:-1]} {t['name']} {t['shape']} {t['dtype']} {t['layout'] or ''}{qs}")
    lines += ["", text_table(("metric", "FP32", "INT8", "note"), report.summary_rows(man)), "",
              text_table(("budget", "value", "limit", "verdict"), report.budget_rows(man))]
    return "\n".join(lines)


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def inspect(ctx: click.Context, bundle: str, as_json: bool) -> None:
    """Show what a bundle holds: target, models, I/O, validation and budgets."""
    from edgepack.bundle import tables
    from edgepack.bundle.read import read_manifest

    def body() -> None:
        man = read_manifest(Path(bundle))
        if as_json:
            click.echo(json.dumps(man, indent=2))
            return
        from edgepack.bundle.manifest_check import rendering

        with rendering(f"{bundle}/manifest.json"):  # an edited manifest: exit 5 with what is wrong, no half table
            text = _manifest_text(man, tables)
        click.echo(text)

    run_command(ctx, body)


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--allowed-signers", type=click.Path(dir_okay=False), default=None,
              help="Also require manifest.json.sig to be signed by a key in this OpenSSH allowed_signers file.")
@click.option("--identity", default=None, help="The signer to require (default: whichever listed key signed it).")
@click.pass_context
def verify(ctx: click.Context, bundle: str, allowed_signers: str | None, identity: str | None) -> None:
    """Check every file against the manifest's sha256, and the golden input/output.

    The digests catch damage and careless edits; who built the bundle needs a signature
    (edgepack sign) checked with --allowed-signers.
    """
    from edgepack.bundle.read import verify as verify_bundle

    def body() -> None:
        signers = Path(allowed_signers) if allowed_signers else None
        for line in verify_bundle(Path(bundle), allowed_signers=signers, identity=identity):
            click.echo(line)
        click.echo("OK: bundle verified" + (", signature trusted" if signers else ""))

    run_command(ctx, body)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--key", required=True, type=click.Path(dir_okay=False),
              help="Private OpenSSH key to sign with, e.g. ~/.ssh/id_ed25519 (ssh-agent keys work too).")
@click.pass_context
def sign(ctx: click.Context, bundle: str, key: str) -> None:
    """Sign BUNDLE's manifest (OpenSSH signature, manifest.json.sig) after verifying it.

    \b
    Check on the receiving side with an allowed_signers file ('<identity> <public key>' per line):
      edgepack verify BUNDLE --allowed-signers allowed_signers
    """
    from edgepack.api import sign as sign_bundle

    def body() -> None:
        path = sign_bundle(bundle, key)
        click.echo(f"signed: {path}")

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
        from edgepack.sweep import api as sweep_api
        from edgepack.sweep.cli_ui import SweepUi, summary

        run_options = sweep_api.RunOptions(**options)
        if dry_run:
            trials, todo = sweep_api.preview(sweep_file, out, run_options)
            build = {t.key for t in todo}
            rows = [(t.key[:12], "build" if t.key in build else "kept", t.name) for t in trials]
            click.echo(text_table(("key", "action", "trial"), rows))
            click.echo(f"{len(trials)} trials, {len(todo)} to build")
            return
        ui = SweepUi(quiet=quiet or as_json)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                result = sweep_api.run(sweep_file, out, run_options, progress=ui.progress)
        finally:
            ui.finish()
        if as_json:  # with each target's best bundle as a path, so a script can pick it without sweep.json
            doc = result.document
            rows = {r["key"]: r for r in doc["trials"]}
            targets = {t: {**s, "best_bundle": str(result.out / rows[s["best"]]["bundle"]) if s["best"] else None}
                       for t, s in doc["targets"].items()}
            click.echo(json.dumps({**{k: doc[k] for k in ("name", "counts", "run")}, "targets": targets,
                                   "results": str(result.json_path)}, indent=2))
        else:
            click.echo(summary(result))
        sys.exit(EXIT_OK if result.errors == 0 else EXIT_BUDGET)

    run_command(ctx, body)


if __name__ == "__main__":
    main()
