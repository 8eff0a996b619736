"""One peeling job: a checkpoint on disk -> bounds.json + bounds.png (+ summary.png) in the job's folder.

The checkpoint is only read. Calibration windows are the first `calib_windows` validation windows of the
run's data (its config.yaml), or of a config given explicitly (a weights folder has none: the embedded
default then).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model import Llama, ModelConfig
from pretrain.config import Config, load_config
from pretrain.data import prepare_data
from pretrain.probes.location import locate
from pretrain.probes.peeling.bounds import Bounds, compute_bounds
from pretrain.probes.peeling.errors import PeelingError
from pretrain.probes.peeling.report import BOUNDS_JSON, write_outputs
from pretrain.probes.peeling.settings import PeelingSettings, check_settings
from storage.io import check_output_folder
from storage.tokenizer_files import find_tokenizer
from storage.weights import load_weights

log = logging.getLogger(__name__)


def run_config(ckpt: Path, config: Config | str | Path | None) -> Config:
    """The config that names the calibration data: given, the checkpoint's own, or the embedded default.

    A checkpoint's own tokenizer (tokenizer.model, or an HF tokenizer.json) is used when the config names
    none, so the calibration windows hold the token ids the model was trained on wherever the job runs (no
    retraining in another cache).
    """
    if not isinstance(config, Config):
        if config is None and (ckpt / "config.yaml").is_file():
            config = ckpt / "config.yaml"
        config = load_config(config)
    if config.data.tokenizer is None and (own := find_tokenizer(ckpt)) is not None:
        data = dataclasses.replace(config.data, tokenizer=str(own.resolve()))
        config = dataclasses.replace(config, data=data)
    return config


def calibration_windows(cfg: Config, model_cfg: ModelConfig, n: int) -> torch.Tensor:
    """The first n validation windows [n, seq_len + 1]: fixed, so bounds of different steps are comparable."""
    if cfg.data.seq_len > model_cfg.max_seq_len:
        raise PeelingError(f"data.seq_len={cfg.data.seq_len} exceeds the checkpoint's "
                           f"model.max_seq_len={model_cfg.max_seq_len}")
    val = prepare_data(cfg.data, model_cfg.vocab_size, seed=cfg.run.seed).val
    if len(val) < n:
        log.warning("only %d validation windows; using all of them instead of calib_windows + holdout_windows=%d",
                    len(val), n)
    return torch.from_numpy(np.asarray(val[:n], dtype=np.int64))


def run_job(checkpoint: str | Path, settings: PeelingSettings, config: Config | str | Path | None = None,
            out: str | Path | None = None) -> tuple[Bounds, Path]:
    """Compute and write the bounds of one checkpoint; returns them and the output folder. A given `out` must be
    new, empty or an earlier peeling output (checked first), and gets no summary of other steps."""
    if out is not None:
        check_output_folder(out, BOUNDS_JSON, ours=("job.log",))  # a detached job's log comes first
    target = locate(checkpoint, "peeling")
    ckpt, step = target.checkpoint, target.step
    summary = out is None
    out = Path(out) if out is not None else target.out
    model_cfg, state = load_weights(ckpt)
    check_settings(settings, model_cfg.n_layers)
    cfg = run_config(ckpt, config)
    device = torch.device(settings.device)
    model = Llama(model_cfg)
    model.load_state_dict(state)
    model.to(device).eval()
    windows = calibration_windows(cfg, model_cfg, settings.calib_windows + settings.holdout_windows).to(device)
    windows, holdout = windows[:settings.calib_windows], windows[settings.calib_windows:]
    if settings.holdout_windows and not len(holdout):
        log.warning("no validation window is left for held-out scoring: the verdicts are in-sample")
    log.info("peeling %s: %d calibration and %d held-out windows of %d tokens", ckpt, len(windows), len(holdout),
             windows.shape[1] - 1)

    def progress(work, total):
        return tqdm(work, total=total, desc=f"peeling {ckpt.name}", unit="row", disable=None)

    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads or threads)
    try:
        bounds = compute_bounds(model, windows, settings, progress, holdout)
    finally:  # inline in a trainer, the process's setting is the trainer's
        torch.set_num_threads(threads)
    bounds.meta = {"checkpoint": str(ckpt), "step": step, "calib_windows": len(windows),
                   "holdout_windows": len(holdout),
                   "seq_len": windows.shape[1] - 1, "data_source": cfg.data.source}
    write_outputs(bounds, out, summary)
    return bounds, out
