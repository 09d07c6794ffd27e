"""Pieces shared by the Triton paths of pggan/ops: the import guard, dtype rules, memory-layout
helpers and tile sizes.

Layout model. Every kernel indexes memory directly, so a tensor reaches a kernel either
"dense" (non-overlapping and dense in some dimension order: contiguous, channels_last, any
permutation of a contiguous tensor) or after an explicit `.contiguous()`. A dense tensor seen
along one dimension `dim` of size C is a row-major [outer, C, inner] array in storage order,
with inner = stride(dim): element (o, c, i) sits at o * C * inner + c * inner + i. For NCHW and
dim=1 that is [N, C, H*W]; for channels_last it is [N*H*W, C, 1]. Kernels that reduce or
broadcast over `dim` use that view, so both layouts run without a copy.
"""
from __future__ import annotations

import contextlib
from typing import Tuple

import torch

from ._dispatch import interpreter_enabled, triton_available

if triton_available():
    import triton
    import triton.language as tl

    jit = triton.jit
else:  # the references import and run without triton; resolve_impl never picks these kernels
    triton = None
    tl = None

    def jit(fn):
        return fn

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Elements per program. On a GPU a few thousand elements per program keeps every SM busy at
# training shapes; the interpreter's cost grows with the number of programs (each is a Python
# loop iteration over numpy arrays), so on CPU tensors a program takes a much larger tile.
GPU_TILE_ELEMS = 4096
GPU_BLOCK_1D = 2048
INTERPRETER_TILE_ELEMS = 1 << 16


def check_dtypes(op: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: the Triton kernels take float16/bfloat16/float32/float64 "
                            f"tensors (got {t.dtype}); use impl='ref' for other dtypes")


def triton_supports(*tensors: torch.Tensor) -> bool:
    return all(t is None or t.dtype in SUPPORTED_DTYPES for t in tensors)


def tl_dtype(t: torch.Tensor):
    """The triton.language dtype of a float tensor (passed to kernels as a constexpr)."""
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
            torch.float64: tl.float64}[t.dtype]


def acc_dtype(*tensors: torch.Tensor):
    """Kernels compute in fp32 (fp16/bf16/fp32 inputs) or fp64 (any fp64 input)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return tl.float64
    return tl.float32


def tile_elems(t: torch.Tensor) -> int:
    return GPU_TILE_ELEMS if t.is_cuda else INTERPRETER_TILE_ELEMS


def block_1d(t: torch.Tensor) -> int:
    return GPU_BLOCK_1D if t.is_cuda else INTERPRETER_TILE_ELEMS


def num_warps(block_elems: int) -> int:
    return 8 if block_elems >= 4096 else 4


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def device_guard(t: torch.Tensor):
    """Kernels launch on the current CUDA device; make it the tensor's (multi-GPU processes)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill storage[offset : offset + numel] exactly."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def dense(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when dense (contiguous, channels_last, ...), else a contiguous copy."""
    return t if is_dense(t) else t.contiguous()


def same_strides(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and all(
        sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n != 1)


def like_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` laid out in memory exactly like the dense tensor `ref` (dtype kept), copying if needed.
    Incoming gradients can be expanded (stride 0) or in another memory format."""
    if same_strides(t, ref):
        return t
    out = torch.empty_like(ref, dtype=t.dtype)
    out.copy_(t)
    return out


def channel_view(t: torch.Tensor, dim: int) -> Tuple[int, int, int]:
    """(outer, C, inner) of a dense `t` seen along `dim` (see the module docstring)."""
    c = t.shape[dim]
    inner = t.stride(dim) if c > 1 else 1
    outer = t.numel() // max(1, c * inner)
    return outer, c, inner


def tile_2d(rows: int, c: int, inner: int, budget: int) -> Tuple[int, int]:
    """[BLOCK_R, BLOCK_C] tile of a [rows = outer * inner, C] view. With inner == 1 the channel
    axis is the contiguous one, so it gets the long side of the tile; otherwise rows are
    contiguous in runs of `inner` and get at least 64 elements for coalesced access."""
    pr, pc = next_pow2(rows), next_pow2(c)
    if inner == 1:
        block_c = min(pc, budget)
        block_r = min(pr, max(1, budget // block_c))
    else:
        block_r = min(pr, max(64, budget // pc))
        block_c = min(pc, max(1, budget // block_r))
    return block_r, block_c


def grid_1d(numel: int, block: int) -> Tuple[int]:
    return (triton.cdiv(numel, block),)


@jit
def tile_offsets(r, c, C, inner):
    """Storage offsets of tile elements (row r = (o, i), channel c) of an [outer, C, inner] view;
    r is int64 [BLOCK_R, 1], c is [1, BLOCK_C]."""
    return (r // inner) * (C * inner) + (r % inner) + c * inner



@jit
def round_to(v, DT: tl.constexpr):
    """v (fp32 or fp64) rounded to dtype DT (round to nearest even) and kept in v's dtype: the
    rounding a torch op in DT applies to its result. bf16 is rounded on the bits because
    triton 3.9's interpreter truncates fp32 -> bf16 casts (measured), unlike the GPU."""
    if DT == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16) << 16
        return tl.where(v != v, v, bits.to(tl.float32, bitcast=True).to(v.dtype))  # NaN kept
    elif DT == tl.float16:
        return v.to(tl.float16).to(v.dtype)
    elif DT == tl.float32:
        return v.to(tl.float32).to(v.dtype)
    else:
        return v


__all__ = [
    "triton", "tl", "jit", "interpreter_enabled", "SUPPORTED_DTYPES", "check_dtypes",
    "triton_supports", "tl_dtype", "acc_dtype", "tile_elems", "block_1d", "num_warps", "next_pow2",
    "device_guard", "is_dense", "dense", "same_strides", "like_layout", "channel_view",
    "tile_2d", "grid_1d", "tile_offsets", "round_to",
]
