"""Under document masking the loss is the mean over the kept tokens of the whole optimizer step, so how a global
batch is split into micro-batches and ranks does not change the update (issue 35). Real launches, fp32."""
from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest

from launching import launch, metrics

SPLITS = {"2 ranks x 4 rows": (2, 4, 1), "1 rank x 2 rows x 4": (None, 2, 4), "1 rank x 8 rows": (None, 8, 1)}
"""(ranks, micro_batch_size, grad_accum), each a global batch of the same 8 windows; ranks=None: one process."""
SAME_STEP = ["data.document_masking=true", "train.steps=1", "train.grad_clip=0", "train.schedule=constant",
             "train.warmup_steps=0", "eval.every=0", "monitors.jump.every=0", "checkpoint.every=1"]


@pytest.fixture(scope="module")
def short_and_long_documents(tmp_path_factory) -> Path:
    """Documents of 1 to 40 words: 32-token windows hold from none to a dozen EOS, so kept counts differ."""
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(2000)]
    path = tmp_path_factory.mktemp("documents") / "documents.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choices(words, k=rng.choice([1, 2, 3, 40])))}) + "\n"
                            for _ in range(3000)))
    return path


@pytest.mark.numerics
@pytest.mark.distributed
def test_the_first_step_is_the_same_however_the_batch_is_split(runs_root, short_and_long_documents):
    """The step's loss (the token mean) and its gradient norm (before any clipping) agree across splits."""
    first = {}
    for name, (ranks, micro, accum) in SPLITS.items():
        run = runs_root / f"token-weighting-{ranks or 1}x{micro}x{accum}"
        launch(run, [*SAME_STEP, f"data.source={short_and_long_documents}", f"train.micro_batch_size={micro}",
                     f"train.grad_accum={accum}"], ranks=ranks)
        first[name] = next(r for r in metrics(run) if r["step"] == 1 and "grad_norm" in r)
    reference = first["1 rank x 8 rows"]
    # rel 1e-6 (~8 fp32 eps): each split sums the same token losses and gradients in another order (over rows,
    # micro-batches, then ranks), every partial sum rounding once; normalizing per micro-batch instead of by the
    # step's token count is off by the documents' length ratio, percents here.
    for name, record in first.items():
        assert record["lm_loss"] == pytest.approx(reference["lm_loss"], rel=1e-6), (name, first)
        assert record["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-6), (name, first)
