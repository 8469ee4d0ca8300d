"""edgepack: trained model -> pruned, INT8, validated, budgeted bundle for a named edge device.

    import edgepack
    result = edgepack.build(model="torchvision:mobilenet_v2", target="raspberry-pi-4", calib="photos/")
    print(result.passed, result.bundle)
"""

from edgepack.errors import EdgepackError  # noqa: E402
from edgepack.version import __version__  # noqa: E402


def build(*args, **kwargs):
    """See edgepack.api.build (imported lazily so `import edgepack` stays light)."""
    from edgepack.api import build as _build

    return _build(*args, **kwargs)


def sweep(*args, **kwargs):
    """See edgepack.sweep.run: many builds on Ray (`pip install 'edgepack[sweep]'`), imported lazily."""
    from edgepack.sweep import run as _run

    return _run(*args, **kwargs)


__all__ = ["EdgepackError", "build", "sweep", "__version__"]
