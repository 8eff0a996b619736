"""The package structure docs/design.md draws: the run config is a leaf, no import cycles, growth and model never
import the trainer. Read from the source with `ast`, so an import hidden inside a function counts too."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pretrain", "model", "growth", "regularizers", "launch")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:` (imports for annotations, never executed)."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}


def imported_modules(name: str) -> set[str]:
    """Every repository module `name` imports anywhere in its file (module or function level, not type-only),
    with the packages that import runs on the way (`a.b.c` runs `a` and `a.b`), except its own parents."""
    tree = ast.parse(MODULES[name].read_text())
    skip = _type_only(tree)
    own_parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in found if m in MODULES and m != name} - own_parents


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    graph.add_edges_from((m, t) for m in MODULES for t in imported_modules(m))
    return graph


def test_the_import_graph_sees_function_level_imports():
    assert "pretrain.jobs.peeling.job" in imported_modules("pretrain.jobs.peeling.callback")  # inside run_inline
    assert "pretrain.trainer" not in imported_modules("pretrain.callbacks")  # type-only


def test_no_import_cycles():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert cycles == []


def test_growth_and_model_never_import_the_trainer_package():
    graph = import_graph()
    for lower in ("growth", "model", "regularizers"):
        offending = sorted((m, t) for m, t in graph.edges if m.split(".")[0] == lower and t.split(".")[0] == "pretrain")
        assert offending == [], f"{lower} imports pretrain: {offending}"


def test_importing_the_run_config_loads_no_torch_and_no_callback():
    code = "import json, sys, pretrain.config; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                                       text=True).stdout)
    assert "torch" not in loaded
    ours = [m for m in loaded if m in MODULES]
    assert "pretrain.plugins" in ours  # the registries, with every built-in job and monitor section
    callbacks = []
    for name in ours:
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b) in ("Callback", "CheckpointJob") for b in node.bases):
                callbacks.append(f"{name}.{node.name}")
    assert callbacks == []
    assert "pretrain.callbacks" not in ours
