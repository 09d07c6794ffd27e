"""Fused ops: each file holds a pure-torch reference, its Triton kernels (where they pay) and one
public function with an `impl=` argument. Model code calls only the public functions."""
from .bias_act import bias_act, bias_act_ref
from .demod import demod_coefficients, demod_coefficients_ref
from .fade_in import fade_in, fade_in_ref
from .noise_bias_act import noise_bias_act, noise_bias_act_ref
from .minibatch_std import minibatch_std, minibatch_std_ref
from .pixel_norm import pixel_norm, pixel_norm_ref
from .resample import blur2d, downsample2d, upsample2d

__all__ = [
    "bias_act", "bias_act_ref", "fade_in", "fade_in_ref",
    "minibatch_std", "minibatch_std_ref", "pixel_norm", "pixel_norm_ref",
    "noise_bias_act", "noise_bias_act_ref", "demod_coefficients", "demod_coefficients_ref",
    "blur2d", "downsample2d", "upsample2d",
]
