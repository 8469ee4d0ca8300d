"""Shared, seeded, offline fixtures: tiny models, data sets and one built bundle per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # so `toy_models:tiny_cnn` resolves as a factory
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ARM builds run their device stage (the emulated device) by default; the suite turns that default off and only
# tests/test_device.py turns it on for its own builds (--emulate), so the other tests stay fast.
os.environ.setdefault("EDGEPACK_EMULATE", "0")

import toy_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """calib.npz (x only) and val.npz (x, y) of 1x3x32x32 float32 samples, seeded."""
    d = tmp_path_factory.mktemp("tinydata")
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (48, 3, 32, 32)).astype(np.float32)
    np.savez(d / "calib.npz", x=x[:32])
    np.savez(d / "val.npz", x=x[32:], y=rng.integers(0, 10, 16))
    return {"calib": d / "calib.npz", "val": d / "val.npz", "dir": d}


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """A TinyCNN trained on scikit-learn's digits (16x16, seconds), with calib/val npz files."""
    import torch
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("digits")
    torch.set_num_threads(1)  # torch's default pool swamps a busy 2-core machine: 2 s becomes 100 s
    ds = load_digits()
    x = torch.nn.functional.interpolate(torch.tensor(ds.images[:, None] / 16.0, dtype=torch.float32), size=16,
                                        mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(ds.target)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    train, test = perm[:1300], perm[1300:]
    model = toy_models.digits_cnn().train()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for i in range(0, len(train), 64):
            idx = train[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    torch.save(model.state_dict(), d / "digits.pt")
    np.savez(d / "train.npz", x=x[train].numpy(), y=y[train].numpy())
    np.savez(d / "calib.npz", x=x[train[:200]].numpy())
    np.savez(d / "val.npz", x=x[test].numpy(), y=y[test].numpy())
    return {"weights": d / "digits.pt", "calib": d / "calib.npz", "val": d / "val.npz", "dir": d}


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """Eight small JPEG photos crops (from calibration_data) in a flat folder."""
    src = sorted((ROOT / "calibration_data" / "images").glob("*.jpg"))[:8]
    out = tmp_path / "imgs"
    out.mkdir()
    for f in src:
        (out / f.name).write_bytes(f.read_bytes())
    return out
