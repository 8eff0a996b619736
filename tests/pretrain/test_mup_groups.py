"""µP's learning rates reach the optimizer through its parameter groups (pretrain/optim.py): each group's lr against
a hand computation, through the schedule, and across a save and restore of optimizer and scheduler."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model import Llama, ModelConfig
from model.config import MupConfig
from pretrain.config import TrainConfig
from pretrain.optim import build_optimizer, build_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = ModelConfig(dim=128, n_layers=2, n_heads=8, n_kv_heads=4, ffn_dim=256, vocab_size=64, max_seq_len=16,
                  mup=MupConfig(base_width=32))
TRAIN = TrainConfig(lr=0.01, warmup_steps=2, steps=10, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1)


def built(seed: int = 0) -> tuple[Llama, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = Llama(CFG)
    optimizer = build_optimizer(model, TRAIN)
    return model, optimizer, build_scheduler(optimizer, TRAIN)


def step(model: Llama, optimizer, scheduler, seed: int) -> None:
    tokens = torch.randint(0, CFG.vocab_size, (2, CFG.max_seq_len), generator=torch.Generator().manual_seed(seed))
    loss = F.cross_entropy(model(tokens[:, :-1]).logits.flatten(0, 1), tokens[:, 1:].flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def names_by_group(model: Llama, optimizer) -> list[set[str]]:
    name = {id(p): n for n, p in model.named_parameters()}
    return [{name[id(p)] for p in g["params"]} for g in optimizer.param_groups]


def test_groups_hold_the_hand_computed_lr_and_decay() -> None:
    """dim 128 from base 32: the 7 projections of each block train at 0.01 / 4; embedding (tied or not), head and
    norm gains at 0.01; decay on matrices only."""
    model, optimizer, scheduler = built()
    groups = names_by_group(model, optimizer)
    hidden = {f"layers.{i}.{m}.weight" for i in range(2) for m in
              ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
               "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
    norms = {f"layers.{i}.{n}.weight" for i in range(2) for n in ("attention_norm", "ffn_norm")} | {"norm.weight"}
    assert groups == [{"tok_embeddings.weight", "output.weight"}, hidden, norms]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.1, 0.0]
    # warmup: step 0 runs at 1/2 of each group's peak lr
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.005, 0.00125, 0.005])
    assert scheduler.base_lr() == pytest.approx(0.005)


def test_without_mup_the_groups_are_decay_then_no_decay_at_one_lr() -> None:
    model = Llama(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=64, max_seq_len=16))
    optimizer = build_optimizer(model, TRAIN)
    groups = names_by_group(model, optimizer)
    assert len(groups) == 2 and all(n.endswith("norm.weight") for n in groups[1])
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.01]


@pytest.mark.numerics
def test_each_groups_lr_follows_the_schedule_and_survives_a_restore() -> None:
    """5 steps, then optimizer and scheduler state into a freshly built pair (as a resume does): the groups keep
    their ratios at every step, and both pairs take identical further steps."""
    model, optimizer, scheduler = built()
    for s in range(5):
        step(model, optimizer, scheduler, s)
    cosine = 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 3 / 8))).item()  # step 5 of warmup 2, 10
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01 * cosine, 0.0025 * cosine, 0.01 * cosine])
    assert scheduler.base_lr() == pytest.approx(0.01 * cosine)

    twin, twin_opt, twin_sched = built(seed=1)  # other weights: everything below must come from the restore
    twin.load_state_dict(model.state_dict())
    twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file: torch would alias the moments
    twin_sched.load_state_dict(scheduler.state_dict())
    assert [g["lr"] for g in twin_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]
    for s in range(5, 8):
        step(model, optimizer, scheduler, s)
        step(twin, twin_opt, twin_sched, s)
    assert [g["lr"] for g in twin_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
