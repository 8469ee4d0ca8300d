"""Device latency estimator: reference schema, the ratio fit and its leave-one-out band, INT8 warnings,
and (slow) the leave-one-out table of every shipped target against its published references."""

from __future__ import annotations

import math

import pytest

from edgepack import estimate, targets
from edgepack.errors import ConfigError, InputError
from edgepack.targets import Reference

SHIPPED = ("raspberry-pi-4", "raspberry-pi-5", "android-arm64", "x86-64")
TOLERANCE = 0.30


def _ref(model: str, ms: float, precision: str = "fp32") -> Reference:
    return Reference(model=model, runtime="ncnn", threads=4, precision=precision, latency_ms=ms, device="d",
                     source="s")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_target_has_at_least_four_sourced_references(name):
    profile = targets.load(name)
    assert len(profile.reference) >= 4
    for r in profile.reference:
        assert r.source and r.device and r.latency_ms > 0
    assert {r.precision for r in profile.reference} == {"fp32", "int8"}


def test_reference_tables_are_validated():
    text = (targets.targets_dir() / "raspberry-pi-4.toml").read_text()
    text += '\n[[reference]]\nmodel = "resnet18"\nruntime = "ncnn"\nthreads = 0\nprecision = "int4"\n'
    with pytest.raises(ConfigError) as err:
        targets.parse_profile(text, name="x", where="x.toml")
    msg = str(err.value)
    assert "threads = 0 is below the minimum 1" in msg and "precision = 'int4' is not allowed" in msg
    assert "missing required key 'latency_ms'" in msg


def test_ratio_fit_and_leave_one_out_band():
    refs = [_ref("a", 20.0), _ref("b", 40.0), _ref("c", 66.0)]
    host = {"a@224:fp32": 10.0, "b@224:fp32": 20.0, "c@224:fp32": 30.0}
    f = estimate.fit(refs, host, "fp32")
    assert f.ratio == pytest.approx(math.exp((math.log(2) * 2 + math.log(2.2)) / 3))
    rows = {r["model"]: r for r in f.rows}
    assert rows["c"]["predicted_ms"] == pytest.approx(60.0)           # from a and b: ratio 2
    assert rows["c"]["error"] == pytest.approx(60 / 66 - 1, abs=1e-4)
    lo, hi = f.band
    assert lo < 1 < hi  # the band brackets the point estimate on both sides here


def test_estimate_needs_two_references_of_the_precision(tmp_path):
    profile = targets.load("raspberry-pi-4")
    import dataclasses

    one = dataclasses.replace(profile, reference=profile.reference[:1])
    with pytest.raises(InputError, match="at least 2"):
        estimate.estimate(tmp_path / "m.onnx", "onnx", "fp32", one, host_p50_ms=1.0)


def test_int8_warnings_follow_the_device_isa():
    pi4, pi5 = targets.load("raspberry-pi-4"), targets.load("raspberry-pi-5")
    assert any("no ARM dot-product" in w for w in estimate.int8_warnings(pi4, "onnx"))
    assert not any("no ARM dot-product" in w for w in estimate.int8_warnings(pi5, "onnx"))
    est = {"fp32": {"p50": 10.0}, "int8": {"p50": 12.0, "band_source": "leave-one-out over 4"}}
    assert any("1.20x the FP32 estimate" in w for w in estimate.int8_warnings(pi5, "onnx", estimates=est))


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_leave_one_out_table(name, capsys):
    """Times the reference models on this host (cached in ~/.cache/edgepack; minutes on first run)."""
    profile = targets.load(name)
    rows = estimate.leave_one_out(profile)
    with capsys.disabled():
        print(f"\n== {name}: leave-one-out, {profile.formats[0]} on this host, 1 thread ==")
        print(estimate.format_table(rows))
    assert len(rows) == len(profile.reference)
    used = [r for r in rows if r["error"] is not None]
    assert len(used) >= 4, "at least four references must be usable on this host"
    bad = [f"{r['model']} {r['precision']} {r['error']:+.0%}" for r in used if abs(r["error"]) > TOLERANCE]
    if bad:
        pytest.xfail(f"outside +-{TOLERANCE:.0%}: " + ", ".join(bad))


@pytest.mark.slow
def test_estimate_of_a_model_carries_kind_and_band(tmp_path):
    from edgepack.backends import onnx as onnx_backend

    onnx_backend.export(estimate._torchvision("squeezenet1_1"), (1, 3, 224, 224), tmp_path / "m.onnx", opset=17)
    est = estimate.estimate(tmp_path / "m.onnx", "onnx", "fp32", targets.load("raspberry-pi-4"))
    assert est["kind"] == "estimated-device" and est["precision"] == "fp32"
    assert est["band"][0] <= est["p50"] <= est["band"][1]
    assert est["host_method"].startswith("timed with an anchor") and est["host_drift"] > 0
