"""Make the student copy of the repository for one assignment.

Every file of the repository is copied (git's list of tracked and untracked-but-not-ignored files, or a
walk that skips virtual environments, runs, generated data and caches), except the graders' material in
``tests/hidden/``. The assignment's marked regions become stubs that raise
``NotImplementedError("A2: implement ...")``; every other marker line is dropped (those solutions stay,
so the rest of the detector works); notebook solution cells become ``# YOUR CODE HERE`` stubs, as
nbgrader's ``generate_assignment`` makes them. A ``.classroom.json`` stamp says what the folder is, and
``STUDENT.md`` says what to do. The copy is written beside ``--out`` and renamed into place, so a failed
release leaves nothing half-written.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import catalogue, markers
from .grade import STAMP, repository_root
from .student import student_md

HIDDEN_DIR = "tests/hidden/"
SKIP_DIRS = {".git", ".venv", "venv", "runs", "dist", "build", "__pycache__", ".ipynb_checkpoints",
             ".pytest_cache", ".ruff_cache", ".hypothesis"}
NOTEBOOK_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
# Released .cu files get this prelude: the CPU emulator defines NOT_IMPLEMENTED itself (it raises
# NotImplementedError in Python); NVRTC on a GPU does not, and there the stub stops the kernel.
CUDA_PRELUDE = ("#ifndef NOT_IMPLEMENTED  // a classroom stub (minimaskrcnn/classroom): stop the kernel on a GPU\n"
                "#define NOT_IMPLEMENTED(msg) __trap()\n#endif\n")


class ReleaseError(catalogue.ClassroomError):
    """A problem with the release's input, reported in one line; nothing is written."""


def repository_files(repo: Path) -> list[str]:
    """Relative paths of the repository's files: git's tracked and untracked-but-not-ignored ones, or a walk."""
    if (repo / ".git").exists() and shutil.which("git"):
        proc = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                               "--exclude-standard"], capture_output=True, text=True)
        if proc.returncode == 0:
            return sorted({p for p in proc.stdout.split("\0") if p and (repo / p).is_file()})
    files = []
    for root, dirs, names in os.walk(repo):
        rel_root = Path(root).relative_to(repo)
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")
                   and not (rel_root == Path("data") and d.startswith("shapes"))]
        files += [str(rel_root / n) for n in names if not n.endswith((".pyc", ".so"))]
    return sorted(files)


def strip_notebook(text: str) -> str:
    """A notebook with its solution cells stubbed (nbgrader's way), all outputs cleared, markers gone."""
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
            lines = source.splitlines()
            out, inside = [], False
            for line in lines:
                if markers.is_marker(line):
                    if "BEGIN" in line:
                        inside = True
                        out.append(NOTEBOOK_STUB)
                    else:
                        inside = False
                    continue
                if not inside:
                    out.append(line)
            source = "\n".join(out)
        else:
            source = markers.drop_markers(source)
        cell["source"] = source
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _release_text(a, rel: str, text: str, parts: dict[str, list[str]]) -> tuple[str, int]:
    """The released text of one source file and the number of regions stubbed."""
    if rel.endswith(".ipynb"):
        return strip_notebook(text), 0
    if rel.startswith("tools/make_notebook_"):   # answer keys live in the scripts too: stub them alike
        return markers.stub_every_region(text, NOTEBOOK_STUB), 0
    if not any(markers.is_marker(line) for line in text.splitlines()):
        return text, 0
    functions = {q: a.stub_message(q) for q in parts.get(rel, [])}
    new, stubbed = markers.strip_text(text, rel, functions)
    missing = set(functions) - {r.function for r in stubbed}
    if missing:
        raise ReleaseError(f"{a.id}: {rel} has no solution markers in {', '.join(sorted(missing))} "
                           "(the catalogue names it as a part)")
    if stubbed and rel.endswith(".cu"):
        new = CUDA_PRELUDE + new
    return new, len(stubbed)


def _check_out(out: Path, repo: Path, force: bool) -> None:
    out_r, repo_r = out.resolve(), repo.resolve()
    if out_r == repo_r or repo_r.is_relative_to(out_r):
        raise ReleaseError(f"{out}: would replace the repository itself; choose another --out")
    if out.exists() or out.is_symlink():
        if not force:
            raise ReleaseError(f"{out}: already exists; give --force to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not (out / STAMP).is_file()):
            raise ReleaseError(f"{out}: exists and is not an earlier release (no {STAMP}); refusing to replace it "
                               "even with --force")


def release(assignment_id: str, out, *, force: bool = False, repo=None, package_only: bool = False) -> Path:
    """Write the student copy of ``assignment_id`` to ``out``; return its path.

    ``package_only`` (used by ``classroom check``) releases only what grading and the leak search need:
    the package, the notebooks and the tests.
    """
    a = catalogue.get(assignment_id)
    repo = Path(repo or repository_root())
    out = Path(out)
    _check_out(out, repo, force)
    parts = a.part_files()
    for rel in parts:
        if not (repo / rel).is_file():
            raise ReleaseError(f"{a.id}: part file {rel} not found in {repo}")
    files = [f for f in repository_files(repo) if not f.startswith(HIDDEN_DIR)]
    if package_only:
        files = [f for f in files if f.startswith(("minimaskrcnn/", "notebooks/", "tests/"))
                 and not f.startswith("tests/fixtures/")]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        stubbed = 0
        for rel in files:
            src, dst = repo / rel, tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rel.endswith((".py", ".cu", ".cuh", ".h", ".ipynb")):
                new, n = _release_text(a, rel, src.read_text(encoding="utf-8"), parts)
                stubbed += n
                dst.write_text(new, encoding="utf-8")
                shutil.copymode(src, dst)
            else:
                shutil.copy2(src, dst)
        if package_only:
            os.symlink(repo.resolve() / "tests" / "fixtures", tmp / "tests" / "fixtures")
        if not stubbed:
            raise ReleaseError(f"{a.id}: nothing to strip (no part has solution markers)")
        (tmp / "STUDENT.md").write_text(student_md(a), encoding="utf-8")
        (tmp / STAMP).write_text(json.dumps({"assignment": a.id, "title": a.title, "parts": list(a.parts),
                                             "released_from": _commit(repo)}, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _commit(repo: Path) -> str:
    if shutil.which("git") and (repo / ".git").exists():
        proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.strip()
    return ""
