"""verify's golden comparison: an old TFLite bundle whose outputs came in the converter's order is told so."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import backends
from edgepack.bundle import golden_check
from edgepack.errors import VerifyError


class _Runner:
    outs: list = []

    def __init__(self, path, threads=1):
        pass

    def run_outputs(self, feed):
        return self.outs


@pytest.fixture
def fake_tflite(monkeypatch):
    class Backend:
        Runner = _Runner

    real = backends.get
    monkeypatch.setattr(backends, "get", lambda fmt: Backend if fmt == "tflite" else real(fmt))
    return _Runner


def test_outputs_in_another_order_say_the_bundle_predates_the_source_order(fake_tflite, tmp_path):
    boxes, scores = np.zeros((1, 4, 15, 20), np.float32), np.zeros((1, 2, 15, 20), np.float32)
    fake_tflite.outs = [boxes, scores]
    golden = golden_check.outputs_for("tflite", [scores, boxes])   # written in the converter's order
    with pytest.raises(VerifyError) as err:
        golden_check.max_diff(tmp_path / "model.tflite", "tflite", {}, golden)
    assert "converter's order" in err.value.hint and "rebuild" in err.value.hint
    golden = golden_check.outputs_for("tflite", [np.zeros((1, 3)), boxes])   # a real mismatch
    with pytest.raises(VerifyError) as err:
        golden_check.max_diff(tmp_path / "model.tflite", "tflite", {}, golden)
    assert "converter's order" not in err.value.hint
    assert golden_check.max_diff(tmp_path / "model.tflite", "tflite", {},
                                 golden_check.outputs_for("tflite", [boxes, scores])) == 0.0
