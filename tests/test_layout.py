"""The code's shape, kept by tests: the package's layers in order, no import circle between the project's modules
(imports inside functions and under TYPE_CHECKING count too: they are circles of ideas), no module over 400 lines,
and experiments of earlier versions still unpickle."""
from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tune_siamese", "search_spaces", "analysis")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> set[str]:
    """The project modules `path` imports: `from . import storage` imports tune_siamese.storage (and not the
    package's __init__), `from .config import Config` imports tune_siamese.config."""
    this = module_name(path)
    package = this.split(".") if path.name == "__init__.py" else this.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""] if node.level
                            else [node.module or ""]).strip(".")
            submodules = [f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}")]
            candidates = submodules if len(submodules) == len(node.names) else [base, *submodules]
        else:
            continue
        for name in candidates:
            parts = name.split(".")
            while parts and parts[0] in PACKAGES and not is_module(".".join(parts)):
                parts.pop()
            if parts and parts[0] in PACKAGES and ".".join(parts) != this:
                found.add(".".join(parts))
    return found


def project_files() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    graph = {module_name(path): imported_modules(path) for path in project_files()}
    assert circles(graph) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", project_files(), ids=lambda path: str(path.relative_to(REPO)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


# The package's layers, each importing only those before it (docs/layout.md draws them).
LAYERS = ("core", "data", "training", "artifacts", "searching", "final", "app")
PURE_TORCH = ("core", "data", "training")  # no Ray, no Optuna: the training core runs without them


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "tune_siamese" and len(parts) > 1 and parts[1] in LAYERS else None


def every_import(path: Path) -> set[str]:
    """Every module name `path` imports, anywhere in it (also inside functions and under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def layer_breaks(files: dict[str, set[str]]) -> list[str]:
    """`file -> module` for each import of a later layer, or of Ray or Optuna from a pure-PyTorch layer."""
    breaks = []
    for name, imports in sorted(files.items()):
        own = layer_of(name)
        for module in sorted(imports):
            other = layer_of(module)
            if own and other and LAYERS.index(other) > LAYERS.index(own):
                breaks.append(f"{name} -> {module}")
            if own in PURE_TORCH and module.split(".")[0] in ("ray", "optuna"):
                breaks.append(f"{name} -> {module}")
    return breaks


def test_each_layer_imports_only_the_layers_before_it():
    files = {module_name(path): every_import(path) for path in (REPO / "tune_siamese").rglob("*.py")}
    assert {layer_of(name) for name in files} >= set(LAYERS)
    assert layer_breaks(files) == []


def test_the_layer_check_finds_a_break():
    assert layer_breaks({"tune_siamese.training.engine": {"tune_siamese.searching.tuner", "torch"},
                         "tune_siamese.data.images": {"ray.tune"},
                         "tune_siamese.app.api": {"tune_siamese.core.config"}}) == [
        "tune_siamese.data.images -> ray.tune", "tune_siamese.training.engine -> tune_siamese.searching.tuner"]


def test_the_presets_are_plain_data():
    """search_spaces imports Ray Tune's distributions and nothing of tune_siamese (whose settings check it)."""
    imports = every_import(REPO / "search_spaces" / "__init__.py")
    assert not [module for module in imports if module.split(".")[0] == "tune_siamese"]


def test_experiments_saved_under_the_old_module_names_still_unpickle():
    """Tune's saved state names classes and functions by module path: those of experiments written by earlier
    versions (tune_siamese.search, .tuning, .study, .study_search, .finish, .finalists) resolve through one table,
    with a DeprecationWarning; an old name must not replace the API function tune_siamese.search; and an old module
    does not forward its own attributes (__file__), which tools that walk sys.modules read."""
    import pickle

    import tune_siamese as ts
    from tune_siamese.final.finalists import train_finalist
    from tune_siamese.searching.callbacks import CompletionWatch
    from tune_siamese.searching.tuner import MovableSearchGenerator, trial_name

    with pytest.warns(DeprecationWarning, match="tune_siamese.searching.callbacks.CompletionWatch"):
        assert pickle.loads(b"ctune_siamese.search\nCompletionWatch\n.") is CompletionWatch
    with pytest.warns(DeprecationWarning):
        assert pickle.loads(b"ctune_siamese.tuning\nMovableSearchGenerator\n.") is MovableSearchGenerator
        assert pickle.loads(b"ctune_siamese.tuning\ntrial_name\n.") is trial_name
        assert pickle.loads(b"ctune_siamese.finish\ntrain_finalist\n.") is train_finalist
    with pytest.raises(AttributeError):
        pickle.loads(b"ctune_siamese.tuning\nno_such_name\n.")
    with warnings.catch_warnings():  # tools that walk sys.modules (inspect, torch.compile) ask every module
        warnings.simplefilter("error")
        assert getattr(sys.modules["tune_siamese.finish"], "__file__", None) is None
    assert callable(ts.search) and ts.search.__module__ == "tune_siamese.app.api"
