"""Resolve and check the requested lm-eval tasks before any model is loaded.

lm-eval resolves relative `data_files` against the working directory and fetches unknown metrics from the Hub
only after the model has run (failing offline). So each task's YAML is loaded here, its relative local paths
made absolute against the YAML's own folder (the shipped examples then work from any checkout and any
working directory), the files checked to exist and the metric and aggregation names checked against
lm-eval's registry. The resolved configs are handed to lm-eval as inline task dicts; nothing is rewritten.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pretrain.probes.lm_eval.settings import LmEvalError, LmEvalSettings

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager


def plan(settings: LmEvalSettings) -> tuple["TaskManager", list[Any]]:
    """(TaskManager, task specs for `simple_evaluate`): local tasks first, lm-eval's built-ins only if needed."""
    from lm_eval.tasks import TaskManager

    include = settings.tasks_dir()
    manager = TaskManager(include_path=str(include), include_defaults=False)  # skips indexing ~15k built-ins
    if any(name not in manager.task_index for name in settings.tasks):
        local = sorted(manager.all_tasks)
        manager = TaskManager(include_path=str(include), include_defaults=True)
        unknown = [name for name in settings.tasks if name not in manager.task_index]
        if unknown:
            raise LmEvalError(f"unknown task(s) {unknown}: neither in {include} (tasks there: {local}) nor among "
                              "lm-eval's built-in tasks")
    specs: list[Any] = []
    for name in settings.tasks:
        specs += _specs(manager, name)
    return manager, specs


def _specs(manager: "TaskManager", name: str) -> list[Any]:
    """A task becomes its resolved config; a tag expands to its tasks; a group is left to lm-eval by name."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index[name]
    if entry.kind is Kind.TAG:
        return [spec for member in sorted(entry.tags) for spec in _specs(manager, member)]
    if entry.kind is Kind.GROUP or entry.yaml_path is None:
        return [name]
    try:
        cfg = load_yaml(entry.yaml_path, resolve_func=True)
    except Exception as err:  # a YAML error, a missing include or a broken !function module
        raise LmEvalError(f"task {name}: cannot load {entry.yaml_path}: {err}") from None
    cfg = resolve_paths(cfg, Path(entry.yaml_path).parent, name)
    check_metrics(cfg, name)
    return [cfg]


def resolve_paths(cfg: dict[str, Any], base: Path, name: str) -> dict[str, Any]:
    """A copy of a task config whose relative local data paths point into `base`; missing files are errors.

    Rewritten: every `dataset_kwargs.data_files` entry, and `dataset_path` when it starts with ./ or ../ (a
    local dataset folder). Hub names such as `json` or `Rowan/hellaswag` are left alone.
    """
    cfg = copy.deepcopy(cfg)
    kwargs = cfg.get("dataset_kwargs") or {}
    if "data_files" in kwargs:
        kwargs["data_files"] = _map_files(kwargs["data_files"], lambda p: _local(p, base, name, "data_files"))
    path = cfg.get("dataset_path")
    if isinstance(path, str) and (path.startswith(("./", "../")) or Path(path).is_absolute()):
        cfg["dataset_path"] = str(_local(path, base, name, "dataset_path"))
    return cfg


def _map_files(files: Any, fn: Callable[[str], str]) -> Any:
    """data_files as datasets accepts it: a path, a list of paths, or split -> path(s)."""
    if isinstance(files, dict):
        return {split: _map_files(v, fn) for split, v in files.items()}
    if isinstance(files, (list, tuple)):
        return [fn(p) for p in files]
    return fn(files)


def _local(path: str, base: Path, name: str, key: str) -> str:
    resolved = (base / Path(path).expanduser()).resolve()
    if not any(ch in str(path) for ch in "*?[") and not resolved.exists():  # globs are datasets' to expand
        raise LmEvalError(f"task {name}: {key} {path!r} not found (looked for {resolved})")
    return str(resolved)


def check_metrics(cfg: dict[str, Any], name: str) -> None:
    """Refuse metric or aggregation names lm-eval does not know (it would go to the Hub after the model ran)."""
    import lm_eval.api.metrics  # noqa: F401  (fills the registries)
    from lm_eval.api.registry import AGGREGATION_REGISTRY, DEFAULT_METRIC_REGISTRY, METRIC_REGISTRY

    output_type = cfg.get("output_type", "generate_until")
    if output_type not in DEFAULT_METRIC_REGISTRY:
        raise LmEvalError(f"task {name}: output_type {output_type!r}; choose one of {sorted(DEFAULT_METRIC_REGISTRY)}")
    if cfg.get("process_results") is not None:  # the task computes its own metrics by name
        return
    for item in cfg.get("metric_list") or []:
        metric, aggregation = item.get("metric"), item.get("aggregation")
        if isinstance(metric, str) and not item.get("hf_evaluate") and metric not in METRIC_REGISTRY:
            raise LmEvalError(f"task {name}: unknown metric {metric!r}; lm-eval's metrics are "
                              f"{sorted(METRIC_REGISTRY)} (for {output_type}: {DEFAULT_METRIC_REGISTRY[output_type]})")
        if isinstance(aggregation, str) and aggregation not in AGGREGATION_REGISTRY:
            raise LmEvalError(f"task {name}: unknown aggregation {aggregation!r} for metric {metric!r}; "
                              f"choose one of {sorted(AGGREGATION_REGISTRY)}")
