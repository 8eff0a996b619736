"""The run configuration: omegaconf structured dataclasses, YAML + dotlist overrides, clear errors.

A config file is YAML with the sections below; `model:` may also be a preset name (`tiny`, `125m`, ... from
`configs/model/`) or a path to a model YAML, relative to the config file. Unknown keys, wrong types and
impossible shapes are refused with a message naming the key and the valid choices.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from model.config import DOCUMENT_ATTENTION, ModelConfig, ModelConfigError, QuantizationConfig
from settings.errors import UserError
from pretrain.data.config import DataConfig
from pretrain.data.errors import DataError
from settings.fields import check_fields, choice, non_negative, positive, within
from pretrain.probes import JOBS, MONITORS
from storage.io import FileFormatError, read_yaml

MODEL_PRESETS = Path(__file__).resolve().parent.parent / "configs" / "model"


class ConfigError(UserError, ValueError):
    """A config that cannot run; raised before any rank starts or any work is done."""


@dataclass
class RunConfig:
    name: str = "tiny"
    """Run name; the run directory is `<out_dir>/<name>`."""
    out_dir: str = "runs"
    """Parent folder of run directories."""
    seed: int = 0
    """Seed of the model init and the data order (every rank uses the same)."""


@dataclass
class TrainableConfig:
    mode: str = choice("all", ("all", "norms_only", "random"))
    """all: every parameter trains | norms_only: from `after_step` on only RMSNorm gains and `groups` train |
    random: from `after_step` on as many individual weights as norms_only would train, drawn at random from the
    other parameters (seeded by run.seed) with no weight decay: norms_only's control (ZeRO 0-2)."""
    after_step: int = non_negative(0)
    """t0: the step after which the subset alone trains (0: from the start)."""
    groups: List[str] = field(default_factory=list)
    """Extra parameters kept trainable, as regular expressions over names (e.g. 'output\\.weight', 'layers\\.3\\.')."""


@dataclass
class CarryConfig:
    optimizer: bool = False
    """Load the source's Adam moments (mapped through the growth operator) and step count into the engine
    (ZeRO 1-3) instead of starting Adam from zero."""
    schedule: str = choice("rewarm", ("rewarm", "continue"))
    """rewarm: the run starts at step 0 with its own warmup and data order | continue: it goes on from the
    source's step, so the lr schedule (no new warmup) and the data order continue where the source stopped, and
    train.steps counts from the source run's start."""


@dataclass
class TrainConfig:
    steps: int = positive(200)
    """Number of optimizer steps."""
    micro_batch_size: int = positive(8)
    """Sequences per rank per forward/backward."""
    grad_accum: int = positive(1)
    """Micro-batches accumulated per optimizer step; global batch = micro_batch_size * grad_accum * world."""
    lr: float = positive(3e-3)
    """Peak learning rate."""
    min_lr_ratio: float = within(0.1, 0.0, 1.0)
    """Final learning rate as a fraction of the peak."""
    warmup_steps: int = non_negative(20)
    """Linear warmup from lr/warmup_steps to lr."""
    schedule: str = choice("cosine", ("cosine", "linear", "constant", "wsd"))
    """Decay after warmup: cosine | linear | constant | wsd (warmup-stable-decay: the peak lr until the last
    `decay_steps` (or `decay_fraction` of the run), then `decay_shape` down to min_lr_ratio. A run resumed from a
    stable-phase checkpoint with another train.steps decays from there: train.resume=<checkpoint> in a new
    run.name anneals a branch and leaves the source untouched)."""
    decay_steps: int = non_negative(0)
    """wsd: steps of the final decay (0: `decay_fraction` of train.steps)."""
    decay_fraction: float = within(0.2, 0.0, 1.0)
    """wsd: the final decay's share of train.steps, when decay_steps is 0."""
    decay_shape: str = choice("linear", ("linear", "cosine", "1-sqrt"))
    """wsd: linear | cosine | 1-sqrt (1 - sqrt(progress), fast at first: Hägele et al. 2024)."""
    optimizer: str = choice("adamw", ("adamw", "sgd", "muon"))
    """adamw (beta1, beta2, eps; decoupled weight decay) | sgd (torch SGD with heavy-ball `momentum`, optionally
    `nesterov`; weight_decay is L2 added to the gradient, as torch's SGD does) | muon (DeepSpeed's Muon on the
    blocks' 2-D matrices at `muon_lr` with `momentum`, an AdamW (lr, beta1, beta2, eps) on the embedding, head and
    norms; ZeRO 1-2, train.grad_clip=0; docs/guide.md)."""
    momentum: float = non_negative(0.9)
    """sgd: heavy-ball momentum | muon: Muon's momentum (always Nesterov, as DeepSpeed's update is); in [0, 1)."""
    nesterov: bool = False
    """sgd: Nesterov momentum (needs momentum > 0)."""
    muon_lr: float = positive(0.02)
    """muon: peak lr of the Muon matrices (the aux AdamW takes `lr`); one schedule scales both. Its own value
    because an orthogonalized update has RMS ~ 1/sqrt(width), far below Adam's: 0.02 is Muon's usual setting."""
    weight_decay: float = non_negative(0.1)
    """Weight decay on matrices (AdamW and muon: decoupled; SGD: L2); norms and biases are never decayed."""
    beta1: float = non_negative(0.9)
    """AdamW (and muon's aux AdamW) beta1, in [0, 1) (0: no momentum)."""
    beta2: float = non_negative(0.95)
    """AdamW (and muon's aux AdamW) beta2, in [0, 1)."""
    eps: float = positive(1e-8)
    """AdamW (and muon's aux AdamW) epsilon."""
    grad_clip: float = non_negative(1.0)
    """Clip the global gradient norm to this (0 disables)."""
    precision: str = choice("auto", ("auto", "bf16", "fp32"))
    """auto (bf16 where the device computes it natively: CUDA GPUs with bf16, CPUs with AMX or AVX512-BF16;
    fp32 elsewhere) | bf16 (DeepSpeed bf16 with fp32 masters and fp32 gradient accumulation) | fp32. A run
    writes the concrete choice to its config.yaml."""
    loss_chunk: int = non_negative(0)
    """0: logits, then cross-entropy (plain) | N > 0: the LM head fused with cross-entropy over N tokens at a
    time, so [tokens, vocab] fp32 logits never exist at once (model/loss.py; same loss and gradients). z-loss
    and JREG work either way; a regularizer that reads full logits needs 0."""
    activation_checkpointing: bool = False
    """Recompute each block in backward (DeepSpeed activation checkpointing) to save activation memory."""
    compile: bool = False
    """torch.compile each block in place (parameter names and checkpoints unchanged): 1.45-1.6x tokens/s on
    an H100, 1.1-1.4x on CPU, after a one-off compile (~1 min); off so short runs and tests skip it."""
    document_attention: str = choice("auto", DOCUMENT_ATTENTION)
    """The kernel of block-causal attention under data.document_masking: auto (flex on CUDA, dense elsewhere) |
    dense (SDPA with a [batch, 1, seq, seq] boolean mask: no flash kernel, seq^2 memory; the reference) | flex
    (flex_attention over a block mask of the document ids, compiled once per process on CUDA; torch has no flex
    backward on CPU). Here, not in `model`, because it changes how attention is computed, never what: `model`
    is the shape a resume compares, weights folders record and export writes to config.json."""
    resume: str = "auto"
    """auto: continue from `checkpoints/latest` when present | never | a checkpoint directory."""
    init_from: Optional[str] = None
    """Start from the weights of this checkpoint directory (e.g. a grown model), with a fresh optimizer unless
    `carry` says otherwise."""
    carry: CarryConfig = field(default_factory=CarryConfig)
    """What a run started from a grown folder (`python -m growth grow --carry`) takes over from the source run."""
    on_nonfinite: str = choice("skip", ("skip", "stop", "rollback"))
    """A step with a non-finite loss or gradient norm is never applied (DeepSpeed skips it); then:
    skip (count it, log it, go on) | stop (raise with a diagnostic) | rollback (reload the last checkpoint
    and skip the batch window that caused it)."""
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    """Which parameters train: all, or only the norm gains after a step (norm-only hybrid mode)."""
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    """Quantization-aware training: binary or k-bit block weights in the forward, fp32 latent weights in the
    optimizer, straight-through gradients (model/quant.py). Checkpoints keep the latent weights; whatever reads
    their weights (jobs, export, growth, init_from) gets the quantized ones."""


@dataclass
class EvalConfig:
    every: int = non_negative(50)
    """Validation loss every this many steps (0 disables); also at the end."""
    batches: int = non_negative(8)
    """Validation micro-batches per rank per evaluation (fixed, so curves are comparable)."""
    at: List[int] = field(default_factory=list)
    """Also validate at exactly these steps (with every=0: only at them): a long run read at a few chosen steps,
    e.g. LAG's choosing steps and its horizon, pays for those evaluations alone."""


@dataclass
class CheckpointConfig:
    every: int = non_negative(100)
    """Save every this many steps (0: only at the end)."""
    keep: int = positive(3)
    """Keep the newest K complete checkpoints; older ones are deleted after a successful save."""
    fallback: bool = False
    """When `latest` is partial or damaged (a file missing or truncated), resume from the newest older
    checkpoint that verifies instead of stopping with an error."""
    async_save: bool = False
    """Write checkpoints in a background thread while training goes on: the save call waits only for a copy of
    the state in host memory. Turn it on when saves are long and cores are spare for the writer (an
    accelerator's host) or the disk is slow. Off by default: it holds one more copy of the model and optimizer
    state in host memory, a checkpoint (and the jobs that read it) comes a few steps later, and where training
    keeps every core busy (CPU runs) the writer's work slows the steps about as much as a synchronous save
    would stall them (bench/checkpoint.py; pretrain/async_save.py)."""


@dataclass
class WandbConfig:
    project: Optional[str] = None
    """Weights & Biases project: when set, every metric of metrics.jsonl and the resolved config go there too."""
    mode: str = choice("offline", ("offline", "online"))
    """offline (written under `<run>/wandb/`, no network; upload later with `wandb sync <run>/wandb/offline-run-*`)
    | online."""
    entity: Optional[str] = None
    """W&B entity (user or team); the client's default when unset."""


@dataclass
class LogConfig:
    every: int = positive(10)
    """Write metrics every this many steps."""
    tensorboard: bool = True
    """Also write TensorBoard events to `<run>/tb`."""
    progress: str = choice("auto", ("auto", "bar", "plain", "none"))
    """auto (a bar on a terminal, plain lines otherwise) | bar | plain | none."""
    peak_tflops: Optional[float] = positive(None)
    """Peak FLOP/s per device (in TFLOP/s) for MFU; auto-detected for A100/H100/H200, absent on CPU."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases tracking (off unless `project` is set); a resumed run continues the same W&B run."""


@dataclass
class DeepSpeedSection:
    zero_stage: int = choice(1, (0, 1, 2, 3))
    """ZeRO stage 0-3 (0 with bf16 takes a slow unfused path; prefer 1)."""
    collective_timeout_s: float = positive(600.0)
    """How long a collective waits for every rank: a stopped or hung rank then fails the run with an error
    naming it and the step (instead of blocking the others for DeepSpeed's 10 or torch's 30 minutes)."""
    rendezvous_bind: str = choice("master_addr", ("master_addr", "all"))
    """Where rank 0's rendezvous store listens: master_addr (only the address MASTER_ADDR resolves to on rank 0's
    node; 127.0.0.1 on one node) | all (every interface, torch's default; for a MASTER_ADDR that resolves to a
    loopback alias on the master node but not on the others)."""
    zero_init: bool = True
    """Under ZeRO-3, build the model partitioned from the start (deepspeed.zero.Init) and initialize or load it
    one gathered parameter at a time, so no rank ever holds a full fp32 copy of the model."""
    config: Dict[str, Any] = field(default_factory=dict)
    """A raw DeepSpeed config dict merged last into the generated one, for anything not modelled here."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    monitors: Any = field(default_factory=MONITORS.defaults)
    """In-training monitors, one section per registered monitor (pretrain/probes/registry.py): jump, trajectory, ..."""
    jobs: Any = field(default_factory=JOBS.defaults)
    """Periodic jobs on saved checkpoints, one section per registered job: peeling, lm_eval, ..."""
    regularizers: List[Dict[str, Any]] = field(default_factory=list)
    """Active regularizers, each `{name, weight, start_step, warmup_steps, ...params}` (see regularizers/)."""
    imports: List[str] = field(default_factory=list)
    """Python modules imported on every rank before the config is parsed: register your own regularizers, jobs
    and monitors there."""

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """YAML file (or defaults when None) + `key=value` overrides -> a validated Config."""
    layers: list[tuple[str, DictConfig]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = read_yaml(path, "config file")
        except FileFormatError as err:
            raise ConfigError(str(err)) from None
        if not isinstance(raw, DictConfig):
            raise ConfigError(f"config file {path} must be a YAML mapping of sections {_fields(Config)}")
        layers.append((f"config file {path}", _resolve_model_preset(raw, path.parent)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.steps=100)")
        try:
            layer = OmegaConf.from_dotlist([item])
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"override {item!r}: its value is not valid YAML ({problem}); close its brackets "
                              "or quote it") from None
        layers.append((f"override {item!r}", _resolve_model_preset(layer, Path.cwd())))
    _import_plugins(layers)
    merged = OmegaConf.structured(Config)  # after the imports: their jobs and monitors are sections now
    for source, layer in layers:  # one at a time, so an error can name the file or override it came from
        try:
            merged = OmegaConf.merge(merged, layer)
        except (ConfigKeyError, ValidationError) as err:
            raise ConfigError(_shape_mismatch(merged, layer, source) or _explain(err)) from None
        except (OmegaConfBaseException, TypeError, ValueError) as err:
            raise ConfigError(_shape_mismatch(merged, layer, source) or f"{source}: {err}") from None
    try:
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:  # e.g. ${oc.env:VAR} with VAR unset: one line naming the key
        key = getattr(err, "full_key", None)
        raise ConfigError(f"config key {key!r}: {str(err).splitlines()[0]}" if key else
                          f"invalid config: {str(err).splitlines()[0]}") from None
    except (ModelConfigError, DataError, ValueError) as err:  # dataclass __post_init__ validation
        raise ConfigError(str(err)) from None
    validate(cfg)
    return cfg


OPTIMIZER_NAMES = {"adamw": "AdamW", "sgd": "SGD", "muon": "Muon"}
SGD_AND_MUON_ONLY = ("momentum", "nesterov")
"""Settings AdamW ignores: a value other than the default under AdamW is a mistake."""


def _check_optimizer(cfg: Config) -> None:
    """The optimizer and schedule settings that relate to each other or to features built on AdamW's state."""
    train = cfg.train
    if train.schedule == "wsd" and wsd_decay_steps(train) > train.steps - train.warmup_steps:
        raise ConfigError(f"train.schedule=wsd decays over {wsd_decay_steps(train)} steps, more than the "
                          f"{train.steps - train.warmup_steps} after warmup; lower train.decay_steps or decay_fraction")
    if train.optimizer == "adamw":
        defaults = TrainConfig()
        unused = [f"train.{k}={getattr(train, k)}" for k in SGD_AND_MUON_ONLY
                  if getattr(train, k) != getattr(defaults, k)]
        if unused:  # AdamW's momentum is beta1
            raise ConfigError(f"{', '.join(unused)} applies to train.optimizer=sgd or muon, not adamw (whose momentum "
                              "is train.beta1); drop it, or set train.optimizer")
        return
    name = f"train.optimizer={train.optimizer}"
    if cfg.model.mup is not None:
        raise ConfigError(f"model.mup={{base_width: {cfg.model.mup.base_width}}} scales learning rates by µP's rules "
                          f"for Adam; {name} needs other ones (SGD: Tensor Programs V, Table 3; Muon already scales "
                          "its update to each matrix's shape), which growlm does not implement: use "
                          "train.optimizer=adamw or model.mup=null")
    if train.momentum >= 1 or (train.nesterov and train.momentum == 0):
        raise ConfigError(f"train.momentum={train.momentum} (nesterov={train.nesterov}): momentum must be in [0, 1), "
                          "and > 0 for Nesterov")
    if train.carry.optimizer or train.trainable.mode != "all":
        raise ConfigError(f"{name}: train.carry.optimizer and train.trainable.mode carry Adam's moments, which "
                          f"{OPTIMIZER_NAMES[train.optimizer]} has not; use train.optimizer=adamw for them")
    if (cfg.deepspeed.config.get("zero_optimization") or {}).get("offload_optimizer"):
        raise ConfigError(f"{name} cannot run under ZeRO-Offload (DeepSpeed offloads only its own Adam); drop "
                          "offload_optimizer from deepspeed.config or use adamw")
    if train.optimizer == "muon":
        _check_muon(cfg)


def _check_muon(cfg: Config) -> None:
    """What DeepSpeed's Muon runs correctly here: ZeRO 1-2 (where growlm tests its update and exact resume), and no
    clipping, because ZeRO clips the orthogonalized Muon updates together with the Adam gradients."""
    if cfg.deepspeed.zero_stage not in (1, 2):
        raise ConfigError(f"train.optimizer=muon runs under deepspeed.zero_stage 1 or 2, not "
                          f"{cfg.deepspeed.zero_stage}: the stages whose Muon path and exact resume growlm tests "
                          "(DeepSpeed orthogonalizes in a different place under each stage, and its ZeRO-3 refuses "
                          "Muon with its default reduce_scatter); set deepspeed.zero_stage=1 or 2")
    if cfg.train.grad_clip:
        raise ConfigError(f"train.optimizer=muon with train.grad_clip={cfg.train.grad_clip}: DeepSpeed's ZeRO clips "
                          "the global norm of the orthogonalized Muon updates (each ~sqrt(width), by design) with the "
                          "Adam gradients, so clipping would shrink every Muon step; set train.grad_clip=0")


def wsd_decay_steps(train: TrainConfig) -> int:
    """The length of wsd's final decay: decay_steps, else decay_fraction of the run."""
    return train.decay_steps or round(train.decay_fraction * train.steps)


def validate(cfg: Config) -> None:
    """Every field's declared valid values (settings/fields.py), then the checks that relate several fields."""
    try:
        check_fields(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}; "
            "lower data.seq_len or raise model.max_seq_len"
        )
    _check_optimizer(cfg)
    if any(step < 0 for step in cfg.eval.at):
        raise ConfigError(f"eval.at={list(cfg.eval.at)} lists a negative step; valid: steps >= 0")
    for beta in ("beta1", "beta2"):
        if getattr(cfg.train, beta) >= 1:
            raise ConfigError(f"train.{beta}={getattr(cfg.train, beta)} must be < 1 (an exponential average's "
                              "decay; valid: [0, 1))")
    for pattern in cfg.train.trainable.groups:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"train.trainable.groups: {pattern!r} is not a regular expression ({err})") from None
    carry = cfg.train.carry
    if (carry.optimizer or carry.schedule != "rewarm") and not cfg.train.init_from:
        raise ConfigError("train.carry takes over a grown folder's optimizer state or step; set train.init_from to "
                          "that folder (or leave train.carry at its defaults)")
    if carry.optimizer and cfg.deepspeed.zero_stage == 0:
        raise ConfigError("train.carry.optimizer=true loads Adam state through ZeRO's optimizer; use "
                          "deepspeed.zero_stage 1, 2 or 3")
    if cfg.train.trainable.mode == "random" and cfg.deepspeed.zero_stage == 3:
        raise ConfigError("train.trainable.mode=random masks gradients of whole parameters, which ZeRO-3 partitions; "
                          "use deepspeed.zero_stage 0, 1 or 2 (or mode norms_only)")
    for registry in (JOBS, MONITORS):
        try:
            registry.check(getattr(cfg, registry.section))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    _check_regularizers(cfg)
    if cfg.log.wandb.project and importlib.util.find_spec("wandb") is None:
        raise ConfigError("log.wandb.project is set but wandb is not installed: pip install 'growlm[wandb]' "
                          "(or unset log.wandb.project)")
    _refuse_owned_deepspeed_keys(cfg.deepspeed.config)


DEEPSPEED_KEYS_GROWLM_SETS = {
    "train_batch_size": "train.micro_batch_size / train.grad_accum",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_clipping": "train.grad_clip",
    "zero_optimization.stage": "deepspeed.zero_stage",
    "bf16": "train.precision",
    "fp16": "train.precision (growlm trains in bf16 or fp32)",
    "optimizer": "train.optimizer (growlm builds the optimizer and its parameter groups)",
    "scheduler": "train.schedule (growlm builds the lr schedule)",
}
"""Raw DeepSpeed keys growlm generates from its own settings: set in `deepspeed.config` they would win the merge
and contradict what the trainer, the resume checks and the manifest believe (a Muon run under stage 3, a
checkpoint recorded with the wrong stage)."""


def _refuse_owned_deepspeed_keys(raw: dict[str, Any]) -> None:
    zero = raw.get("zero_optimization")
    present = set(raw) | ({f"zero_optimization.{k}" for k in zero} if isinstance(zero, dict) else set())
    owned = sorted(present & set(DEEPSPEED_KEYS_GROWLM_SETS))
    if owned:
        instead = "; ".join(f"{k} -> {DEEPSPEED_KEYS_GROWLM_SETS[k]}" for k in owned)
        raise ConfigError(f"deepspeed.config sets {owned}, which growlm sets from its own keys so that the trainer, "
                          f"the resume checks and DeepSpeed agree; set these instead: {instead}")


def _import_plugins(layers: list[tuple[str, DictConfig]]) -> None:
    """Import the config's `imports:` (the last layer that sets them wins, as in the merge), so the plug-ins
    they register type their config sections."""
    source, modules = next(((src, layer.get("imports")) for src, layer in reversed(layers) if "imports" in layer),
                           ("", []))
    if not isinstance(modules, (ListConfig, list)) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"{source}: imports must be a list of Python module names, got {modules!r}")
    for module in modules:
        try:
            importlib.import_module(str(module))
        except ImportError as err:
            raise ConfigError(f"imports: cannot import {module!r}: {err}") from None


def _check_regularizers(cfg: Config) -> None:
    """Build the regularizers once so a bad name or parameter is refused before any rank starts."""
    import regularizers

    try:
        built = regularizers.build_regularizers(cfg.regularizers)
    except regularizers.RegularizerConfigError as err:
        raise ConfigError(str(err)) from None
    needs_logits = [r.name for r in built if r.needs_logits]
    if cfg.train.loss_chunk and needs_logits:
        raise ConfigError(f"regularizers {needs_logits} read the full logits, which train.loss_chunk="
                          f"{cfg.train.loss_chunk} never materializes; set train.loss_chunk=0")


def get_dotted(cfg: Config, dotted: str) -> Any:
    """The value at a dotted key such as 'train.steps'."""
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def save_config(cfg: Config, path: Path) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    from storage.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _resolve_model_preset(layer: DictConfig, base_dir: Path) -> DictConfig:
    """`model: NAME` or `model: path.yaml` -> the preset's fields under `model:`."""
    value = layer.get("model") if "model" in layer else None
    if not isinstance(value, str):
        return layer
    layer = layer.copy()
    if (base_dir / value / "config.json").is_file():
        layer.model = OmegaConf.create(_hf_model_fields(base_dir / value, value))
        return layer
    candidates = [base_dir / value, MODEL_PRESETS / f"{value}.yaml", MODEL_PRESETS / value]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        presets = sorted(p.stem for p in MODEL_PRESETS.glob("*.yaml"))
        raise ConfigError(f"model={value!r} is neither a model YAML file, a transformers model folder (with "
                          f"config.json) nor a preset; presets: {presets}")
    try:
        layer.model = read_yaml(found, "model file")
    except FileFormatError as err:
        raise ConfigError(f"model={value!r}: {err}") from None
    return layer


def _hf_model_fields(folder: Path, value: str) -> dict[str, Any]:
    """Every model field from a transformers Llama folder's config.json (unsupported features refused)."""
    from model.hf import UnsupportedModel, read_hf_config

    try:
        return dataclasses.asdict(read_hf_config(folder))
    except (UnsupportedModel, ModelConfigError) as err:
        raise ConfigError(f"model={value!r}: {err}") from None


def _shape_mismatch(schema: DictConfig, layer: DictConfig, source: str, prefix: str = "") -> str | None:
    """Where `layer` gives a list for a section, a section for a list, or a value for either (omegaconf only says
    "incompatible container types"): the dotted key, what it must be and what was given."""
    for key in layer:
        try:
            want, got = (schema[key], layer[key]) if key in schema else (None, None)
        except OmegaConfBaseException:  # e.g. an interpolation that does not resolve: omegaconf's words will do
            continue
        dotted = f"{prefix}{key}"
        if want is None:  # an Optional section unset (model.mup) takes a section or null, never a value
            section = _optional_section(OmegaConf.get_type(schema), str(key)) if key in schema else None
            if section is not None and got is not None and not OmegaConf.is_dict(got):
                shown = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
                return (f"{source}: {dotted} is a section with keys {_fields(section)} (or null), not a value; "
                        f"got {shown!r}")
            continue
        if OmegaConf.is_dict(want) and OmegaConf.is_dict(got):
            found = _shape_mismatch(want, got, source, f"{dotted}.")
            if found:
                return found
        elif OmegaConf.is_list(want) and not OmegaConf.is_list(got):
            shown = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            return f"{source}: {dotted} must be a list (e.g. {dotted}=[{{...}}, ...]), got {shown!r}"
        elif OmegaConf.is_dict(want) and not OmegaConf.is_dict(got):
            shown = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
            return f"{source}: {dotted} is a section with keys {list(want)}, not a value; got {shown!r}"
    return None


def _explain(err: ConfigKeyError | ValidationError) -> str:
    key = err.full_key or getattr(err, "key", None) or "?"
    if isinstance(err, ConfigKeyError) and "not in" in str(err):
        if "." not in key and dataclasses.is_dataclass(err.object_type) and err.object_type is not Config:
            # inside a list of sections (data.sources[i]), where omegaconf loses the path: name the section type
            return (f"unknown config key {key!r} in a {err.object_type.__name__}; valid keys: "
                    f"{_fields(err.object_type)}")
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        valid = _fields_at(parent)
        where = f"section {parent!r}" if parent else "the top level"
        return f"unknown config key {key!r}; valid keys in {where}: {valid}"
    msg = str(err).splitlines()[0]
    return f"config key {key!r}: {msg}"


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _fields_at(dotted: str) -> list[str]:
    """Field names of the dataclass section at a dotted path (the top level when empty), registered plug-in
    sections included; an Optional section unset by default (model.mup, model.rope_scaling) by its type."""
    section: Any = Config()
    for part in filter(None, dotted.split(".")):
        value = getattr(section, part, None)
        if value is None and not isinstance(section, type):
            value = _optional_section(type(section), part)
        if not dataclasses.is_dataclass(value):
            break
        section = value
    return _fields(section if isinstance(section, type) else type(section))


def _optional_section(cls: type | None, name: str) -> type | None:
    """The dataclass X of a field `name: Optional[X]` of the dataclass `cls`, else None."""
    hint = typing.get_type_hints(cls).get(name) if dataclasses.is_dataclass(cls) else None
    return next((arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)), None)
