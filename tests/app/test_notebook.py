"""examples/quickstart.ipynb runs as a user runs it (a Jupyter kernel of its own, a fresh working folder), so the
API it documents cannot go stale: a smoke search, the analysis, the verifier. What the user sees is checked too: the
search cell shows the progress line and the result, none of Ray's log lines, no library warnings."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
CELL_TIMEOUT_S = 600

# What no user of the API should have to read: Ray's log lines ("INFO util.py:155 -- ...", a worker's
# "(_member_task pid=123)" or "(pid=123)" prefix), tracebacks, warnings of the libraries underneath (a warning about
# the result is a UserWarning, and allowed), the "Missing packages: ['ipywidgets']" of Ray's notebook support.
NOISE = [
    re.compile(r"\b(?:DEBUG|INFO|WARNING|ERROR)\b \S+\.py:\d+"),
    re.compile(r"\((?:\w+ )?pid=\d+"),
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r"\b(?!UserWarning\b)\w*Warning:"),
    re.compile(r"Missing packages|IProgress not found"),
]


def read_notebook():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def tagged(notebook, tag: str):
    [cell] = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    return cell


def shown(cell) -> str:
    """Everything a cell shows as text: its streams (stdout and stderr) and the plain text of its results."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
    return "\n".join(parts)


def test_the_notebook_is_stored_without_outputs():
    """The repository holds the notebook's code only: no outputs, no execution counts (nothing of a machine's)."""
    import nbformat

    notebook = read_notebook()
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert notebook.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_quickstart_notebook_runs_as_documented(tmp_path, monkeypatch):
    """About a minute on 2 cores: a tiny search (4 trials of 2 epochs, retrained and exported), the analysis and
    the verifier."""
    import nbformat
    from ipykernel.kernelspec import install
    from nbclient import NotebookClient

    # A kernel spec of our own, whatever the machine has (a user's own "python3" spec may name another Python):
    # this interpreter, found first through JUPYTER_PATH.
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter-prefix" / "share" / "jupyter"))
    install(prefix=str(tmp_path / "jupyter-prefix"))
    storage = tmp_path / "ray_results"
    work = tmp_path / "work"
    work.mkdir()
    # The kernel is a new process: no Ray of this test session (RAY_ADDRESS and the like); its ts.search starts a
    # local Ray and shuts it down. TUNE_SIAMESE_CACHE (conftest) keeps its decoded data out of ~/.cache.
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    env["QUICKSTART_STORAGE"] = str(storage)

    notebook = read_notebook()
    # one cell of the test's own after the user's: the local Ray each ts.search started was shut down when it returned
    notebook.cells.append(nbformat.v4.new_code_cell("import ray\nprint('Ray initialised:', ray.is_initialized())"))
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(work)}})
    client.execute(env=env)  # a cell that raises fails the test here, with the cell and its traceback
    if os.environ.get("QUICKSTART_EXECUTED"):  # to read the outputs as a user sees them
        nbformat.write(notebook, os.environ["QUICKSTART_EXECUTED"])

    for number, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            text = shown(cell)
            noise = [pattern.pattern for pattern in NOISE if pattern.search(text)]
            assert not noise, f"cell {number} shows {noise}:\n{text}"

    search = tagged(notebook, "search")
    [result] = [output.data["text/plain"] for output in search.outputs if output.output_type == "execute_result"]
    assert result.startswith("SearchResult(") and len(result.replace(str(storage), "STORAGE")) < 300, result
    lines = [output.data["text/plain"] for output in search.outputs if output.output_type == "display_data"]
    assert lines and lines[-1].startswith("[done] 4 trials"), lines
    [experiment] = sorted(storage.iterdir())  # the smoke search, exported
    assert (experiment / "export" / "SHA256SUMS").is_file()

    [printed] = re.findall(r"test AUC: (\S+)", shown(tagged(notebook, "auc")))
    assert 0.0 <= float(printed) <= 1.0
    [probabilities] = re.findall(r"array\(\[([^\]]*)\]\)", shown(tagged(notebook, "pairs")))
    assert all(0.0 <= float(value) <= 1.0 for value in probabilities.split(","))
    assert not any(Path(work).iterdir())  # the notebook writes only where it was told to
    assert shown(notebook.cells[-1]).strip() == "Ray initialised: False"
