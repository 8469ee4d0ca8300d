"""Property-based tests: whatever a profile, config or manifest holds, parsing raises only
edgepack's own errors (with a message), never a crash."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepack import config, targets
from edgepack.bundle import read as bundles
from edgepack.errors import EdgepackError

KEYS = ["threads", "formats", "opset", "input_shape", "cpu", "clock_ghz", "min_agreement", "max_size_mb",
        "calibration_method", "description", "runtime", "cores", "isa", "simd_features", "name", "bogus",
        "model", "calib", "seed", "per_channel", "mean", "std", "channel_order", "preprocess", "schema", "files",
        "models", "validation", "golden", "passed"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=10)
mappings = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), values, max_size=12)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def toml_value(v) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | str):
        return json.dumps(v)
    if isinstance(v, float) and v == v and abs(v) != float("inf"):
        return repr(v)
    if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return json.dumps(v)
    return None


@SETTINGS
@given(mappings)
def test_profile_parsing_never_crashes(data):
    lines = [f"{json.dumps(k)} = {tv}" for k, v in data.items() if (tv := toml_value(v)) is not None]
    try:
        profile = targets.parse_profile("\n".join(lines), name="p", where="p.toml")
    except EdgepackError as exc:
        assert exc.message
    else:
        assert profile.threads >= 1 and set(profile.formats) <= set(targets.FORMATS)


@SETTINGS
@given(st.text(max_size=200))
def test_profile_text_never_crashes(text):
    try:
        targets.parse_profile(text, name="p", where="p.toml")
    except EdgepackError as exc:
        assert exc.message


@SETTINGS
@given(mappings)
def test_config_parsing_never_crashes(data):
    try:
        cfg = config.from_mapping(data, where="c.toml")
    except EdgepackError as exc:
        assert exc.message
    else:
        assert isinstance(cfg.model, str)


@SETTINGS
@given(mappings)
def test_manifest_checking_never_crashes(data):
    try:
        bundles.check_manifest(data, "manifest.json")
    except EdgepackError as exc:
        assert exc.message
