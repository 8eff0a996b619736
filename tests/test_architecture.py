"""The structure docs/design.md draws: the layers between packages and inside pretrain/, no import cycles, a
trainer that only wires components, no `sys.path` edits, and test markers that say what a test costs. Read from
the source with `ast`, so an import hidden inside a function counts too (the pretrain/ layers: module level)."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("settings", "pretrain", "model", "storage", "growth", "regularizers", "launch", "experiments", "bench")
PACKAGE_LAYERS = {"settings": 0, "model": 1, "storage": 2, "regularizers": 2, "launch": 2, "pretrain": 3, "growth": 3,
                  "experiments": 4, "bench": 5}
"""docs/design.md, "Layers": a package imports only packages of a lower layer (and itself); pretrain and growth
share a layer and never import each other."""
PRETRAIN_LAYERS = (
    ("settings", ("pretrain", "pretrain.config", "pretrain.data", "pretrain.data.config", "pretrain.data.errors",
                  "pretrain.probes", "pretrain.probes.registry", "pretrain.probes.cli", "pretrain.probes.schedule",
                  "pretrain.probes.peeling", "pretrain.probes.peeling.errors", "pretrain.probes.peeling.plan",
                  "pretrain.probes.lm_eval", "pretrain.probes.jump", "pretrain.probes.trajectory", "*.settings")),
    ("mechanics", ()),  # everything not named in another layer
    ("components", ("pretrain.objective", "pretrain.phases", "pretrain.carry", "pretrain.rundir", "pretrain.startup",
                    "pretrain.callbacks")),
    ("probes", ("pretrain.probes.*",)),
    ("trainer", ("pretrain.trainer",)),
    ("entry points", ("pretrain.__main__", "pretrain.data.__main__")),
)
"""docs/design.md, "Inside pretrain/": the first pattern that names a module gives its layer (exact names before
the wildcards of the probes), and no module-level import goes from a layer to a higher one."""
TRAINER_MAX_LINES, TRAINER_MAX_IMPORTS = 250, 12


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


def module_level_imports(name: str) -> set[str]:
    """The repository modules `name` imports at module level (not in functions, not type-only)."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {m for m in found if m in MODULES and m != name}


def pretrain_layer(name: str) -> int:
    from fnmatch import fnmatchcase

    exact = [i for i, (_, names) in enumerate(PRETRAIN_LAYERS) if name in names]
    if exact:
        return exact[0]
    wild = [i for i, (_, names) in enumerate(PRETRAIN_LAYERS) for n in names if "*" in n and fnmatchcase(name, n)]
    return wild[0] if wild else 1


def test_the_import_graph_sees_function_level_imports():
    assert "pretrain.probes.peeling.job" in imported_modules("pretrain.probes.peeling.callback")  # inside run_inline
    assert "pretrain.trainer" not in imported_modules("pretrain.callbacks")  # type-only


def test_no_import_cycles():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert cycles == []


def test_growth_and_model_never_import_the_trainer_package():
    graph = import_graph()
    for lower in ("growth", "model", "regularizers"):
        offending = sorted((m, t) for m, t in graph.edges if m.split(".")[0] == lower and t.split(".")[0] == "pretrain")
        assert offending == [], f"{lower} imports pretrain: {offending}"


@pytest.mark.process
def test_importing_the_run_config_loads_no_torch_and_no_callback():
    code = "import json, sys, pretrain.config; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                                       text=True).stdout)
    assert "torch" not in loaded
    ours = [m for m in loaded if m in MODULES]
    assert "pretrain.probes.registry" in ours  # the registries, with every built-in job and monitor section
    callbacks = []
    for name in ours:
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b) in ("Callback", "CheckpointJob") for b in node.bases):
                callbacks.append(f"{name}.{node.name}")
    assert callbacks == []
    assert "pretrain.callbacks" not in ours


STARTS_PROCESSES = ("subprocess", "multiprocessing", "os.system", "os.spawn", "os.exec", "os.fork", "os.popen")


def test_growth_is_a_library_that_starts_no_process():
    """growth/ maps state dicts and writes grown folders; every run it leads to is started by experiments/ (its
    launcher), so growth neither starts processes nor imports the package above it."""
    found = []
    for name in (m for m in MODULES if m.split(".")[0] == "growth"):
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            spelled = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module or ""] if isinstance(node, ast.ImportFrom) else
                       [ast.unparse(node)] if isinstance(node, ast.Attribute) else [])
            found += [f"{name}:{node.lineno} {s}" for s in spelled if s.startswith(STARTS_PROCESSES)]
    assert found == []
    assert not any(t.startswith("experiments") for m, t in import_graph().edges if m.startswith("growth"))


def _tables_filled_by_functions(tree: ast.Module) -> list[str]:
    """Module-level dicts (`X = {}`, `X: dict[...] = {}`) that a function writes into (`X[key] = ...`): the shape
    of a hand-made registry."""
    tables = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
              for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)
              and isinstance(node.value, ast.Dict) and not node.value.keys}
    return sorted({f"{node.value.id}:{node.lineno}" for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                   for node in ast.walk(fn) if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
                   and isinstance(node.value, ast.Name) and node.value.id in tables})


def test_plug_ins_are_named_by_the_one_registry():
    """docs/design.md, "Registries": regularizers, growth operators, probes, peeling permutations and experiment
    kinds are each a settings.registry.Registry that a plug-in adds itself to; no module keeps a table of its own."""
    from experiments.__main__ import KINDS  # the entry point imports every kind's module
    from growth.operators.registry import OPERATORS
    from pretrain.probes import JOBS, MONITORS
    from pretrain.probes.peeling.plan import PERMUTATIONS
    from regularizers.registry import REGULARIZERS
    from settings.registry import Registry

    registries = {"KINDS": KINDS, "OPERATORS": OPERATORS, "JOBS": JOBS, "MONITORS": MONITORS,
                  "PERMUTATIONS": PERMUTATIONS, "REGULARIZERS": REGULARIZERS}
    assert [name for name, r in registries.items() if not isinstance(r, Registry) or len(r) < 2] == []
    hand_made = {name: found for name in MODULES
                 if (found := _tables_filled_by_functions(ast.parse(MODULES[name].read_text())))}
    assert hand_made == {}


def test_packages_import_only_lower_layers():
    upward = sorted((m, t) for m, t in import_graph().edges
                    if m.split(".")[0] != t.split(".")[0]
                    and PACKAGE_LAYERS[t.split(".")[0]] >= PACKAGE_LAYERS[m.split(".")[0]])
    assert upward == [], f"imports that do not go down the package layers: {upward}"


def test_inside_pretrain_no_module_level_import_goes_up_a_layer():
    assert pretrain_layer("pretrain.probes.jump.settings") == 0 and pretrain_layer("pretrain.probes.jump.callback") == 3
    assert pretrain_layer("pretrain.engine") == 1 and pretrain_layer("pretrain.trainer") == 4
    upward = sorted(f"{m} ({PRETRAIN_LAYERS[pretrain_layer(m)][0]}) -> {t} ({PRETRAIN_LAYERS[pretrain_layer(t)][0]})"
                    for m in MODULES if m.startswith("pretrain") for t in module_level_imports(m)
                    if t.startswith("pretrain") and pretrain_layer(t) > pretrain_layer(m))
    assert upward == []


def test_the_trainer_only_wires_components():
    """Every repository module the trainer's file names, in any import (type-only ones too)."""
    path = MODULES["pretrain.trainer"]
    named = {t for node in ast.walk(ast.parse(path.read_text()))
             for t in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                       if isinstance(node, ast.ImportFrom) and node.module else [])
             if t in MODULES}
    fan_out = {m for m in named if not any(o.startswith(m + ".") for o in named)}  # a package on the way is no extra
    assert len(path.read_text().splitlines()) <= TRAINER_MAX_LINES
    assert len(fan_out) <= TRAINER_MAX_IMPORTS, sorted(fan_out)


def _repository_files(suffixes: tuple[str, ...]) -> list[Path]:
    """The repository's own files with these suffixes (not the virtual environment, caches, builds or runs)."""
    return [path for path in sorted(ROOT.rglob("*")) if path.suffix in suffixes and path.is_file()
            and not any(part.startswith(".") or part in ("build", "runs") for part in path.relative_to(ROOT).parts)]


def test_nothing_edits_sys_path():
    """Scripts and tests import the installed packages; a `sys.path` edit hides a missing package or install."""
    edits = []
    for path in _repository_files((".py",)):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and ast.unparse(node).startswith("sys.path."):
                edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert edits == []


BY_PATH = ("spec_from_file_location", "runpy", "SourceFileLoader", "exec_module")


def test_no_module_is_imported_by_its_file_path():
    """Code imports modules by name; a file loaded by path is a package boundary gone around (and the no-sys.path
    rule with it)."""
    loads = []
    for path in _repository_files((".py",)):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else
                     [node.attr] if isinstance(node, ast.Attribute) else [])
            if any(n.split(".")[0] in BY_PATH or n in BY_PATH for n in names):
                loads.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert loads == []


OUTSIDE = re.compile(r"\.\./shared|\b(GPU|DEEPSPEED|METHODS|STYLE|DESIGN|EVAL)\.md\b")
"""The workplace's notes beside the repository; the repository stands on its own and cites its own docs/."""


def test_nothing_cites_a_file_outside_the_repository():
    cited = [f"{path.relative_to(ROOT)}:{i}" for path in _repository_files((".py", ".md", ".sh", ".yaml", ".toml"))
             for i, line in enumerate(path.read_text().splitlines(), start=1) if OUTSIDE.search(line)]
    assert cited == []


UNMARKED = """
import subprocess, sys
import pytest

def test_unmarked():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

@pytest.mark.process
def test_marked():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

@pytest.mark.process
def test_launch_marked_as_process_only():
    subprocess.run([sys.executable, "-m", "launch", "--help"], capture_output=True)

def test_starts_nothing():
    assert True
"""


@pytest.mark.process
def test_a_test_that_starts_a_process_must_say_so(pytester):
    pytester.makeconftest('pytest_plugins = ["process_markers"]')
    pytester.makepyfile(test_cost=UNMARKED)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*test_unmarked starts a process but is marked neither*",
                                 "*test_launch_marked_as_process_only launches ranks*not marked `distributed`*"])


FIRST_PLOT = """
def test_plots_on_a_fresh_machine():
    import matplotlib.font_manager
    assert matplotlib.font_manager.fontManager.ttflist
"""


@pytest.mark.process
def test_a_fresh_machines_font_cache_is_not_charged_to_a_test(pytester, tmp_path, monkeypatch):
    """matplotlib's first import with an empty cache runs `fc-list`; the plug-in warms it before recording, so
    the first test to plot on a fresh machine is not failed for starting a process."""
    cache = tmp_path / "mplconfig"
    cache.mkdir()
    monkeypatch.setenv("MPLCONFIGDIR", str(cache))
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))
    pytester.makeconftest('pytest_plugins = ["process_markers"]')
    pytester.makepyfile(test_fresh=FIRST_PLOT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert list(cache.glob("fontlist-*.json")), "matplotlib built no font cache here: the fresh case was not run"
    result.assert_outcomes(passed=1)
