"""One lm_eval job: a checkpoint on disk -> lm-evaluation-harness scores in `jobs/lm_eval/step_<N>/`.

Order matters: the tasks are resolved and checked first (a typo fails in seconds, before any weights are read),
then the checkpoint is exported to a temporary Hugging Face folder (the same conversion users export with),
loaded as a transformers model + tokenizer, and evaluated in memory by `lm_eval.simple_evaluate`. The
checkpoint is only read.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pretrain.probes.lm_eval import results as res
from pretrain.probes.lm_eval.settings import OFFLINE_ENV, LmEvalError, LmEvalSettings, check_settings
from pretrain.probes.lm_eval.tasks import plan
from pretrain.probes.location import locate
from storage.tokenizer_files import find_tokenizer, tokenizer_files
from storage.weights import load_weights

log = logging.getLogger(__name__)


def checkpoint_tokens(ckpt: Path) -> int | None:
    """Tokens seen at a training checkpoint (its client state; memory-mapped, so no weights are read)."""
    states = ckpt / "mp_rank_00_model_states.pt"
    if not states.is_file():
        return None
    return torch.load(states, map_location="cpu", mmap=True, weights_only=True).get("tokens")


def load_hf_model(ckpt: Path, device: str, workdir: Path) -> tuple[Any, Any]:
    """(LlamaForCausalLM, its tokenizer) of a checkpoint, through a Hugging Face folder in `workdir`."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from model.hf import save_hf_folder

    tokenizer = find_tokenizer(ckpt)
    if tokenizer is None:
        raise LmEvalError(f"{ckpt} has no tokenizer.model (nor an HF tokenizer.json): lm-eval needs the tokenizer "
                          "the model was trained with")
    cfg, state = load_weights(ckpt)
    folder = save_hf_folder(state, cfg, workdir / "hf", tokenizer_files=tokenizer_files(tokenizer))
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    return model, AutoTokenizer.from_pretrained(folder)


@contextlib.contextmanager
def _isolated(threads: int) -> Iterator[None]:
    """Run inside a trainer (inline) without leaving a trace: lm-eval seeds every global RNG, and the job may
    use another thread count; both are restored after."""
    cuda = torch.cuda.is_available()
    states = random.getstate(), np.random.get_state(), torch.get_rng_state(), torch.get_num_threads()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    torch.set_num_threads(threads or states[3])
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        torch.set_num_threads(states[3])
        if cuda:
            torch.cuda.set_rng_state_all(cuda_states)


def run_job(checkpoint: str | Path, settings: LmEvalSettings) -> tuple[dict[str, Any], Path]:
    """Evaluate one checkpoint; returns (the results.json payload, its path)."""
    start = time.perf_counter()
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    check_settings(settings)
    target = locate(checkpoint, "lm_eval")
    manager, specs = plan(settings)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    with _isolated(settings.threads), tempfile.TemporaryDirectory(prefix="lm_eval-") as work:
        model, tokenizer = load_hf_model(target.checkpoint, settings.device, Path(work))
        loaded = time.perf_counter()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
        output = lm_eval.simple_evaluate(model=lm, tasks=specs, task_manager=manager, limit=settings.limit,
                                         log_samples=False)
    done = time.perf_counter()
    payload = {
        "checkpoint": str(target.checkpoint), "step": target.step, "tokens": checkpoint_tokens(target.checkpoint),
        "settings": asdict(settings), "scores": res.scores(output["results"]), "results": output["results"],
        "n_samples": output.get("n-samples"), "versions": output.get("versions"),
        "lm_eval_version": lm_eval.__version__,
        "seconds": {"load": loaded - start, "evaluate": done - loaded, "total": done - start},
    }
    path = res.write_results(target.out, payload)
    if target.run_dir is not None and (target.run_dir / "tb").is_dir():
        res.to_tensorboard(target.run_dir / "tb" / "lm_eval", target.step, payload["scores"])
    log.info("lm_eval %s: %s (%.1f s)", target.checkpoint, payload["scores"], done - start)
    return payload, path
