"""edgepack: trained model -> pruned, INT8, validated, budgeted bundle for a named edge device.

    import edgepack
    result = edgepack.build(model="torchvision:mobilenet_v2", target="raspberry-pi-4", calib="photos/")
    print(result.passed, result.bundle)
"""

__version__ = "0.1.0"

from .errors import EdgepackError  # noqa: E402


def build(*args, **kwargs):
    """See edgepack.api.build (imported lazily so `import edgepack` stays light)."""
    from .api import build as _build

    return _build(*args, **kwargs)


def sweep(*args, **kwargs):
    """See edgepack.sweep.run: many builds on Ray (`pip install 'edgepack[sweep]'`), imported lazily."""
    from .sweep import run as _run

    return _run(*args, **kwargs)


__all__ = ["EdgepackError", "build", "sweep", "__version__"]
