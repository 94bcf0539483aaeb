"""Project-wide rules: lint clean, no autograd framework in the package, checkpoints never unpickled."""
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_FILES = sorted((ROOT / "minimaskrcnn").rglob("*.py"))


def test_package_imports_no_autograd_framework():
    pattern = re.compile(r"^\s*(import|from)\s+(torch|torchvision|jax|tensorflow)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE_FILES if pattern.search(p.read_text())]
    assert not offenders, f"minimaskrcnn/ must not import an autograd framework: {offenders}"


def test_package_never_allows_pickle():
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE_FILES if "allow_pickle=True" in p.read_text()]
    assert not offenders, offenders


def test_cupy_is_imported_only_by_the_backend():
    pattern = re.compile(r"^\s*(import|from)\s+cupy", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE_FILES
                 if pattern.search(p.read_text()) and p.name != "backend.py"]
    assert not offenders, offenders


def test_ruff_lint_is_clean():
    ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -r requirements.txt installs it)")
    result = subprocess.run([ruff, "check", "minimaskrcnn", "tests", "tools", "bench"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_notebooks_are_committed_without_outputs():
    """Outputs are made by running the notebooks (the test command does); committed ones stay clean."""
    import json
    dirty = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
                dirty.append(path.name)
                break
    assert not dirty, f"notebooks with outputs (clear them before committing): {dirty}"


@pytest.mark.parametrize("script", sorted((ROOT / "tools").glob("make_notebook_*.py")), ids=lambda p: p.stem)
def test_notebook_matches_its_generator_script(script, monkeypatch):
    """A notebook edited by hand but not in tools/make_notebook_NN.py would be lost at the next rebuild."""
    import json
    import runpy
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    builder = runpy.run_path(str(script))["NB"]          # collects the cells; writes nothing
    built = [(c.cell_type, c.source, dict(c.metadata)) for c in builder.cells]
    cells = json.loads(builder.path.read_text())["cells"]
    committed = [(c["cell_type"], "".join(c["source"]), c["metadata"]) for c in cells]
    assert built == committed, f"{builder.path.name} differs from {script.name}: run `python tools/{script.name}`"
