"""Can this config continue that checkpoint? Checked from the manifest, before DeepSpeed reads anything."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pretrain.config import Config, get_dotted
from pretrain.data.tokenizer import tokenizer_fingerprint

SAMPLE_SEQUENCE = ("data.source", "data.sources", "data.text_field", "data.hf_split", "data.seq_len",
                   "data.val_fraction")
"""Settings that decide which windows there are and in which order they come; with the global batch they decide
what each step trains on, so a resume that changes one continues on another sample sequence."""
GLOBAL_BATCH = "global batch (train.micro_batch_size x train.grad_accum x ranks)"


def run_meta(cfg: Config, tokenizer_path: Path, world_size: int | None) -> dict[str, Any]:
    """What a resume must agree with; stored in every checkpoint's manifest. `world_size` None (a check made
    before the ranks exist) leaves the global batch out: another world size is fine when the batch is kept."""
    sequence = {key: get_dotted(cfg, key) for key in SAMPLE_SEQUENCE}
    sequence["data.sources"] = [dataclasses.asdict(s) for s in cfg.data.sources]  # JSON for the manifest
    if world_size is not None:
        sequence[GLOBAL_BATCH] = cfg.train.micro_batch_size * cfg.train.grad_accum * world_size
        if cfg.data.streaming:  # each rank streams its own part of the source
            sequence["ranks (data.streaming splits the source by rank)"] = world_size
    return {"model": dataclasses.asdict(cfg.model), "zero_stage": cfg.deepspeed.zero_stage,
            "precision": cfg.train.precision, "optimizer": cfg.train.optimizer, "world_size": world_size,
            "tokenizer_sha256": tokenizer_fingerprint(tokenizer_path),
            "sample_sequence": sequence}


def problems(saved: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Every difference that makes resuming wrong or impossible (a different world size is not one: the
    trainer converts the checkpoint to DeepSpeed's universal form)."""
    found = [f"model.{k}: checkpoint {v!r}, config {ours['model'].get(k)!r}"
             for k, v in saved.get("model", {}).items() if ours["model"].get(k) != v]
    if saved.get("tokenizer_sha256", ours["tokenizer_sha256"]) != ours["tokenizer_sha256"]:
        found.append("the tokenizer differs from the one the checkpoint was trained with (data.tokenizer, "
                     "data.source or model.vocab_size changed)")
    for key, name in (("zero_stage", "deepspeed.zero_stage"), ("precision", "train.precision"),
                      ("optimizer", "train.optimizer")):
        if saved.get(key, ours[key]) != ours[key]:
            found.append(f"{name}: checkpoint {saved[key]!r}, config {ours[key]!r} (DeepSpeed cannot load the "
                         "optimizer state across these; resume with the checkpoint's value)")
    changed = [f"{k}: checkpoint {v!r}, config {ours['sample_sequence'][k]!r}"
               for k, v in saved.get("sample_sequence", {}).items()
               if k in ours["sample_sequence"] and ours["sample_sequence"][k] != v]
    if changed:
        found.append("; ".join(changed) + " (the run would continue on another sample sequence; resume with the "
                     "checkpoint's values, or start a new run: another run.name)")
    return found

