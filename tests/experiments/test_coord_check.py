"""µP's coordinate check (experiments/coord_check.py) as a test: after 5 AdamW steps every layer's activation
scale stays within 2x across widths 64-512 under µP, and grows with width without it."""
from __future__ import annotations

import pytest

from experiments.coord_check import coord_check

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mup_activations_keep_their_scale_across_widths_and_standard_ones_grow():
    result = coord_check(widths=(64, 128, 256, 512), base_width=64, steps=5, lr=1e-2, batch=4)
    layers = list(result["mup"])
    assert layers == ["h0", "h1", "h2", "logits"]  # the embedding output, each block's residual stream, the logits
    for layer in layers:
        mup = result["mup"][layer]
        assert max(mup) / min(mup) < 2, (layer, mup)
    for layer in ("h1", "h2"):  # the embedding's lr and init are width-free in both parametrizations
        sp = result["sp"][layer]
        assert all(a < b for a, b in zip(sp, sp[1:])) and sp[-1] / sp[0] > 4, (layer, sp)
    logits = result["sp"]["logits"]  # growth muted by the final norm, and by the loss once logits are large
    assert logits[-1] / logits[0] > 1.3, logits
