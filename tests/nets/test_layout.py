"""channels_last end to end: with NHWC parameters and inputs every 4-D activation of G and D
stays NHWC (an op that silently returns NCHW costs a layout copy per layer on the GPU)."""
import pytest
import torch

from pggan.config import ModelConfig
from pggan.nets import build_discriminator, build_generator


def _is_nhwc(t):
    # A [N, C, 1, 1] or C == 1 tensor is both; only a tensor that is NCHW-only counts as lost.
    return t.is_contiguous(memory_format=torch.channels_last)


def _watch(net):
    lost = []

    def hook(name):
        def fn(_module, _inputs, out):
            if isinstance(out, torch.Tensor) and out.ndim == 4 and not _is_nhwc(out):
                lost.append(name)
        return fn
    for name, m in net.named_modules():
        m.register_forward_hook(hook(name))
    return lost


@pytest.mark.parametrize("arch,fused_scale", [("pggan", "never"), ("pggan", "always"),
                                              ("stylegan", "auto")])
def test_activations_stay_channels_last(arch, fused_scale):
    cfg = ModelConfig(arch=arch, max_res=16, fmap_base=64, fmap_max=16, latent_dim=16,
                      w_dim=16, mapping_layers=2, fused_scale=fused_scale, impl="ref")
    G = build_generator(cfg).to(memory_format=torch.channels_last)
    D = build_discriminator(cfg).to(memory_format=torch.channels_last)
    lost_g = _watch(G)
    lost_d = _watch(D)
    z = torch.randn(4, 16)
    for alpha in (1.0, 0.5):
        img = G(z, res=16, alpha=alpha)
        assert _is_nhwc(img)
        D(img.detach(), alpha=alpha)
    # PGGAN's first activation comes from a dense layer ([N, C*16] -> [N, C, 4, 4], NCHW) and
    # is pixel-normed before the first conv turns it NHWC: only input.norm's first call may be
    # NCHW (once per forward).
    assert set(lost_g) <= {"input.norm"} and len(lost_g) <= 2, lost_g
    # minibatch_std's torch reference (impl=ref, what CPUs run) returns NCHW at 4x4 (its Triton
    # kernel keeps the layout); [N, C+1, 4, 4] is the smallest activation of D, so that copy
    # is cheap, and nothing else may drop the layout.
    assert set(lost_d) <= {"output.mbstd"} and len(lost_d) <= 2, lost_d


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 5), (1, 1)])
def test_fir_down_as_strided_depthwise_conv_equals_filter_then_slice(taps):
    from pggan.ops.resample import _filter, downsample2d, fir_kernel
    x = torch.randn(2, 3, 8, 10, dtype=torch.float64)
    k = fir_kernel(taps, x.device, x.dtype)
    p = k.shape[0] - 2
    ref = _filter(x, k, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))[:, :, ::2, ::2]
    # float64, the same products summed in another order: 1e-12 is rounding only; an
    # asymmetric filter (1, 2, 5) catches a flipped kernel (off by O(1)).
    torch.testing.assert_close(downsample2d(x, mode="fir", taps=taps), ref, rtol=0,
                               atol=1e-12)
