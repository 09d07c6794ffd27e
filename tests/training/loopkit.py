"""Observing the real training loop from outside: a tiny configuration run in-process through
`Trainer.run()`, with every optimizer step, network call and training step recorded by wrapping
public methods (torch's `Adam.step`, module forward hooks, `Trainer.train_step`). Nothing here
reads the loop's private attributes, so the tests survive a refactor of the loop's internals."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import yaml

from pggan.config import Config, config_from_dict, validate
from pggan.training.engine import Engine
from pggan.training.loop import Trainer
from trainkit import TINY_YAML


def tiny_cfg(run_dir, overrides: Optional[dict] = None) -> Config:
    """The tiny CLI preset (trainkit.TINY_YAML) with nested `overrides` ({section: {key: v}})."""
    cfg = config_from_dict(yaml.safe_load(TINY_YAML), Config())
    cfg.train.run_dir = str(run_dir)
    if overrides:
        cfg = config_from_dict(copy.deepcopy(overrides), cfg)
    return validate(cfg)


def make_trainer(cfg: Config) -> Trainer:
    return Trainer(cfg, Engine(), cfg.train.run_dir, print_fn=lambda *a, **k: None)


@dataclass
class OptStep:
    """One call of Adam.step: which network, where, and everything Adam was about to use."""
    net: str                        # "G" | "D"
    cur_nimg: int                   # the trainer's position during this step
    lrs: List[float]                # per param group
    betas: List[tuple]
    state_len: int                  # parameters with Adam state before the step
    state_max_step: int             # largest per-parameter step count before the step (0: none)
    grads: Dict[str, torch.Tensor]  # name -> gradient about to be applied
    params: Dict[str, torch.Tensor] = field(default_factory=dict)   # before the step
    other: Dict[str, torch.Tensor] = field(default_factory=dict)    # the other net's state


@dataclass
class NetCall:
    net: str                        # "G" | "D"
    args: tuple                     # detached clones of the tensor arguments (others as given)
    kwargs: dict
    out: torch.Tensor


class LoopRecorder:
    """Install on a Trainer (before run()); `monkeypatch` undoes the Adam.step wrapper.

    events: OptStep and NetCall in the order they happened (with `calls=True`)."""

    def __init__(self, trainer: Trainer, monkeypatch, calls: bool = False,
                 tensors: bool = False):
        self.trainer, self.events = trainer, []
        self.tensors = tensors
        self.ids = {name: {id(p): n for n, p in net.named_parameters()}
                    for name, net in (("G", trainer.G), ("D", trainer.D))}
        orig = torch.optim.Adam.step
        rec = self

        def step(opt, *a, **k):
            rec._on_step(opt)
            return orig(opt, *a, **k)
        monkeypatch.setattr(torch.optim.Adam, "step", step)
        if calls:
            for name, net in (("G", trainer.G), ("D", trainer.D)):
                net.register_forward_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name):
        def hook(_module, args, kwargs, out):
            clone = lambda v: v.detach().clone() if torch.is_tensor(v) else v   # noqa: E731
            self.events.append(NetCall(name, tuple(clone(a) for a in args),
                                       {k: clone(v) for k, v in kwargs.items()},
                                       out.detach().clone()))
        return hook

    def _on_step(self, opt) -> None:
        first = opt.param_groups[0]["params"][0]
        net = "G" if id(first) in self.ids["G"] else "D"
        names = self.ids[net]
        grads, steps = {}, [0]
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None and self.tensors:
                    grads[names[id(p)]] = p.grad.detach().clone()
                s = opt.state.get(p, {}).get("step")
                if s is not None:
                    steps.append(int(s))
        ev = OptStep(net=net, cur_nimg=self.trainer.cur_nimg,
                     lrs=[g["lr"] for g in opt.param_groups],
                     betas=[tuple(g["betas"]) for g in opt.param_groups],
                     state_len=len(opt.state), state_max_step=max(steps), grads=grads)
        if self.tensors:
            mine = self.trainer.G if net == "G" else self.trainer.D
            other = self.trainer.D if net == "G" else self.trainer.G
            ev.params = {k: v.detach().clone() for k, v in mine.state_dict().items()}
            ev.other = {k: v.detach().clone() for k, v in other.state_dict().items()}
        self.events.append(ev)

    def steps(self, net: Optional[str] = None) -> List[OptStep]:
        return [e for e in self.events if isinstance(e, OptStep) and (net is None or
                                                                        e.net == net)]

    def by_train_step(self) -> List[list]:
        """Events split into training steps: each ends with G's optimizer step."""
        out, cur = [], []
        for e in self.events:
            cur.append(e)
            if isinstance(e, OptStep) and e.net == "G":
                out.append(cur)
                cur = []
        return out
