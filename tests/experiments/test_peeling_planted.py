"""Peeling against planted truth: the plants do what they say (experiments/planting.py), and the analysis scores
them as stated (experiments/peeling_planted.py)."""
from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from statsmodels.stats.multitest import multipletests

from experiments.errors import ExperimentError
from experiments.peeling_planted import PlantedSpec, analyse, auc
from experiments.planting import place_plants, plant_kinds, train_planted
from model import Llama
from pretrain.config import load_config

SMALL = ["model.n_layers=6", "model.dim=32", "model.n_heads=2", "model.n_kv_heads=1", "model.ffn_dim=64",
         "model.vocab_size=64", "data.seq_len=16", "train.micro_batch_size=4", "train.steps=12",
         "train.warmup_steps=2", "train.lr=1e-2"]
PLANTS = {1: "frozen_init", 2: "frozen_early", 4: "scaled_0.5", 5: "identity"}
FREEZE = 5
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(one_thread):
    cfg = load_config("configs/tiny.yaml", SMALL)
    windows = np.random.default_rng(0).integers(0, 64, (64, 17))
    seen = {}

    def keep(step, model):
        if step == FREEZE:
            seen[step] = copy.deepcopy(model.state_dict())

    planted = train_planted(cfg, PLANTS, FREEZE, windows, seed=7, on_step=keep)
    normal = train_planted(cfg, {}, FREEZE, windows, seed=7)
    torch.manual_seed(7)  # train_planted seeds the init so
    init = Llama(cfg.model).state_dict()
    return planted.state_dict(), normal.state_dict(), init, seen, cfg, windows


def block(state: dict, layer: int) -> dict:
    prefix = f"layers.{layer - 1}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.numerics
def test_frozen_plants_keep_their_weights_and_normal_layers_train(runs):
    planted, _, init, seen, _, _ = runs
    assert all(torch.equal(v, block(init, 1)[k]) for k, v in block(planted, 1).items())  # frozen at init
    early = block(seen[FREEZE], 2)
    assert all(torch.equal(v, early[k]) for k, v in block(planted, 2).items())  # frozen from FREEZE on
    assert not all(torch.equal(v, block(init, 2)[k]) for k, v in early.items())  # ... after training until then
    assert not torch.equal(block(planted, 3)["attention.wq.weight"], block(init, 3)["attention.wq.weight"])


@pytest.mark.numerics
def test_identity_and_scaled_plants(runs):
    planted, normal, _, _, _, _ = runs
    ident = block(planted, 5)
    assert not ident["attention.wo.weight"].any() and not ident["feed_forward.w2.weight"].any()
    # scaling is applied after training: the same run with no plant has exactly twice that block's outputs
    # (the other plants change what every block sees, so compare the scaled block with its own unscaled weights)
    cfg, windows = runs[4], runs[5]
    unscaled = train_planted(cfg, {k: v for k, v in PLANTS.items() if k != 4}, FREEZE, windows, seed=7).state_dict()
    for name in ("attention.wo.weight", "feed_forward.w2.weight"):
        torch.testing.assert_close(block(planted, 4)[name], 0.5 * block(unscaled, 4)[name], rtol=0, atol=0)
    assert not torch.equal(block(planted, 4)["attention.wo.weight"], block(normal, 4)["attention.wo.weight"])


def test_quantization_aware_plants_are_baked_to_the_format(runs):
    cfg, windows = runs[4], runs[5]
    model = train_planted(cfg, {2: "identity"}, FREEZE, windows, seed=3, bits=1)
    w = model.layers[0].attention.wq.weight
    assert all(len(row.abs().unique()) == 1 for row in w)  # binary: sign(w) * one scale per row
    assert not model.layers[1].feed_forward.w2.weight.any()


def test_plants_are_placed_at_distinct_layers_leaving_normal_ones():
    kinds = plant_kinds([0.25, 0.5])
    assert kinds == ["frozen_init", "frozen_early", "scaled_0.25", "scaled_0.5", "identity"]
    placed = place_plants(kinds, 8, seed=3)
    assert sorted(placed.values()) == sorted(kinds) and len(set(placed)) == 5 and set(placed) <= set(range(1, 9))
    assert placed != place_plants(kinds, 8, seed=4)
    with pytest.raises(ValueError, match="more than 5 layers"):
        place_plants(kinds, 5, seed=0)


def test_auc_counts_pairs_and_ties_half():
    assert auc([3.0, 4.0], [1.0, 2.0])[0] == 1.0
    assert auc([1.0, 2.0], [3.0, 4.0])[0] == 0.0
    assert auc([2.0], [1.0, 2.0, 3.0])[0] == pytest.approx((1 + 0.5 + 0) / 3)


def test_analysis_holm_adjusts_each_formats_family():
    rows = [{"format": "fp", "seed": s, "layer": l, "plant": plant, "removable": r, "removable_flag": r > 0,
             "under_optimized": u, "under_optimized_flag": u > 0}
            for s in range(3) for l, plant, r, u in ((1, "frozen_init", 0.5 + s, -0.1), (2, "normal", -1.0 - s, 0.2),
                                                      (3, "normal", -2.0, -0.3 + s), (4, "identity", 0.0, 0.1))]
    table = analyse(rows, ["frozen_init", "identity"])["fp"]
    frozen = next(e for e in table if e["plant"] == "frozen_init" and e["verdict"] == "removable")
    assert frozen["auc"] == 1.0 and frozen["flagged"] == 3 and frozen["false_flags"] == 0
    assert [e["p_holm"] for e in table] == pytest.approx(list(multipletests([e["p"] for e in table],
                                                                            method="holm")[1]))


@pytest.mark.parametrize("change, message", [
    ("extra: 1\n", "unknown keys"),
    ("freeze_step: 5000\n", "freeze_step=5000"),
    ("alphas: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]\n", "10 plants need a model of more than 10 layers"),
    ("series: {seed: 0, steps: [0]}\n", "series.steps"),
    # issue 51: accepted before
    ("alphas: [-0.5]\n", "alphas[0]=-0.5 must be in (0, 1)"),
    ("targets: {auc: 1.5, false_flags: 0.05}\n", "targets.auc=1.5 must be in [0, 1]"),
    ("targets: {auc: 0.9}\n", "must have exactly the keys ['auc', 'false_flags']"),
    ("bits: [null, 32]\n", "bits[1]=32 must be in [1, 16]"),
])
def test_bad_specs_are_refused_by_name(tmp_path, change, message):
    base = {"base": "configs/tiny.yaml", "overrides": {"model.n_layers": 8}, "seeds": "[0]", "freeze_step": "10",
            "alphas": "[0.5]", "bits": "[null]", "series": "{seed: 0, steps: [100]}",
            "peeling": "{refit_seeds: 2}", "targets": "{auc: 0.9, false_flags: 0.05}"}
    key = change.split(":")[0]
    text = "".join(f"{k}: {v}\n" for k, v in base.items() if k != key and k != "overrides")
    text += "overrides: {model.n_layers: 8}\n" + change
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ExperimentError, match=re.escape(message)):
        PlantedSpec.load(path)
