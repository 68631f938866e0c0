"""docs/CONTRACTS.md, enforced: the import rules between layers, no import circles, and the
test stand-in scorer keeping SQSDScorer's signatures.

The import graph is read with ``ast`` from the source (every import statement, including
those inside functions: a lazy import is still a dependency), so a rule broken anywhere
fails here, naming the file and the import.
"""
from __future__ import annotations

import ast
import inspect
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sqsd_fast"

# layer -> the layers it may import (docs/CONTRACTS.md, "Imports go one way"). A layer is a
# subpackage or a top-level module of sqsd_fast, except in the application (``app``), where
# each module is its own layer, so the order inside it (protocol < pipeline < commands < cli)
# is kept too; "__init__" is the package's lazy API.
BELOW_APP = {"ops", "anchors", "choices", "data", "io", "models", "engine", "scoring", "influence", "options",
             "training", "evaluation"}
APP_BASE = {"app", "app.run_protocol", "app.distributed", "app.subsets", "app.filtering"}
ALLOWED = {
    "ops": set(),
    "anchors": set(),
    "choices": {"ops"},
    "data": {"choices"},
    "io": {"data"},
    "models": {"choices", "data", "io"},
    "engine": {"ops", "choices", "data", "models"},
    "scoring": {"engine", "choices", "data", "io", "models"},
    "options": {"anchors", "choices", "data", "io", "models"},
    "influence": {"engine", "choices", "data", "io", "models", "options"},
    "training": {"influence", "engine", "choices", "data", "io", "models", "options"},
    "evaluation": {"choices", "data", "io", "models", "options"},
    "app": set(),
    "app.run_protocol": {"options"},
    "app.distributed": set(),
    "app.subsets": {"data", "io"},
    "app.filtering": {"choices", "data", "io", "app.subsets"},
    "app.pipeline": BELOW_APP | APP_BASE,
    "app.commands": BELOW_APP | APP_BASE | {"app.pipeline"},
    "app.cli": BELOW_APP | APP_BASE | {"app.pipeline", "app.commands"},
    "__main__": {"app.cli"},
    "__init__": {"ops", "scoring", "influence", "training", "app.pipeline", "app.commands", "_moved", "_openmp"},
    "_openmp": set(),   # sets the environment before torch loads; imports nothing of ours
    # the table of old module paths names every layer (as strings) and imports on demand
    "_moved": BELOW_APP | APP_BASE | {"app.pipeline", "app.commands", "app.cli", "__init__"},
    "testing": BELOW_APP | APP_BASE | {"app.pipeline", "app.commands", "app.cli"},
    "demo": BELOW_APP | APP_BASE | {"app.pipeline", "app.commands", "app.cli", "testing"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


# A string naming a module of the package, as importlib.import_module takes it, or a function
# in one as "module:function" (the command table, sqsd_fast/app/commands.py).
MODULE_STRING = re.compile(r"sqsd_fast(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?")


def _imports(path: Path, module: str | None = None):
    """(imported name, line) of every sqsd_fast import in ``path`` (the module ``module``):
    import statements, relative ones resolved, and strings naming a module of the package
    (what ``importlib.import_module`` is given)."""
    if module is None:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
            names = [node.value.replace(":", ".")]
        else:
            continue
        for name in names:
            if name == "sqsd_fast" or name.startswith("sqsd_fast."):
                yield name, node.lineno


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return ".".join(parts[1:3]) if parts[1] == "app" else parts[1]


def _resolve(name: str, modules) -> str:
    """The module an imported name lives in (``a.b.func`` -> ``a.b``)."""
    while name not in modules:
        name = name.rpartition(".")[0]
    return name


def test_every_module_belongs_to_a_layer_of_the_table():
    layers = {_layer(m) for m in _modules()}
    assert layers <= set(ALLOWED), f"layers missing from the table (and docs/CONTRACTS.md): {layers - set(ALLOWED)}"


def _broken_imports(modules: dict[str, Path]) -> list[str]:
    broken = []
    for module, path in modules.items():
        source = _layer(module)
        for name, line in _imports(path, module):
            if name == "sqsd_fast.__version__":
                continue        # metadata, importable from anywhere
            # The compiled extension sqsd_fast._C is the ops layer's native half.
            target = "ops" if name.startswith("sqsd_fast._C") else _layer(_resolve(name, modules))
            if target != source and target not in ALLOWED[source]:
                where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path.name
                broken.append(f"{where}:{line} ({source}) imports {name} ({target})")
    return broken


def test_imports_go_one_way():
    broken = _broken_imports(_modules())
    assert not broken, "imports that break docs/CONTRACTS.md:\n" + "\n".join(broken)


def test_relative_and_string_imports_are_read_too(tmp_path):
    """A planted relative import and a planted import_module string, each breaking the
    table (the ops layer importing the pipeline and the CLI), are both caught."""
    planted = tmp_path / "planted.py"
    planted.write_text("import importlib\nfrom ..app.pipeline import run\n"
                       "CLI = importlib.import_module('sqsd_fast.app.cli')\n"
                       "RUN = 'sqsd_fast.app.commands:run_command'\n")
    modules = {**_modules(), "sqsd_fast.ops.planted": planted}
    broken = [b for b in _broken_imports(modules) if b.startswith("planted.py")]
    assert any("imports sqsd_fast.app.pipeline.run (app.pipeline)" in b for b in broken), broken
    assert any("imports sqsd_fast.app.cli (app.cli)" in b for b in broken), broken
    assert any("imports sqsd_fast.app.commands.run_command (app.commands)" in b for b in broken), broken


def test_no_import_circles():
    """No two modules import each other, directly or through others (importing a submodule
    also runs its packages' __init__, so those count as imported too)."""
    modules = _modules()
    graph = defaultdict(set)
    for module, path in modules.items():
        for name, _ in _imports(path):
            target = _resolve(name, modules)
            while target not in ("sqsd_fast", "") and not module.startswith(target + "."):
                if target != module:
                    graph[module].add(target)
                target = target.rpartition(".")[0]
    circles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v):   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_rule_checker_sees_a_planted_violation(tmp_path, monkeypatch):
    """The checker itself can fail: an ops module importing the pipeline is caught."""
    bad = tmp_path / "sqsd_fast" / "ops"
    bad.mkdir(parents=True)
    (tmp_path / "sqsd_fast" / "__init__.py").write_text("")
    (bad / "__init__.py").write_text("")
    (bad / "leak.py").write_text("def f():\n    from sqsd_fast.app.pipeline import run\n")
    (tmp_path / "sqsd_fast" / "app").mkdir()
    (tmp_path / "sqsd_fast" / "app" / "__init__.py").write_text("")
    (tmp_path / "sqsd_fast" / "app" / "pipeline.py").write_text("from sqsd_fast.ops.leak import f\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "sqsd_fast")
    with pytest.raises(AssertionError, match=r"ops/leak.py:2 \(ops\) imports sqsd_fast.app.pipeline.run"):
        test_imports_go_one_way()
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circles()


@pytest.mark.parametrize("method", ["iter_score", "iter_project"])
def test_fake_scorer_keeps_the_scorers_signatures(method):
    """The pipeline's tests run on FakeScorer; if SQSDScorer's keywords change, the fake
    must follow, or those tests would pass against an interface that no longer exists."""
    from sqsd_fast.scoring.scorer import SQSDScorer
    from sqsd_fast.testing.fake_scorer import FakeScorer

    real = inspect.signature(getattr(SQSDScorer, method))
    fake = inspect.signature(getattr(FakeScorer, method))
    shape = lambda sig: [(p.name, p.kind, p.default) for p in sig.parameters.values()]  # noqa: E731
    assert shape(fake) == shape(real)
    assert hasattr(FakeScorer, "model") and hasattr(SQSDScorer, "model")


def test_run_scorers_follow_the_protocol(tmp_path):
    from sqsd_fast.app.run_protocol import RunScorer, SQSDRun
    from sqsd_fast.influence.baselines import BaselineScorer
    from sqsd_fast.options import BaselineOptions, ScoreOptions
    from sqsd_fast.testing.fake_scorer import FakeScorer, make_workspace

    ws = make_workspace(tmp_path)
    score = ScoreOptions(model=str(ws["model"]), danger_state=str(ws["danger_state"]),
                         danger_direction=str(ws["danger_direction"]), safety_direction=str(ws["safety"]),
                         data=str(ws["data"]), out=str(tmp_path / "s.jsonl"))
    baseline = BaselineOptions(model=str(ws["model"]), method="length", data=str(ws["data"]),
                               out=str(tmp_path / "b.jsonl"))
    for scorer in (SQSDRun(FakeScorer(), score), BaselineScorer(baseline)):
        assert isinstance(scorer, RunScorer)
        assert scorer.score_column in scorer.columns
    with pytest.raises(TypeError, match="SQSDRun runs score or project"):
        SQSDRun(FakeScorer(), baseline)


def test_require_extension_turns_dependency_and_interpreter_skips_into_failures(monkeypatch):
    from sqsd_fast.testing.assertions import REQUIRE_EXTENSION_ENV, missing_backend, require_module

    monkeypatch.setenv(REQUIRE_EXTENSION_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        require_module("sqsd_fast_no_such_module")
    monkeypatch.setenv(REQUIRE_EXTENSION_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="cannot be imported"):
        require_module("sqsd_fast_no_such_module")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # Triton then cannot run on the CPU
    reason, fails = missing_backend("triton", "cpu")
    assert fails and "Triton cannot run on the CPU" in reason


@pytest.mark.parametrize("old, new", sorted(__import__("sqsd_fast._moved", fromlist=["MOVED"]).MOVED.items()))
def test_old_module_paths_give_the_moved_modules(old, new):
    """Code written against a module's old place (sqsd_fast.pipeline, ...) gets the module at
    its new place, the same object, so a patch on one is seen through the other."""
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)
