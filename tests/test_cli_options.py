"""The build options are generated from the config schema: every setting has exactly one flag, and a flag given on
the command line lands in the BuildConfig field it names."""

from __future__ import annotations

import dataclasses
import json

from click.testing import CliRunner

from edgepack.cli import main
from edgepack.cli.options import BUILD_OPTIONS, FINETUNE_FLAGS, PRUNE_FLAGS, SKIP
from edgepack.config import BuildConfig, FinetuneOptions, Preprocess, PruneOptions


def test_every_setting_has_one_flag():
    expected = sum(1 for cls in (BuildConfig, Preprocess, PruneOptions, FinetuneOptions)
                   for f in dataclasses.fields(cls) if (cls.__name__, f.name) not in SKIP)
    assert len(BUILD_OPTIONS) == expected + 1  # + --config
    assert set(PRUNE_FLAGS.values()) == {f.name for f in dataclasses.fields(PruneOptions)} - {"finetune"}
    assert set(FINETUNE_FLAGS.values()) == {f.name for f in dataclasses.fields(FinetuneOptions)}


def test_flags_reach_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.npz").write_bytes(b"")  # --dry-run checks that the files named exist
    res = CliRunner().invoke(main, ["build", "toy_models:tiny_cnn", "--dry-run", "--min-output-sqnr-db", "12",
                                    "--no-per-channel", "--prune", "0.3", "--prune-steps", "2", "--finetune",
                                    "d.npz", "--distill-features", "0.5", "--mean", "1,2,3", "--task", "generic"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.stdout)["config"]
    assert cfg["min_output_sqnr_db"] == 12.0 and cfg["per_channel"] is False and cfg["task"] == "generic"
    assert cfg["prune"]["ratio"] == 0.3 and cfg["prune"]["iterative_steps"] == 2
    assert cfg["prune"]["finetune"]["data"] == "d.npz" and cfg["prune"]["finetune"]["feature_weight"] == 0.5
    assert cfg["preprocess"]["mean"] == [1.0, 2.0, 3.0]


def test_bounds_come_from_the_schema():
    res = CliRunner().invoke(main, ["build", "toy_models:tiny_cnn", "--dry-run", "--min-agreement", "2"])
    assert res.exit_code == 2 and "min_agreement = 2.0 is above the maximum 1" in res.output
