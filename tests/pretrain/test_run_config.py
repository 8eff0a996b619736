"""Config loading, validation and the pieces of the engine that are pure functions."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from model import Llama, ModelConfig
from launching import ROOT
from pretrain.config import ConfigError, TrainConfig, load_config
from pretrain.engine import deep_merge, deepspeed_config
from pretrain.optim import build_optimizer, build_scheduler, lr_factor, param_groups

TINY = "configs/tiny.yaml"


@pytest.mark.parametrize("override, names", [
    (["train.stpes=5"], ["train.stpes", "steps", "micro_batch_size"]),
    (["trian.steps=5"], ["trian", "train", "model"]),
    (["train.steps=many"], ["train.steps", "many"]),
    (["model.n_heads=3"], ["n_heads"]),
    (["model.n_kv_heads=3"], ["n_kv_heads"]),
    (["data.seq_len=4096"], ["data.seq_len", "model.max_seq_len"]),
    (["train.precision=fp8"], ["train.precision", "bf16", "fp32"]),
    (["train.document_attention=fast"], ["train.document_attention='fast'", "['auto', 'dense', 'flex']"]),
    (["deepspeed.zero_stage=4"], ["deepspeed.zero_stage", "[0, 1, 2, 3]"]),
    (["deepspeed.config.train_batch_size=64"], ["train_batch_size", "train.micro_batch_size"]),
    # issue 51: raw keys that contradicted growlm's own settings after its checks had passed
    (["deepspeed.config.zero_optimization.stage=3"], ["['zero_optimization.stage']", "deepspeed.zero_stage"]),
    (["deepspeed.config.gradient_clipping=0.5"], ["['gradient_clipping']", "train.grad_clip"]),
    (["deepspeed.config={bf16: {enabled: true}, optimizer: {type: Adam}}"],
     ["['bf16', 'optimizer']", "bf16 -> train.precision", "optimizer -> train.optimizer"]),
    (["model=huge"], ["huge", "tiny"]),
    (["regularizers={name: jreg, weight: 0.1}"], ["regularizers must be a list", "{'name': 'jreg', 'weight': 0.1}"]),
    (["data.sources={path: x}"], ["data.sources must be a list"]),
    (["monitors=[1]"], ["monitors is a section with keys ['jump', 'trajectory'"]),  # plug-ins may follow
    (["train.steps"], ["key=value"]),
    # issue 51: the top-level keys were listed, and omegaconf's four-line message shown
    (["data.sources=[{path: x, wieght: 2}]"], ["'wieght' in a SourceSpec", "'weight'"]),
    (["run.name=${oc.env:GROWLM_UNSET_IN_TESTS}"], ["config key 'run.name'", "GROWLM_UNSET_IN_TESTS"]),
])
def test_bad_config_names_the_key(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, override)
    for name in names:
        assert name in str(err.value), (name, str(err.value))
    assert "\n" not in str(err.value)  # one line: the command prints it as its error


def test_overrides_and_presets(tmp_path):
    cfg = load_config(TINY, ["train.steps=7", "model.n_layers=3", "deepspeed.config.zero_optimization.overlap_comm=true"])
    assert cfg.train.steps == 7 and cfg.model.n_layers == 3
    assert cfg.model.dim == 128  # the rest of the tiny preset survives
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"] == {"stage": 1, "overlap_comm": True}  # raw dict merged last, deeply
    assert ds["train_micro_batch_size_per_gpu"] == cfg.train.micro_batch_size
    path = tmp_path / "c.yaml"
    path.write_text("model: 125m\ntrain: {steps: 3}\n")
    assert load_config(path).model.n_layers == 12
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_deep_merge_keeps_base_untouched():
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    out = deep_merge(base, {"a": {"b": 9}, "e": 4})
    assert out == {"a": {"b": 9, "c": 2}, "d": 3, "e": 4}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3}


def test_lr_schedule_shape():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="cosine")
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay: cos(pi/2) = 0
    assert lr_factor(110, cfg) == pytest.approx(0.1)
    lin = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.0, schedule="linear")
    assert lr_factor(35, lin) == pytest.approx(0.75)
    factors = [lr_factor(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:])) and not any(math.isnan(f) for f in factors)


@pytest.mark.parametrize("shape, at_half, at_end", [
    ("linear", 0.5, 0.0), ("cosine", 0.5, 0.0), ("1-sqrt", 1 - math.sqrt(0.5), 0.0)])
def test_wsd_holds_the_peak_then_decays_over_its_last_steps(shape, at_half, at_end):
    """100 steps, warmup 10, the last 20 decaying to 0.1 of the peak: hand-computed factors."""
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1, schedule="wsd", decay_steps=20,
                      decay_shape=shape)
    assert lr_factor(4, cfg) == pytest.approx(0.5)  # warmup: (4 + 1) / 10
    assert [lr_factor(s, cfg) for s in (10, 50, 79, 80)] == [1.0, 1.0, 1.0, 1.0]  # stable, up to the decay's start
    assert lr_factor(90, cfg) == pytest.approx(0.1 + 0.9 * at_half)  # half way through the decay
    assert lr_factor(100, cfg) == pytest.approx(0.1 + 0.9 * at_end)
    by_fraction = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.2,
                              decay_shape=shape)
    assert [lr_factor(s, by_fraction) for s in range(101)] == [lr_factor(s, cfg) for s in range(101)]


def test_a_longer_wsd_run_is_the_same_schedule_until_its_own_decay():
    """What annealing a branch relies on: the stable phase does not depend on the total length."""
    short = TrainConfig(steps=40, warmup_steps=5, schedule="wsd", decay_steps=10)
    long = TrainConfig(steps=400, warmup_steps=5, schedule="wsd", decay_steps=10)
    assert [lr_factor(s, short) for s in range(30)] == [lr_factor(s, long) for s in range(30)]


@pytest.mark.parametrize("overrides, named", [
    (["train.schedule=wsd", "train.steps=30", "train.warmup_steps=10", "train.decay_steps=25"], "decays over 25 steps"),
    (["train.optimizer=sgd", "train.momentum=1.0"], "train.momentum=1.0"),
    (["train.optimizer=sgd", "train.momentum=0", "train.nesterov=true"], "> 0 for Nesterov"),
    (["train.optimizer=sgd", "train.trainable.mode=norms_only"], "SGD has not"),
    (["train.optimizer=lion"], "train.optimizer='lion' is not valid; choose one of ['adamw', 'sgd', 'muon']"),
    (["train.decay_shape=sqrt"], "train.decay_shape='sqrt' is not valid"),
    (["train.optimizer=muon"], "train.grad_clip=1.0"),  # tiny.yaml clips; Muon needs train.grad_clip=0
    (["train.optimizer=muon", "train.grad_clip=0", "deepspeed.zero_stage=3"], "deepspeed.zero_stage 1 or 2, not 3"),
    (["train.optimizer=muon", "train.grad_clip=0", "deepspeed.zero_stage=0"], "deepspeed.zero_stage 1 or 2, not 0"),
    (["train.optimizer=muon", "train.grad_clip=0", "train.trainable.mode=random"], "Muon has not"),
    (["train.optimizer=muon", "train.grad_clip=0", "train.carry.optimizer=true", "train.init_from=x"], "Muon has not"),
    (["train.optimizer=muon", "train.grad_clip=0", "deepspeed.zero_stage=2",
      "deepspeed.config={zero_optimization: {offload_optimizer: {device: cpu}}}"], "cannot run under ZeRO-Offload"),
    (["train.optimizer=muon", "train.grad_clip=0", "train.momentum=1"], "train.momentum=1.0"),
    (["train.momentum=0.5"], "train.momentum=0.5 applies to train.optimizer=sgd or muon, not adamw"),  # issue 51
    (["train.nesterov=true"], "train.nesterov=True applies to train.optimizer=sgd or muon"),
])
def test_optimizer_and_schedule_mistakes_are_named(overrides, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config("configs/tiny.yaml", overrides)


def test_sgd_is_torch_sgd_with_the_momentum_and_decay_groups():
    cfg = load_config("configs/tiny.yaml", ["train.optimizer=sgd", "train.momentum=0.8", "train.nesterov=true",
                                            "train.weight_decay=5e-4"])
    model = Llama(cfg.model)
    opt = build_optimizer(model, cfg.train)
    assert type(opt) is torch.optim.SGD
    assert [(g["momentum"], g["nesterov"], g["weight_decay"]) for g in opt.param_groups] == [(0.8, True, 5e-4),
                                                                                          (0.8, True, 0.0)]


MUON = ["train.optimizer=muon", "train.grad_clip=0", "train.muon_lr=0.01", "train.lr=0.002", "train.momentum=0.95",
        "train.beta1=0.8", "train.beta2=0.99", "train.eps=1e-10", "train.weight_decay=0.05", "train.warmup_steps=4",
        "model.tie_embeddings=false"]


def test_muon_puts_exactly_the_block_matrices_in_muon_and_the_rest_in_adamw():
    """DeepSpeed's Muon over three groups: AdamW on the embedding and untied head (decayed), Muon on the blocks'
    attention and MLP matrices, AdamW on the norms (not decayed); each with its own settings from train.*."""
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam

    cfg = load_config(TINY, MUON)
    model = Llama(cfg.model)
    opt = build_optimizer(model, cfg.train)
    names = {id(p): n for n, p in model.named_parameters()}
    blocks = {f"layers.{i}.{m}.weight" for i in range(cfg.model.n_layers)
              for m in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                        "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
    norms = {"norm.weight"} | {f"layers.{i}.{n}.weight" for i in range(cfg.model.n_layers)
                               for n in ("attention_norm", "ffn_norm")}
    assert type(opt) is MuonWithAuxAdam and len(opt.param_groups) == 3
    embed, muon, gains = opt.param_groups
    assert {names[id(p)] for p in embed["params"]} == {"tok_embeddings.weight", "output.weight"}
    assert {names[id(p)] for p in muon["params"]} == blocks
    assert {names[id(p)] for p in gains["params"]} == norms
    assert [g["use_muon"] for g in opt.param_groups] == [False, True, False]
    assert all(p.use_muon is (names[id(p)] in blocks) for p in model.parameters())  # what ZeRO-1/2 reads
    assert (muon["lr"], muon["momentum"], muon["weight_decay"]) == (0.01, 0.95, 0.05)
    assert [(g["lr"], g["betas"], g["eps"], g["weight_decay"]) for g in (embed, gains)] == [
        (0.002, (0.8, 0.99), 1e-10, 0.05), (0.002, (0.8, 0.99), 1e-10, 0.0)]
    scheduler = build_scheduler(opt, cfg.train)
    assert scheduler.get_last_lr() == [0.002 / 4, 0.01 / 4, 0.002 / 4]  # warmup step 0 of 4 scales both lrs


def test_deepspeeds_own_muon_tagging_would_put_an_untied_head_in_muon():
    """Why growlm tags use_muon itself: deepspeed.initialize tags by name ("embed", "lm_head") whenever its config
    names Muon, and our untied head is `output.weight`."""
    from types import SimpleNamespace

    from deepspeed import set_optimizer_flags

    model = Llama(load_config(TINY, MUON).model)
    set_optimizer_flags(SimpleNamespace(optimizer_name="muon", optimizer_params={}), model)
    assert model.output.weight.use_muon and not model.tok_embeddings.weight.use_muon


def test_no_weight_decay_on_norms():
    model = Llama(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64,
                              max_seq_len=16, tie_embeddings=True))
    decay, no_decay = param_groups(model, 0.1, lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("norm.weight") for p in no_decay["params"])
    assert len(no_decay["params"]) == 2 * 2 + 1
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_run_configs_load(path):
    cfg = load_config(ROOT / "configs" / path)
    assert cfg.data.seq_len <= cfg.model.max_seq_len and cfg.run.name == Path(path).stem


def test_job_settings_errors_name_their_config_key():
    with pytest.raises(ConfigError, match=r"jobs\.peeling\.solver='foo'"):
        load_config(TINY, ["jobs.peeling.solver=foo"])
    with pytest.raises(ConfigError, match=r"jobs\.lm_eval\.mode"):
        load_config(TINY, ["jobs.lm_eval.mode=sometimes"])
