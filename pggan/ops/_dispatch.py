"""Choosing between an op's pure-torch reference and its Triton kernels.

Rule (the same for every op in pggan/ops):
  impl='ref'    -> the reference, always.
  impl='auto'   -> Triton when every tensor is on CUDA and Triton imports; the reference otherwise.
  impl='triton' -> Triton; on CPU tensors only under TRITON_INTERPRET=1 (the interpreter, used
                   by the tests); anything else raises a clear error instead of falling back.
"""
from __future__ import annotations

import functools
import os

import torch

from ..config import IMPLS          # model.impl's values, listed once


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # triton missing or broken: the reference still works
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(op: str, impl: str, *tensors: torch.Tensor, has_triton: bool = True) -> str:
    """Return 'ref' or 'triton' for `op` on `tensors`, or raise if `impl` cannot be honoured."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS} (got {impl!r})")
    if impl == "ref":
        return "ref"
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if impl == "auto":
        return "triton" if (has_triton and on_cuda and triton_available()) else "ref"
    if not has_triton:
        raise RuntimeError(f"{op}: impl='triton' requested but this op has no Triton kernel; "
                           f"use impl='ref' or 'auto'")
    if not triton_available():
        raise RuntimeError(f"{op}: impl='triton' requested but the triton package is not "
                           f"installed (pip install triton)")
    if not on_cuda and not interpreter_enabled():
        raise RuntimeError(f"{op}: impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 "
                           f"set before import to run the interpreter on CPU)")
    return "triton"
