"""train.compile: torch.compile of G and D wherever no double backward runs through them.

Which calls. Every forward of G: G is never under a gradient penalty (in D's phases it runs
under no_grad and its images are detached). D's forwards except the penalty's: in a phase with
a penalty (`phase_has_penalty`), a D call whose input requires grad is the penalty's (WGAN-GP's
x_hat and the R1 / R2 inputs are leaves made to require grad, and autograd.grad with
create_graph follows) and runs eager, because the backward that aot_autograd compiles cannot be
differentiated again (torch 2.13: "does not currently support double backward", or "requires
create_graph=False" where it donated buffers; tests/training/test_compile.py). D's forwards on
reals and detached fakes, and in G's phase, are compiled.

What is compiled: each module of the active stage (net.stage_modules: G's input and blocks,
toRGB / fromRGB, D's blocks and output, StyleGAN's mapping) on its own, not the networks'
whole forward. The forward's fade-in branches on alpha, a Python float that changes at every
step of a fade, and dynamo specialises on its value: the whole generator compiled made a new
graph for every alpha (measured: 6 graphs for 6 alphas at 8x8, torch 2.13, backend aot_eager;
past torch's recompile limit it would run eagerly). The modules see tensors only, so one graph
per module and grad mode serves a whole fade and stage (tested); a new batch size or module
shape adds graphs, which torch's automatic dynamic shapes keep few (RECOMPILE_LIMIT below).

How: the module's forward is replaced by a dispatcher set as an instance attribute (parameters,
state_dict and checkpoints are untouched; G_ema is a copy made before and stays eager) that
calls torch.compile(original forward) unless the gate says eager. The dispatcher counts the
calls of each kind (tests; the training step reads no count).
"""
from __future__ import annotations

import collections
import contextlib
from typing import Iterable

import torch
import torch.nn as nn

# Graphs per compiled function before dynamo gives up and runs it eagerly: each block class
# shares one forward (GBlock.forward for every resolution), times the grad modes it runs in
# (G: its own phase and under no_grad; D: its phase, G's phase, no_grad for r3gan's G step),
# times the stages until automatic dynamic shapes cover them. torch's default (8) can be
# reached by a run through 9 resolutions; a process-wide torch setting, like
# cudnn.benchmark: training owns its process.
RECOMPILE_LIMIT = 64


def phase_has_penalty(phase, loss_kind: str) -> bool:
    """A phase whose loss differentiates D's input gradient (losses.GANLoss.phase_loss):
    R1 or R2, or WGAN-GP's gradient penalty in D's adversarial phase."""
    return bool(phase.r1 or phase.r2 or
                (phase.net == "D" and phase.adversarial and loss_kind == "wgan-gp"))


class CompiledModules:
    """The compiled forwards of a trainer's modules and the gate that turns them off."""

    def __init__(self, backend: str):
        self.backend = backend
        self.eager = False              # the gate: True while a penalty's D call runs
        self.calls = collections.Counter()      # "compiled" / "eager" dispatches
        self._wrapped: dict = {}        # id(module) -> module
        import torch._dynamo.config as dynamo_config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)

    def wrap(self, modules: Iterable[nn.Module]) -> None:
        """Compile these modules' forwards (once per module)."""
        for module in modules:
            if id(module) in self._wrapped:
                continue
            forward = module.forward                        # the class's, bound
            compiled = torch.compile(forward, backend=self.backend)
            module.forward = self._dispatcher(forward, compiled)
            self._wrapped[id(module)] = module

    def _dispatcher(self, forward, compiled):
        def dispatch(*args, **kwargs):
            if self.eager:
                self.calls["eager"] += 1
                return forward(*args, **kwargs)
            self.calls["compiled"] += 1
            return compiled(*args, **kwargs)
        return dispatch

    @contextlib.contextmanager
    def eager_if(self, flag: bool):
        """Run the modules eagerly inside the block when `flag` (nested blocks keep it)."""
        before = self.eager
        self.eager = before or bool(flag)
        try:
            yield
        finally:
            self.eager = before

    def unwrap(self) -> None:
        """Give every module its class's forward back."""
        for module in self._wrapped.values():
            del module.forward
        self._wrapped.clear()
