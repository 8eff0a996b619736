"""Jobs and monitors as plug-ins: a config section per registered one, typed and checked like a built-in; one
file of a user's own (tests/toy_plugins.py) is scheduled in a real run and its state survives a resume."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from pretrain.config import ConfigError, load_config
from pretrain.probes.cli import add_arguments, from_args, to_argv
from pretrain.probes.lm_eval.settings import LmEvalConfig, LmEvalSettings
from pretrain.probes.peeling.settings import PeelingConfig, PeelingSettings
from pretrain.probes.registry import JOBS, register_job, register_monitor

from launching import launch, metrics

TOY = ["imports=[toy_plugins]"]


def test_an_imported_plugin_gets_a_typed_config_section():
    cfg = load_config(None, [*TOY, "jobs.toy.every=2", "jobs.toy.label=mine", "monitors.counting.every=1"])
    assert type(cfg.jobs.toy).__name__ == "ToyJobSettings"
    assert (cfg.jobs.toy.every, cfg.jobs.toy.mode, cfg.jobs.toy.label) == (2, "process", "mine")
    assert cfg.monitors.counting.every == 1 and cfg.jobs.peeling.every == 0  # the built-ins stay
    with pytest.raises(ConfigError, match=r"'jobs.toy.lable'.*\['every', 'mode', 'label'\]"):
        load_config(None, [*TOY, "jobs.toy.lable=x"])
    with pytest.raises(ConfigError, match=r"config key 'jobs.toy.every'"):
        load_config(None, [*TOY, "jobs.toy.every=often"])


def test_a_section_nobody_registered_is_refused_naming_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'jobs.nobody'.*\['lm_eval', 'peeling'"):
        load_config(None, ["jobs.nobody.every=1"])
    with pytest.raises(ConfigError, match="imports: cannot import 'no_such_plugins'"):
        load_config(None, ["imports=[no_such_plugins]"])


@pytest.mark.parametrize("override, message", [
    ("jobs.lm_eval.every=-1", "jobs.lm_eval.every=-1 must be >= 0"),
    ("jobs.peeling.mode=thread", "jobs.peeling.mode='thread' is not valid; choose one of"),
    ("jobs.peeling.steps=0", "jobs.peeling.steps=0 must be > 0"),
    ("monitors.jump.form=sine", "monitors.jump.form='sine' is not valid"),
    ("monitors.jump.batches=0", "monitors.jump.batches=0 must be > 0"),
    ("monitors.trajectory.granularity=block", "monitors.trajectory.granularity='block' is not valid"),
])
def test_each_plugin_checks_its_settings_and_the_error_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="jobs plug-in 'peeling' is already registered"):
        register_job("peeling", LmEvalConfig, "elsewhere:Job")
    with pytest.raises(TypeError, match="need an `every` field"):
        register_monitor("no_schedule", PeelingSettings, "elsewhere:Monitor")
    peeling = JOBS["peeling"]
    register_job("peeling", PeelingConfig, peeling.callback, peeling.doc)  # the same again: a re-import


@pytest.mark.parametrize("settings", [
    PeelingSettings(layers=[2, 3], offsets=[1], variants=["binary"], solver="lstsq", lr=0.5, holdout_windows=0),
    LmEvalSettings(tasks=["a", "b"], include_path="/tmp/tasks", limit=7, batch_size=3, device="cuda:1", threads=2),
    LmEvalSettings(),
])
def test_a_jobs_cli_reads_back_exactly_the_settings_the_scheduler_passes(settings):
    parser = argparse.ArgumentParser()
    add_arguments(parser, type(settings))
    assert from_args(type(settings), parser.parse_args(to_argv(settings))) == settings
    assert not {"--every", "--mode"} & set(to_argv(PeelingConfig(every=3)))  # the schedule stays in the config
    assert dataclasses.asdict(PeelingConfig(every=3)).keys() >= {"every", "mode", "layers"}


@pytest.mark.process
def test_a_plugin_from_one_file_is_scheduled_and_its_state_survives_a_resume(runs_root):
    run = runs_root / "plugins"
    common = [*TOY, "checkpoint.every=2", "eval.every=0", "monitors.jump.every=0", "jobs.toy.every=1",
              "jobs.toy.mode=inline", "jobs.toy.label=mine", "monitors.counting.every=2"]
    launch(run, ["train.steps=4", *common], ranks=None)
    launch(run, ["train.steps=6", *common], ranks=None)  # resumes from step 4
    seen = {json.loads(p.read_text())["checkpoint"]: json.loads(p.read_text())["label"]
            for p in sorted((run / "jobs" / "toy").glob("*/seen.json"))}
    assert seen == {"step_2": "mine", "step_4": "mine", "step_6": "mine"}
    counts = {r["step"]: r["toy/steps_seen"] for r in metrics(run) if "toy/steps_seen" in r}
    # one call per step from step 0 (the initial evaluation); after the resume the count goes on from the
    # step-4 checkpoint's 5 (a fresh monitor would say 2 at step 6)
    assert counts == {0: 1, 2: 3, 4: 5, 6: 7}
