"""The code's shape, kept by tests: no import circle between the project's modules (imports inside functions and
under TYPE_CHECKING count too: they are circles of ideas), and no module over 400 lines."""
from __future__ import annotations

import ast
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


def test_experiments_saved_under_the_old_module_names_still_unpickle():
    """Tune's saved state names classes by module path: an experiment (or finalist stage) saved before the Ray
    layer became tuning.py, or before train_finalist moved to finalists.py, must still resume and finalize; and
    that old name must not replace the API function tune_siamese.search."""
    import pickle

    import tune_siamese as ts
    from tune_siamese.finalists import train_finalist
    from tune_siamese.tuning import CompletionWatch, MovableSearchGenerator

    assert pickle.loads(b"ctune_siamese.search\nCompletionWatch\n.") is CompletionWatch
    assert pickle.loads(b"ctune_siamese.search\nMovableSearchGenerator\n.") is MovableSearchGenerator
    assert pickle.loads(b"ctune_siamese.finish\ntrain_finalist\n.") is train_finalist
    assert callable(ts.search) and ts.search.__module__ == "tune_siamese.api"
