from pathlib import Path

import pytest

from edgepack import targets
from edgepack.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "targets").glob("*.toml"))


def test_ships_the_required_targets():
    assert {"raspberry-pi-4", "raspberry-pi-5", "x86-64", "android-arm64"} <= set(targets.available())


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_profile_loads_and_sources_every_device_fact(path):
    profile = targets.load(str(path))
    assert profile.name == path.stem
    assert profile.formats and profile.threads >= 1
    facts = ("cpu", "cores", "clock_ghz", "isa", "simd_features", "memory_gb", "memory_bandwidth_gbs")
    for line in path.read_text().splitlines():
        key = line.split("=")[0].strip()
        if key in facts:
            assert "# source:" in line, f"{path.name}: device fact '{key}' has no source comment"


def test_unknown_target_suggests_the_closest_name():
    with pytest.raises(InputError, match="did you mean 'raspberry-pi-4'"):
        targets.load("raspberry-pi4")


def test_unknown_key_and_out_of_range_are_reported_together():
    text = (ROOT / "targets" / "raspberry-pi-4.toml").read_text()
    text = text.replace("threads = 4", "threads = 0").replace("opset = 17", "opsett = 17")
    with pytest.raises(ConfigError) as err:
        targets.parse_profile(text, name="x", where="x.toml")
    assert "threads = 0 is below the minimum 1" in str(err.value)
    assert "unknown key 'opsett' (did you mean 'opset'?)" in str(err.value)


def test_wrong_type_and_bad_choice():
    text = (ROOT / "targets" / "raspberry-pi-4.toml").read_text()
    text = text.replace('formats = ["onnx"]', 'formats = ["tflit"]').replace("cores = 4", 'cores = "four"')
    with pytest.raises(ConfigError) as err:
        targets.parse_profile(text, name="x", where="x.toml")
    assert "did you mean 'tflite'" in str(err.value)
    assert "cores must be an integer, got the string 'four'" in str(err.value)
    assert "edgepack targets show" in err.value.hint


def test_profile_may_not_set_its_own_name():
    with pytest.raises(ConfigError, match="set by edgepack"):
        targets.parse_profile('name = "x"', name="x", where="x.toml")


def test_invalid_toml_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid TOML"):
        targets.parse_profile("threads = [", name="x", where="x.toml")


def test_profiles_name_their_architecture():
    """The INT8 ONNX arithmetic follows the device's architecture (edgepack.backends.onnx_quantize.int8_plan)."""
    from edgepack import targets

    arch = {name: targets.load(name).arch for name in ("raspberry-pi-4", "raspberry-pi-5", "android-arm64", "x86-64")}
    assert arch == {"raspberry-pi-4": "aarch64", "raspberry-pi-5": "aarch64", "android-arm64": "aarch64",
                    "x86-64": "x86_64"}
