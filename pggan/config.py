"""Typed run configuration: dataclasses, YAML presets, CLI overrides, validation.

A run is described by one `Config` made of small sections. Presets live in `configs/*.yaml`
(a preset may name a `base:` preset and override parts of it); CLI flags override the preset;
`--set section.key=value` reaches every field. Unknown keys and bad values raise `ConfigError`
with a one-line message that names the option, so a typo never silently creates a new key.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

# Presets ship beside the package (repo-root configs/); an installed wheel carries a copy.
PRESET_DIRS = (
    Path(__file__).resolve().parent.parent / "configs",
    Path(__file__).resolve().parent / "presets",
)


class ConfigError(ValueError):
    """A configuration problem, worded as a one-line message for the user."""


# Allowed values, listed once: validation, the CLI's help and the modules that dispatch on them
# read these.
LOSS_KINDS = ("wgan-gp", "logistic-r1", "r3gan", "lsgan", "hinge")
ARCHS = ("pggan", "stylegan")
COND_D_MODES = ("projection", "acgan")
IMPLS = ("auto", "ref", "triton")
MODULATIONS = ("demod", "adain")
FUSED_SCALES = ("auto", "always", "never")
PENALTY_PRECISIONS = ("fp32", "bf16")
AUGMENT_MODES = ("off", "fixed", "ada")
SYNTHETIC_PYRAMIDS = ("box", "render")
METRIC_NAMES = ("swd", "msssim", "fid", "kid")
MIXED_PRECISIONS = ("auto", "no", "bf16")
ENGINES = ("ddp", "deepspeed")
ZERO_STAGES = (1, 2)            # what the DeepSpeed engine runs; 0 (no sharding) is --engine ddp
ON_NONFINITE = ("stop", "skip")
NUM_WORKERS_AUTO = "auto"       # data.num_workers: per process, from its cores (data/stream.py)
AUTO_MAX_WORKERS = 8            # ... at most this many (why: data/stream.py resolve_num_workers)
MAX_NUM_WORKERS = 256           # data.num_workers: largest count accepted
# train.compile: off, or the torch.compile backend of the passes without a double backward
# (training/compile.py): inductor (generated kernels; needs Triton on CUDA, a C++ compiler on
# CPU) or aot_eager (traced and run by the eager kernels: no code generation, for tests).
COMPILE_MODES = ("off", "inductor", "aot_eager")
# loss.r1_interval when null, per kind with an R1 term: StyleGAN2's lazy R1 every 16 D steps;
# R3GAN's R1 + R2 on every D step (the paper's; a lazy interval is measured in RESULTS.md).
DEFAULT_R1_INTERVAL = {"logistic-r1": 16, "r3gan": 0}


@dataclass
class Cosine:
    """A hyper-parameter that follows a half cosine from `start` to `end` over the first
    `kimg` thousand images of training, then stays at `end` (R3GAN, Huang et al. 2024, sec. 4:
    lr, Adam beta2, gamma, the EMA half-life and the augmentation probability all ramp this
    way). kimg 0 (the default): no ramp, the section's constant setting applies."""
    start: float = 0.0
    end: float = 0.0
    kimg: float = 0.0

    @property
    def active(self) -> bool:
        return self.kimg > 0

    def at(self, cur_nimg: int) -> float:
        """Value at `cur_nimg` images; pure. start at 0, (start + end) / 2 at kimg / 2, end
        from kimg on."""
        t = min(max(cur_nimg / (self.kimg * 1000.0), 0.0), 1.0)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))


# --------------------------------------------------------------------------------------------
# Sections.


@dataclass
class ModelConfig:
    arch: str = "pggan"                 # pggan | stylegan
    max_res: int = 1024                 # final output resolution, power of two in [8, 1024]
    img_channels: int = 3               # 1 (grayscale) or 3 (RGB)
    latent_dim: int = 512               # z dimension
    fmap_base: int = 8192               # nf(res) = min(fmap_base / 2^(log2(res)-1), fmap_max)
    fmap_max: int = 512
    fmap_min: int = 1                   # lower bound on feature maps (keeps tiny test nets valid)
    mbstd_group: int = 4                # minibatch-stddev group size (0 disables the layer)
    mbstd_channels: int = 1             # feature groups in minibatch-stddev (PGGAN: 1)
    num_classes: int = 0                # >0: class-conditional G and D
    cond_d: str = "projection"          # projection | acgan  (how D uses the label)
    impl: str = "auto"                  # fused-op implementation: auto | ref | triton
    fused_scale: str = "auto"           # resampling folded into strided convs (PGGAN
                                        # fused_scale): auto (blocks >= FUSED_SCALE_AUTO_RES
                                        # px, pggan/nets/layers.py) | always | never
    # StyleGAN-style generator (arch: stylegan).
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mult: float = 0.01
    style_mixing_prob: float = 0.9
    modulation: str = "demod"           # demod (StyleGAN2 weight demodulation) | adain
    use_noise: bool = True
    w_avg_beta: float = 0.995           # tracking rate of w_avg for the truncation trick
    fir_filter: list = field(default_factory=lambda: [1, 3, 3, 1])


@dataclass
class ScheduleConfig:
    start_res: int = 4
    fade_kimg: float = 600.0            # fade-in of each new resolution, thousands of images
    stab_kimg: float = 600.0            # stabilisation at each resolution
    fade_kimg_by_res: dict = field(default_factory=dict)   # {res: kimg} overrides
    stab_kimg_by_res: dict = field(default_factory=dict)
    batch_by_res: dict = field(default_factory=lambda: {4: 512, 8: 256, 16: 128, 32: 64, 64: 32})
    batch_default: int = 32             # global batch where batch_by_res has no entry
    batch_per_gpu_by_res: dict = field(default_factory=lambda: {256: 16, 512: 8, 1024: 4})
    batch_per_gpu_max: int = 0          # 0: no extra cap; the rest comes from grad accumulation
    lr: float = 0.001
    lr_by_res: dict = field(default_factory=lambda: {128: 0.0015, 256: 0.002, 512: 0.003,
                                                     1024: 0.003})
    # Cosine ramp of the base lr (replaces `lr`); a resolution's lr keeps its ratio to `lr`:
    # lr(res, nimg) = lr_ramp(nimg) * lr_by_res.get(res, lr) / lr.
    lr_ramp: Cosine = field(default_factory=Cosine)


@dataclass
class OptimConfig:
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    reset_on_grow: bool = True          # PGGAN reset Adam state at each new resolution
    reset_on_stab: bool = False         # ... and where a fade ends and stabilisation begins (as
                                        # PGGAN's official code did: at every lod change)
    beta2_ramp: Cosine = field(default_factory=Cosine)    # replaces beta2 when kimg > 0


@dataclass
class LossConfig:
    kind: str = "wgan-gp"               # wgan-gp | logistic-r1 | r3gan | lsgan | hinge
    gp_lambda: float = 10.0
    gp_target: float = 1.0
    drift_eps: float = 0.001
    r1_gamma: float = 10.0              # logistic-r1: R1 weight; r3gan: gamma of R1 and R2
    r1_interval: Optional[int] = None   # lazy regularisation: R1 (logistic-r1) or R1 + R2
                                        # (r3gan) every N D steps, times N; 0: every step.
                                        # None: the kind's default (DEFAULT_R1_INTERVAL)
    gamma_ramp: Cosine = field(default_factory=Cosine)    # replaces r1_gamma when kimg > 0
    acgan_weight: float = 1.0           # weight of the class loss when cond_d is acgan
    penalty_precision: str = "fp32"     # GP / R1 passes: fp32 | bf16 (autocast; the squared
                                        # norm stays fp32). fp32 until measured on a GPU


@dataclass
class EMAConfig:
    ema_kimg: float = 10.0              # half-life of G_ema in thousands of images
    ema_rampup: Optional[float] = 0.05  # half-life <= cur_nimg * rampup early on; null: off
    beta_per_step: Optional[float] = None   # a fixed decay per optimizer step instead of a
                                        # half-life in images (PGGAN paper: 0.999)
    ema_kimg_ramp: Cosine = field(default_factory=Cosine)  # replaces ema_kimg when kimg > 0


@dataclass
class AugmentConfig:
    mode: str = "off"                   # off | fixed | ada
    p: float = 0.0                      # initial / fixed probability
    p_ramp: Cosine = field(default_factory=Cosine)   # mode fixed: p follows it when kimg > 0
    target: float = 0.6                 # ADA r_t target for E[sign(D(real))]
    ada_kimg: float = 500.0             # images for p to move by 1 at full speed
    interval: int = 4                   # D steps between p updates
    xflip: float = 1.0                  # per-transform probability multipliers
    translate: float = 1.0
    rotate: float = 1.0
    scale: float = 1.0
    color: float = 1.0


@dataclass
class DataConfig:
    path: Optional[str] = None          # dataset.json dir/URL; None: built-in synthetic source
    num_workers: typing.Union[int, str] = NUM_WORKERS_AUTO   # loader processes per training
                                        # process: an int, or auto (its cores, capped: data/
                                        # stream.py resolve_num_workers)
    interleave_shards: int = 4          # remote shards (http(s), pipe:): shards read together
                                        # and mixed per block of an epoch; each loader worker
                                        # holds its share of one block's encoded images
    mirror: bool = True                 # x-flip half the reals (a hash of seed, position); off
                                        # for data with a handedness (Fashion-MNIST: every shoe
                                        # points left), benchmarks/real_floor.py measures it
    synthetic_pyramid: str = "box"      # built-in source: box (render at max_res, at most 64 px,
                                        # exact 2x2 means below: exact fade-in) | render (each
                                        # resolution drawn directly)


@dataclass
class MetricsConfig:
    names: list = field(default_factory=list)   # swd, msssim, fid, kid
    interval_kimg: float = 0.0          # 0: only at the end of training
    num_images: int = 10000
    fid_weights: Optional[str] = None


@dataclass
class TrainConfig:
    total_kimg: float = 12000.0
    seed: int = 0
    run_dir: str = "runs/default"
    mixed_precision: str = "auto"       # auto (bf16 on GPU, fp32 on CPU) | no | bf16
    engine: str = "ddp"                 # ddp | deepspeed
    zero_stage: int = 1                 # DeepSpeed ZeRO stage (1 or 2)
    channels_last: Optional[bool] = None    # NHWC networks and reals; null: on CUDA only
    tick_kimg: float = 4.0              # progress line / tensorboard interval
    snapshot_kimg: float = 200.0        # network snapshot + training state interval
    keep_last: int = 3                  # training states kept besides stage boundaries
    grid_size: int = 16                 # images in the fixed-latent grid per tick
    on_nonfinite: str = "stop"          # NaN/Inf loss or gradient: stop (exit 4) | skip the step
    nonfinite_max_skips: int = 10       # with skip: stop after this many bad steps in a row
    compile: typing.Union[str, bool] = "off"   # off | inductor | aot_eager (COMPILE_MODES):
                                        # torch.compile of G and D where no double backward
                                        # runs through them. YAML reads a bare off as false,
                                        # which means off too.


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# dict <-> dataclass with checking.


# Largest integer a config field takes: every count, size and seed fits far below it, and a
# value past it (e.g. 99999999999999999999) is a typo that would overflow int64 later.
_INT_LIMIT = 2 ** 53


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if len(args) < len(typing.get_args(tp)):        # Optional[...]
                return None
            raise ConfigError(f"{where} must be set (got null)")
        errors = []
        for arg in args:                # the first type that takes the value (int before str)
            try:
                return _check_value(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false (got {value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{where} must be an integer (got {value!r})")
        if abs(value) > _INT_LIMIT:
            raise ConfigError(f"{where} is out of range (got {value}; at most {_INT_LIMIT:g})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number (got {value!r})")
        if isinstance(value, int) and abs(value) > _INT_LIMIT:
            raise ConfigError(f"{where} is out of range (got {value})")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number (got {value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string (got {value!r})")
        return value
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list (got {value!r})")
        return list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping (got {value!r})")
        out = {}
        for k, v in value.items():
            try:
                key = int(k)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: key {k!r} must be a resolution (integer)") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}[{key}] must be a number (got {v!r})")
            out[key] = v
        return out
    return value


# Options that no longer exist -> what to do instead (said when a config still sets one).
REMOVED_OPTIONS = {
    "data.shuffle_buffer": "the training stream is a permutation of the dataset per epoch, "
                           "with no shuffle buffer; delete the line (remote shards mix "
                           "data.interleave_shards shards per block)",
}


def _merge_section(obj: Any, data: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            if where in REMOVED_OPTIONS:
                raise ConfigError(f"option {where} was removed: {REMOVED_OPTIONS[where]}")
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown option {where}{hint}")
        cur = getattr(obj, key)
        if dataclasses.is_dataclass(cur):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a mapping of options")
            _merge_section(cur, value, f"{where}.")
        else:
            setattr(obj, key, _check_value(value, hints[key], where))


def config_from_dict(data: dict, base: Optional[Config] = None) -> Config:
    cfg = base if base is not None else Config()
    _merge_section(cfg, data, "")
    return cfg


def find_preset(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"--config {name}: file not found")
        return p
    for d in PRESET_DIRS:
        cand = d / f"{name}.yaml"
        if cand.is_file():
            return cand
    known = sorted({q.stem for d in PRESET_DIRS if d.is_dir() for q in d.glob("*.yaml")})
    raise ConfigError(f"--config {name}: no such preset or file (presets: {', '.join(known)})")


def load_preset(name: str, _seen: tuple = ()) -> Config:
    path = find_preset(name)
    if str(path.resolve()) in _seen:
        raise ConfigError(f"{path}: 'base' presets form a cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of sections")
    base_name = data.pop("base", None)
    cfg = load_preset(base_name, _seen + (str(path.resolve()),)) if base_name else Config()
    try:
        return config_from_dict(data, cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def apply_override(cfg: Config, assignment: str) -> None:
    """Apply one `section.key=value` override (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected section.key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {assignment}: value is not valid YAML") from None
    nested: Any = value
    for p in reversed(parts):
        nested = {p: nested}
    config_from_dict(nested, cfg)


# --------------------------------------------------------------------------------------------
# Validation.


def _pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _choice(value: str, options: tuple, name: str) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)} (got {value!r})")


def parse_num_workers(text: str):
    """A --num-workers argument -> int, or the text as it is (auto, or junk for validation)."""
    return int(text) if text.strip().lstrip("+-").isdigit() else text


def parse_on_off(text: str):
    """A --mirror style argument -> bool (on/off, true/false, yes/no, 1/0), or the text as it is
    (validation then names the option and what it takes)."""
    words = {"on": True, "true": True, "yes": True, "1": True,
             "off": False, "false": False, "no": False, "0": False}
    return words.get(text.strip().lower(), text)


def check_num_workers(value, name: str) -> None:
    if isinstance(value, bool) or not (isinstance(value, int) and 0 <= value <= MAX_NUM_WORKERS
                                       or value == NUM_WORKERS_AUTO):
        raise ConfigError(f"{name} must be {NUM_WORKERS_AUTO} or an integer in "
                          f"[0, {MAX_NUM_WORKERS}] (got {value!r})")


def validate(cfg: Config) -> Config:
    m, s, t = cfg.model, cfg.schedule, cfg.train
    if not (_pow2(m.max_res) and 8 <= m.max_res <= 1024):
        raise ConfigError(f"max-res must be a power of two between 8 and 1024 (got {m.max_res})")
    if not (_pow2(s.start_res) and 4 <= s.start_res <= m.max_res):
        raise ConfigError(f"schedule.start_res must be a power of two in [4, max-res] "
                          f"(got {s.start_res})")
    _choice(m.arch, ARCHS, "model.arch")
    _choice(m.cond_d, COND_D_MODES, "model.cond_d")
    _choice(m.impl, IMPLS, "model.impl")
    _choice(m.modulation, MODULATIONS, "model.modulation")
    _choice(m.fused_scale, FUSED_SCALES, "model.fused_scale")
    _choice(cfg.loss.penalty_precision, PENALTY_PRECISIONS, "loss.penalty_precision")
    if m.img_channels not in (1, 3):
        raise ConfigError(f"model.img_channels must be 1 or 3 (got {m.img_channels})")
    for name in ("latent_dim", "fmap_base", "fmap_max", "fmap_min", "w_dim"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name} must be positive (got {getattr(m, name)})")
    if m.mbstd_group < 0 or m.mbstd_channels < 1:
        raise ConfigError("model.mbstd_group must be >= 0 and model.mbstd_channels >= 1")
    if m.num_classes < 0:
        raise ConfigError(f"model.num_classes must be >= 0 (got {m.num_classes})")
    if not 0.0 <= m.style_mixing_prob <= 1.0:
        raise ConfigError("model.style_mixing_prob must be in [0, 1]")
    for name in ("fade_kimg", "stab_kimg"):
        if getattr(s, name) < 0:
            raise ConfigError(f"schedule.{name} must be >= 0")
    for name in ("batch_by_res", "batch_per_gpu_by_res", "lr_by_res",
                 "fade_kimg_by_res", "stab_kimg_by_res"):
        for res, v in getattr(s, name).items():
            if not _pow2(res):
                raise ConfigError(f"schedule.{name}: key {res} is not a power-of-two resolution")
            if v <= 0 and name not in ("fade_kimg_by_res", "stab_kimg_by_res"):
                raise ConfigError(f"schedule.{name}[{res}] must be positive (got {v})")
    if s.batch_default < 1 or s.batch_per_gpu_max < 0:
        raise ConfigError("schedule.batch_default must be >= 1 and batch_per_gpu_max >= 0")
    if s.lr <= 0:
        raise ConfigError(f"schedule.lr must be positive (got {s.lr})")
    _choice(cfg.loss.kind, LOSS_KINDS, "loss.kind")
    # name -> (ramp, check of start/end, the range in words)
    ramps = {"schedule.lr_ramp": (s.lr_ramp, lambda v: v > 0, "> 0"),
             "optim.beta2_ramp": (cfg.optim.beta2_ramp, lambda v: 0 <= v < 1, "in [0, 1)"),
             "loss.gamma_ramp": (cfg.loss.gamma_ramp, lambda v: v >= 0, ">= 0"),
             "ema.ema_kimg_ramp": (cfg.ema.ema_kimg_ramp, lambda v: v >= 0, ">= 0"),
             "augment.p_ramp": (cfg.augment.p_ramp, lambda v: 0 <= v <= 1, "in [0, 1]")}
    for name, (ramp, ok, words) in ramps.items():
        if not (ramp.kimg >= 0 and math.isfinite(ramp.kimg)):
            raise ConfigError(f"{name}.kimg must be a finite number >= 0 (got {ramp.kimg})")
        for end in ("start", "end"):
            v = getattr(ramp, end)
            if ramp.active and not (math.isfinite(v) and ok(v)):
                raise ConfigError(f"{name}.{end} must be {words} (got {v})")
    if cfg.augment.p_ramp.active and cfg.augment.mode != "fixed":
        raise ConfigError("augment.p_ramp needs augment.mode fixed (with ada, p follows D's "
                          "overfitting instead)")
    if cfg.ema.beta_per_step is not None and not 0.0 <= cfg.ema.beta_per_step < 1.0:
        raise ConfigError(f"ema.beta_per_step must be in [0, 1) (got {cfg.ema.beta_per_step})")
    if cfg.loss.r1_interval is not None and cfg.loss.r1_interval < 0:
        raise ConfigError("loss.r1_interval must be >= 0 (0: every step; null: the kind's "
                          "default)")
    if not (0.0 <= cfg.optim.beta1 < 1.0 and 0.0 <= cfg.optim.beta2 < 1.0):
        raise ConfigError("optim.beta1 and optim.beta2 must be in [0, 1)")
    if cfg.ema.ema_kimg < 0:
        raise ConfigError("ema.ema_kimg must be >= 0")
    _choice(cfg.augment.mode, AUGMENT_MODES, "augment.mode")
    _choice(cfg.data.synthetic_pyramid, SYNTHETIC_PYRAMIDS, "data.synthetic_pyramid")
    if not 0.0 <= cfg.augment.p <= 1.0:
        raise ConfigError(f"augment.p must be in [0, 1] (got {cfg.augment.p})")
    check_num_workers(cfg.data.num_workers, "data.num_workers")
    if t.compile is False:
        t.compile = "off"
    if t.compile is True:
        raise ConfigError(f"train.compile: name the backend ({', '.join(COMPILE_MODES[1:])}) "
                          f"or off (got true)")
    _choice(t.compile, COMPILE_MODES, "train.compile")
    if not 1 <= cfg.data.interleave_shards <= 1024:
        raise ConfigError(f"data.interleave_shards must be in [1, 1024] shards (got "
                          f"{cfg.data.interleave_shards})")
    if not m.fir_filter or len(m.fir_filter) > 16 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0 for v in m.fir_filter) or sum(m.fir_filter) <= 0:
        raise ConfigError(f"model.fir_filter must be a list of 1-16 non-negative numbers with "
                          f"a positive sum, e.g. [1, 3, 3, 1] (got {m.fir_filter!r})")
    if not all(isinstance(v, str) for v in cfg.metrics.names):
        raise ConfigError(f"metrics.names must be a list of names (got {cfg.metrics.names!r})")
    for name in cfg.metrics.names:
        _choice(name, METRIC_NAMES, "metrics.names entry")
    _choice(t.mixed_precision, MIXED_PRECISIONS, "mixed-precision")
    _choice(t.engine, ENGINES, "engine")
    if t.zero_stage not in (0,) + ZERO_STAGES:
        raise ConfigError(f"zero-stage must be 0, 1 or 2 (got {t.zero_stage})")
    if t.total_kimg <= 0 or not math.isfinite(t.total_kimg):
        raise ConfigError(f"total-kimg must be a positive number (got {t.total_kimg})")
    for name in ("tick_kimg", "snapshot_kimg"):
        if getattr(t, name) <= 0:
            raise ConfigError(f"train.{name} must be positive")
    if t.keep_last < 1:
        raise ConfigError("train.keep_last must be >= 1")
    _choice(t.on_nonfinite, ON_NONFINITE, "train.on_nonfinite")
    if t.nonfinite_max_skips < 1:
        raise ConfigError(f"train.nonfinite_max_skips must be >= 1 (got {t.nonfinite_max_skips})")
    return cfg


def save_resolved(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML atomically (temp file + rename)."""
    from .files import atomic_write_text
    atomic_write_text(path, cfg.to_yaml())


def config_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


# --------------------------------------------------------------------------------------------
# Command line: the contract every CLI shares.

# flag -> (config path, type, help). Flags override the preset; --set reaches everything else.
CLI_OVERRIDES = {
    "--data": ("data.path", str, "dataset directory or URL holding dataset.json (default: "
                                 "the built-in synthetic source)"),
    "--max-res": ("model.max_res", int, "final resolution, power of two in [8, 1024]"),
    "--total-kimg": ("train.total_kimg", float, "training length in thousands of real images"),
    "--run-dir": ("train.run_dir", str, "run directory: checkpoints, snapshots, logs"),
    "--seed": ("train.seed", int, "global seed; data order and noise derive from "
                                  "(seed, rank, cur_nimg)"),
    "--arch": ("model.arch", str, " | ".join(ARCHS)),
    "--loss": ("loss.kind", str, " | ".join(LOSS_KINDS)),
    "--impl": ("model.impl", str, "fused ops: auto (Triton on CUDA) | ref | triton"),
    "--mixed-precision": ("train.mixed_precision", str, "auto (bf16 on GPU) | no | bf16"),
    "--engine": ("train.engine", str, "ddp (Accelerate) | deepspeed"),
    "--zero-stage": ("train.zero_stage", int, "DeepSpeed ZeRO stage 0/1/2"),
    "--batch-per-gpu": ("schedule.batch_per_gpu_max", int, "cap on the per-GPU batch; the "
                                                           "global batch comes from gradient "
                                                           "accumulation"),
    "--num-classes": ("model.num_classes", int, "number of classes for conditional models"),
    "--augment": ("augment.mode", str, " | ".join(AUGMENT_MODES)),
    "--snapshot-kimg": ("train.snapshot_kimg", float, "checkpoint/snapshot interval in kimg"),
    "--tick-kimg": ("train.tick_kimg", float, "progress/log interval in kimg"),
    "--num-workers": ("data.num_workers", parse_num_workers,
                      f"data loader worker processes per training process: {NUM_WORKERS_AUTO} "
                      f"(default: this process's share of the cores it may run on, less one "
                      f"for itself, 1 to {AUTO_MAX_WORKERS}) or a count; 0 decodes in the "
                      f"training process"),
    "--mirror": ("data.mirror", parse_on_off, "x-flip half the real images: on | off (off for "
                                              "data with a handedness, e.g. Fashion-MNIST's "
                                              "left-pointing shoes)"),
    "--compile": ("train.compile", str, f"torch.compile the passes without a double backward "
                                        f"(never a penalty's): {' | '.join(COMPILE_MODES)}"),
}


def add_config_args(parser) -> None:
    parser.add_argument("--config", default="pggan-celebahq-1024", metavar="PRESET|FILE",
                        help="preset name in configs/ or a YAML file (default: %(default)s)")
    for flag, (path, tp, helptext) in CLI_OVERRIDES.items():
        parser.add_argument(flag, type=tp, default=None, help=f"{helptext} [{path}]")
    parser.add_argument("--metrics", default=None, metavar="LIST",
                        help=f"comma-separated metrics: {','.join(METRIC_NAMES)} "
                             f"[metrics.names]")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config field, e.g. --set loss.r1_gamma=5 "
                             "(repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config and exit")


def config_from_args(args) -> Config:
    """Preset -> CLI flags -> --set overrides -> validation. Raises ConfigError."""
    cfg = load_preset(args.config)
    for flag, (path, _tp, _h) in CLI_OVERRIDES.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            section, key = path.split(".")
            try:
                config_from_dict({section: {key: value}}, cfg)
            except ConfigError as e:
                raise ConfigError(f"{flag}: {e}") from None
    if args.metrics is not None:
        cfg.metrics.names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for assignment in args.set:
        apply_override(cfg, assignment)
    return validate(cfg)
