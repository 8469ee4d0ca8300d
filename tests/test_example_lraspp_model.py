"""The LRASPP shapes example's model (examples/lraspp_shapes/model.py): create_model() returns torchvision's
LRASPP "out" tensor, and the network is torchvision's own build (reduced tail aside). Offline, a few seconds."""

from __future__ import annotations

import torch

from examples.lraspp_shapes import model


def _state_shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_build_without_reduced_tail_is_torchvisions_lraspp_mobilenet_v3_large():
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    ref = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=model.NUM_CLASSES).eval()
    ours = model.build_lraspp(reduced_tail=False).eval()
    assert _state_shapes(ours) == _state_shapes(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["out"], ref(x)["out"], rtol=0, atol=0)


def test_create_model_returns_torchvisions_out_with_the_committed_weights():
    """The shipped network (reduced tail) equals torchvision's own LRASPP assembly loaded with the same weights."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

    m = model.create_model()
    assert not m.training
    ref = _lraspp_mobilenetv3(mobilenet_v3_large(weights=None, dilated=True, reduced_tail=True),
                              model.NUM_CLASSES).eval()
    ref.load_state_dict(m.net.state_dict())
    assert sum(p.numel() for p in ref.parameters()) < 1.8e6
    x = torch.randn(2, 3, model.IMAGE_SIZE, model.IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = m(x)
        assert out.shape == (2, model.NUM_CLASSES, model.IMAGE_SIZE, model.IMAGE_SIZE)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref(x)["out"], rtol=0, atol=0)
        torch.testing.assert_close(out, m.net(x)["out"], rtol=0, atol=0)
    assert model.WEIGHTS_PATH.stat().st_size < 4_000_000
