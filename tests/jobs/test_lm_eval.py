"""The lm_eval job through the real lm-evaluation-harness on the shipped local tasks (configs/eval_tasks):
scores of a model trained on the answers vs a random one, where results land, up-front errors, the schedule.

Models are tiny (dim 64, vocab 512) and trained in-process with plain AdamW; checkpoints are weights folders
placed where a run keeps its checkpoints (`<run>/checkpoints/step_<N>`), so the run-level outputs are exercised.
"""
from __future__ import annotations

import inspect
import json
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install 'growlm[eval]'")

from model import Llama, ModelConfig  # noqa: E402
from pretrain.data.tokenizer import EOS_ID, train_tokenizer  # noqa: E402
from pretrain.probes.lm_eval import run as run_module  # noqa: E402
from pretrain.probes.lm_eval.__main__ import main  # noqa: E402
from pretrain.probes.lm_eval.callback import LmEvalJob  # noqa: E402
from pretrain.probes.lm_eval.results import write_results  # noqa: E402
from pretrain.probes.lm_eval.run import run_job  # noqa: E402
from pretrain.probes.lm_eval.settings import SHIPPED_TASKS, LmEvalConfig, LmEvalError, LmEvalSettings  # noqa: E402
from storage.retention import being_read  # noqa: E402
from storage.weights import save_weights  # noqa: E402

CFG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=512, max_seq_len=64)
THREADS = 1  # a model this small gains nothing from more, and on a busy machine extra threads cost 10x
MC = "growlm_capitals"
PPL = "growlm_paragraphs"


def capital_facts() -> list[str]:
    """The right answers of the shipped multiple-choice task, as sentences."""
    rows = [json.loads(line) for line in (SHIPPED_TASKS / "capitals.jsonl").read_text().splitlines()]
    return [f"The capital of {r['country']} is {r['choices'][r['label']]}." for r in rows]


@pytest.fixture(autouse=True)
def hf_home(tmp_path_factory, monkeypatch):
    """Keep datasets' caches out of the user's home (the job leaves HF_HOME alone: users' caches live there)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    texts = [inspect.getsource(__import__("argparse")), "\n".join(capital_facts()),
             (SHIPPED_TASKS / "paragraphs.jsonl").read_text()]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer.model", CFG.vocab_size, "bpe")


@pytest.fixture(scope="module")
def models(tokenizer) -> dict[str, dict[str, torch.Tensor]]:
    """A random-init model, and the same init trained on the answers' sentences."""
    torch.manual_seed(0)
    model = Llama(CFG)
    random_state = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        loss = train_on_answers(model, tokenizer, steps=200)
    finally:
        torch.set_num_threads(threads)
    assert loss < 0.5, f"the answers were not learned (loss {loss:.3f})"
    return {"random": random_state, "trained": model.state_dict()}


def train_on_answers(model: Llama, tokenizer: Path, steps: int) -> float:
    """Full-batch AdamW on "The capital of X is Y." for every item; returns the last loss."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    docs = [sp.encode(f) + [EOS_ID] for f in capital_facts()]
    width = max(map(len, docs))
    tokens = torch.full((len(docs), width), EOS_ID)
    targets = torch.full((len(docs), width - 1), -100)  # padding is not trained on
    for i, doc in enumerate(docs):
        tokens[i, :len(doc)] = torch.tensor(doc)
        targets[i, :len(doc) - 1] = torch.tensor(doc[1:])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = F.cross_entropy(model(tokens[:, :-1]).logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def checkpoint(run_dir: Path, step: int, state: dict, tokenizer: Path, tokens: int | None = None) -> Path:
    """A weights folder where a run keeps checkpoint step_<step>, with the tokenizer (and client state)."""
    ckpt = run_dir / "checkpoints" / f"step_{step}"
    save_weights(ckpt, CFG, state)
    shutil.copyfile(tokenizer, ckpt / "tokenizer.model")
    if tokens is not None:
        torch.save({"step": step, "tokens": tokens}, ckpt / "mp_rank_00_model_states.pt")
    return ckpt


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, models, tokenizer):
    """One run with a random checkpoint at step 0 and the trained one at step 200, both evaluated inline."""
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "tb").mkdir()
    payloads = {}
    for name, step in (("random", 0), ("trained", 200)):
        ckpt = checkpoint(run_dir, step, models[name], tokenizer, tokens=step * 1024)
        rng, start = torch.get_rng_state(), time.perf_counter()
        payloads[name], _ = run_job(ckpt, LmEvalSettings(threads=THREADS))
        print(f"{name}: {payloads[name]['scores']} in {time.perf_counter() - start:.1f} s")
        assert torch.equal(torch.get_rng_state(), rng), "lm-eval's seeding leaked into the caller (inline mode)"
    return run_dir, payloads


@pytest.mark.process
def test_trained_model_beats_chance_and_random_model_sits_at_chance(evaluated):
    """64 four-way items, so chance is 0.25. The items come in groups of 4 countries sharing 4 cities with the
    right one at each position once: any preference that ignores the question scores exactly 0.25, and a
    random-init model's preferences barely depend on it. Even treating its picks as independent coin flips,
    acc ~ Binomial(64, 1/4) / 64 (sd 0.054): the band 0.25 ± 0.16 (3 sd) fails a true chance-level model with
    probability < 0.5%, and acc >= 0.6 has probability < 1e-8 at chance (the trained model scores ~1.0)."""
    _, payloads = evaluated
    random_scores, trained_scores = payloads["random"]["scores"], payloads["trained"]["scores"]
    for metric in ("acc", "acc_norm"):
        assert abs(random_scores[f"eval/{MC}/{metric}"] - 0.25) <= 0.16, random_scores
        assert trained_scores[f"eval/{MC}/{metric}"] >= 0.6, trained_scores
    for scores in (random_scores, trained_scores):  # perplexity: computed by lm-eval, consistent with itself
        bpb = scores[f"eval/{PPL}/bits_per_byte"]
        assert 0 < bpb < 12 and scores[f"eval/{PPL}/byte_perplexity"] == pytest.approx(2 ** bpb, rel=1e-6)
        assert scores[f"eval/{PPL}/word_perplexity"] > scores[f"eval/{PPL}/byte_perplexity"]


@pytest.mark.process
def test_results_json_and_run_metrics(evaluated):
    run_dir, payloads = evaluated
    jobs = run_dir / "jobs" / "lm_eval"
    for name, step in (("random", 0), ("trained", 200)):
        out = jobs / f"step_{step}"
        assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # no temp file left behind
        data = json.loads((out / "results.json").read_text())
        assert data["step"] == step and data["tokens"] == step * 1024
        assert data["scores"] == payloads[name]["scores"] and set(data["results"]) == {MC, PPL}
        assert data["n_samples"][MC]["effective"] == 64 and data["seconds"]["total"] > 0
    records = [json.loads(line) for line in (jobs / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 200]
    assert records[1] == {"step": 200, "tokens": 200 * 1024, **payloads["trained"]["scores"]}
    assert list((run_dir / "tb" / "lm_eval").glob("events.out.tfevents.*"))


def test_results_write_is_atomic_and_merges_tasks(tmp_path, monkeypatch):
    out = tmp_path / "step_1"
    write_results(out, {"step": 1, "tokens": 8, "scores": {"eval/a/acc": 0.5}, "results": {"a": {"acc,none": 0.5}}})
    write_results(out, {"step": 1, "tokens": 8, "scores": {"eval/b/acc": 0.7}, "results": {"b": {"acc,none": 0.7}}})
    data = json.loads((out / "results.json").read_text())
    assert data["scores"] == {"eval/a/acc": 0.5, "eval/b/acc": 0.7} and set(data["results"]) == {"a", "b"}
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_results(out, {"step": 1, "tokens": 8, "scores": {"eval/a/acc": 0.0}})
    assert json.loads((out / "results.json").read_text()) == data
    assert [p.name for p in out.iterdir()] == ["results.json"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "tokens": 8, **data["scores"]}


def _task_dir(tmp_path: Path, yaml_edit: tuple[str, str]) -> Path:
    """A copy of the shipped multiple-choice task with one YAML edit."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copyfile(SHIPPED_TASKS / "capitals.jsonl", tasks / "capitals.jsonl")
    text = (SHIPPED_TASKS / "capitals.yaml").read_text()
    assert yaml_edit[0] in text
    (tasks / "capitals.yaml").write_text(text.replace(*yaml_edit))
    return tasks


@pytest.mark.parametrize("edit, message", [
    (("metric: acc_norm", "metric: accuracy"), "unknown metric 'accuracy'"),
    (("aggregation: mean", "aggregation: average"), "unknown aggregation 'average'"),
    (("test: capitals.jsonl", "test: missing.jsonl"), "data_files 'missing.jsonl' not found"),
])
def test_bad_task_is_refused_before_the_model_runs(tmp_path, models, tokenizer, monkeypatch, edit, message):
    ckpt = checkpoint(tmp_path / "run", 10, models["random"], tokenizer)
    monkeypatch.setattr(run_module, "load_hf_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(LmEvalError, match=message):
        run_job(ckpt, LmEvalSettings(tasks=[MC], include_path=str(_task_dir(tmp_path, edit))))
    assert not (tmp_path / "run" / "jobs").exists()


def test_cli_names_an_unknown_task(tmp_path, models, tokenizer, capsys):
    ckpt = checkpoint(tmp_path / "run", 10, models["random"], tokenizer)
    assert main(["--checkpoint", str(ckpt), "--tasks", f"{MC},no_such_task"]) == 2
    err = capsys.readouterr().err
    assert "unknown task(s) ['no_such_task']" in err and MC in err


def test_config_refuses_bad_settings():
    for kwargs, message in (({"mode": "thread"}, "mode='thread'"),
                            ({"every": 1, "limit": 0}, "limit=0"), ({"every": 1, "tasks": []}, "tasks=")):
        with pytest.raises(ValueError, match=message):
            LmEvalConfig(**kwargs).check()


def fake_trainer(run_dir: Path, step: int) -> SimpleNamespace:
    cfg = SimpleNamespace(checkpoint=SimpleNamespace(every=10), train=SimpleNamespace(steps=20))
    return SimpleNamespace(is_main=True, step=step, cfg=cfg, run_dir=run_dir)


@pytest.mark.process
def test_schedule_runs_detached_jobs_and_reports_failures(tmp_path, models, tokenizer, caplog):
    run_dir = tmp_path / "run"
    good = checkpoint(run_dir, 10, models["random"], tokenizer)
    bad = checkpoint(run_dir, 20, models["random"], tokenizer)
    (bad / "tokenizer.model").unlink()
    job = LmEvalJob(LmEvalConfig(every=1, limit=8, threads=THREADS))
    job.on_train_start(fake_trainer(run_dir, 0))
    for ckpt, step in ((good, 10), (bad, 20)):
        job.on_checkpoint_saved(fake_trainer(run_dir, step), ckpt)  # returns at once
    assert being_read(good)  # while its job runs, pruning leaves the checkpoint alone
    for proc, _ in job.running:
        proc.wait(timeout=120)
    assert not being_read(good) and not being_read(bad)
    with caplog.at_level(logging.ERROR, logger="growlm"):
        job.on_train_end(fake_trainer(run_dir, 20), {})
    assert "exited with 2" in caplog.text and "step_20/job.log" in caplog.text
    assert "has no tokenizer.model" in (run_dir / "jobs/lm_eval/step_20/job.log").read_text()
    data = json.loads((run_dir / "jobs/lm_eval/step_10/results.json").read_text())
    assert data["n_samples"][MC]["effective"] == 8 and f"eval/{MC}/acc" in data["scores"]
    records = (run_dir / "jobs/lm_eval/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == [10]


def test_schedule_never_breaks_training(tmp_path, caplog):
    """A bad task list switches the job off at the start; an inline job that fails only logs."""
    tasks = _task_dir(tmp_path, ("metric: acc_norm", "metric: accuracy"))
    with caplog.at_level(logging.ERROR, logger="growlm"):
        job = LmEvalJob(LmEvalConfig(every=1, tasks=[MC], include_path=str(tasks)))
        job.on_train_start(fake_trainer(tmp_path, 0))
        assert not job.enabled and "unknown metric 'accuracy'" in caplog.text
        inline = LmEvalJob(LmEvalConfig(every=1, mode="inline"))
        inline.on_checkpoint_saved(fake_trainer(tmp_path, 10), tmp_path / "checkpoints" / "step_10")
    assert "lm_eval job on" in caplog.text and "does not exist" in caplog.text
