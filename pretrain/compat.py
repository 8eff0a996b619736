"""Can this config continue that checkpoint? Checked from the manifest, before DeepSpeed reads anything."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from pretrain.config import Config


def run_meta(cfg: Config, tokenizer_path: Path, world_size: int) -> dict[str, Any]:
    """What a resume must agree with; stored in every checkpoint's manifest."""
    return {"model": dataclasses.asdict(cfg.model), "zero_stage": cfg.deepspeed.zero_stage,
            "precision": cfg.train.precision, "world_size": world_size,
            "tokenizer_sha256": hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest()}


def problems(saved: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Every difference that makes resuming wrong or impossible (a different world size is not one: the
    trainer converts the checkpoint to DeepSpeed's universal form)."""
    found = [f"model.{k}: checkpoint {v!r}, config {ours['model'].get(k)!r}"
             for k, v in saved.get("model", {}).items() if ours["model"].get(k) != v]
    if saved.get("tokenizer_sha256", ours["tokenizer_sha256"]) != ours["tokenizer_sha256"]:
        found.append("the tokenizer differs from the one the checkpoint was trained with (data.tokenizer, "
                     "data.source or model.vocab_size changed)")
    for key, name in (("zero_stage", "deepspeed.zero_stage"), ("precision", "train.precision")):
        if saved.get(key, ours[key]) != ours[key]:
            found.append(f"{name}: checkpoint {saved[key]!r}, config {ours[key]!r} (DeepSpeed cannot load the "
                         "optimizer state across these; resume with the checkpoint's value)")
    return found
