"""Classroom assignments (minimaskrcnn.classroom): the catalogue's self-test (``classroom check``: solution
full marks, release zero, no leak, round trip, wrong solutions caught), the markers, and what the commands
do with bad input and bad submissions."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minimaskrcnn.classroom import catalogue, markers
from minimaskrcnn.classroom.check import check
from minimaskrcnn.classroom.grade import GradeError, grade, write_results_json
from minimaskrcnn.classroom.release import ReleaseError, release, strip_notebook
from minimaskrcnn.cli import main

REPO = Path(__file__).resolve().parents[1]
# A student's release has no tests/hidden/ (hidden tests, wrong solutions): it cannot grade or check.
pytestmark = pytest.mark.skipif(not (REPO / "tests" / "hidden").is_dir(),
                                reason="a classroom release: the graders' tests/hidden/ is not here")


def test_classroom_check_every_assignment():
    """The five checks of issue 10 on every enabled assignment (about a minute: 6 pytest runs each)."""
    lines = []
    problems = check(say=lines.append)
    assert not problems, "\n".join(lines)


def test_catalogue_covers_chapters_and_marks_every_part():
    assert len(catalogue.CATALOGUE) >= 10
    assert {a.chapter[:2] for a in catalogue.CATALOGUE} >= {"01", "02", "03", "04", "05", "06", "07"}
    for a in catalogue.enabled():
        for path, names in a.part_files().items():
            text = (REPO / path).read_text()
            found = {r.function for r in markers.find_regions(text, path)}
            assert set(names) <= found, f"{a.id}: {path} lacks markers in {set(names) - found}"
        for f in a.tests + a.hidden:
            assert (REPO / f).is_file(), f
        assert all(h.startswith("tests/hidden/") for h in a.hidden)


# Marker lines are spelt {B} / {E} here, so that a release does not take this file's strings for solutions.
B, E = markers.BEGIN, markers.END
PY = f'''def f(x):
    """Doc."""
    y = x + 1
    {B}
    z = y * 2
    {E}
    return z


class C:
    def g(self):
        {B}
        return 3
        {E}
'''

CU = f'''template <typename T>
__device__ void k(const int n, T* out) {{
  for (int i = 0; i < n; i++) {{
    // {B}
    out[i] = (T)i;
    // {E}
  }}
}}
'''


def test_markers_strip_put_back_and_errors():
    assert [r.function for r in markers.find_regions(PY, "x.py")] == ["f", "C.g"]
    out, stubbed = markers.strip_text(PY, "x.py", {"C.g": "A0: implement C.g"})
    assert [r.function for r in stubbed] == ["C.g"]
    assert "z = y * 2" in out and "return 3" not in out and "SOLUTION" not in out
    assert "raise NotImplementedError('A0: implement C.g')" in out
    assert markers.put_back(out, PY, "x.py", ["C.g"]) == markers.drop_markers(PY)
    cu, stubbed = markers.strip_text(CU, "k.cu", {"k": "A0: k"})
    assert 'NOT_IMPLEMENTED("A0: k");' in cu and "out[i] = (T)i;" not in cu and len(stubbed) == 1
    with pytest.raises(markers.MarkerError, match="never closed"):
        markers.find_regions(f"def f():\n    {B}\n    pass\n", "x.py")
    with pytest.raises(markers.MarkerError, match="without a BEGIN"):
        markers.find_regions(f"def f():\n    {E}\n    pass\n", "x.py")
    with pytest.raises(markers.MarkerError, match="not valid Python"):
        markers.find_regions("def f(:\n", "x.py")


def test_notebook_scripts_answer_keys_are_stubbed():
    script = f'''NB.code("""\nx = 1\n{B}\nanswer = 42\n{E}\n""")\n'''
    out = markers.stub_every_region(script, "# YOUR CODE HERE\nraise NotImplementedError()")
    assert out == 'NB.code("""\nx = 1\n# YOUR CODE HERE\nraise NotImplementedError()\n""")\n'


def test_notebook_solution_cells_become_stubs():
    nb = {"cells": [{"cell_type": "code", "source": "a = 1\n### BEGIN SOLUTION\nb = secret()\n### END SOLUTION\n",
                     "outputs": [{"output_type": "stream"}], "execution_count": 3, "metadata": {}}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    cell = json.loads(strip_notebook(json.dumps(nb)))["cells"][0]
    assert cell["source"] == "a = 1\n# YOUR CODE HERE\nraise NotImplementedError()"
    assert cell["outputs"] == [] and cell["execution_count"] is None


def test_bad_input_is_one_line_and_overwrites_nothing(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for argv, message in [
        (["classroom", "release", "A99", "--out", str(tmp_path / "x")], "unknown assignment 'A99'"),
        (["classroom", "release", "A9", "--out", str(out)], "already exists; give --force"),
        (["classroom", "release", "A9", "--out", str(out), "--force"], "not an earlier release"),
        (["classroom", "grade", "A9", "--submission", str(out)], "not a classroom release"),
        (["classroom", "grade", "A9", "--submission", str(tmp_path / "nope")], "submission folder not found"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    assert not (tmp_path / "x").exists()


def test_a_planned_assignment_is_refused_with_its_reason(monkeypatch):
    """Every assignment of the catalogue is enabled now; one marked planned is listed but not released."""
    planned = dataclasses.replace(catalogue.BY_ID["A6"], enabled=False, note="waits for the plain loops")
    monkeypatch.setitem(catalogue.BY_ID, "A6", planned)
    with pytest.raises(catalogue.UnknownAssignment, match="planned but not released yet: waits for the plain loops"):
        catalogue.get("A6")


@pytest.fixture(scope="module")
def a9_release(tmp_path_factory):
    return release("A9", tmp_path_factory.mktemp("a9") / "release", package_only=True)


def _submission(release_dir, tmp_path, new_body):
    """A copy of the A9 release with the schedule solved and the SGD.step stub replaced by ``new_body``."""
    import shutil
    sub = tmp_path / "sub"
    shutil.copytree(release_dir, sub, symlinks=True)
    optim = sub / "minimaskrcnn" / "nn" / "optim.py"
    text = markers.put_back(optim.read_text(), (REPO / "minimaskrcnn/nn/optim.py").read_text(), "optim.py",
                            ["WarmupMultiStepLR.__call__"])
    start = text.index("        # YOUR CODE HERE\n", text.index("    def step(self)"))
    raise_line = text.index("\n", start) + 1
    assert "NotImplementedError" in text[raise_line:text.index("\n", raise_line)]
    end = text.index("\n", raise_line)
    optim.write_text(text[:start] + new_body + text[end:])
    return sub


def test_grade_survives_a_submission_that_does_not_import(a9_release, tmp_path):
    sub = _submission(a9_release, tmp_path, "        def (:  # a syntax error")
    report = grade("A9", sub)
    assert report.max_score == 10 and report.score <= 4   # at most the schedule's tests pass
    assert all(r.status != "passed" for r in report.graded if "sgd" in r.name)
    assert any("SyntaxError" in r.message for r in report.graded) or any("does not import" in n for n in report.notes)


def test_grade_survives_endless_loops_and_floods_of_output(a9_release, tmp_path):
    sub = _submission(a9_release, tmp_path, "        print('x' * 3_000_000)\n        while True:\n            pass")
    report = grade("A9", sub, per_test_timeout=1.5, total_timeout=120)
    step = [r for r in report.graded if "sgd" in r.name]
    schedule = [r for r in report.graded if "sgd" not in r.name]
    assert step and all(r.score == 0 and "Timeout" in r.message for r in step)
    assert len(max((r.output for r in step), key=len)) <= 2100       # the flood is capped
    assert len(report.output) <= 25_000
    assert schedule and all(r.status == "passed" for r in schedule)   # the untouched schedule still scores
    path = tmp_path / "results.json"
    write_results_json(report, path)
    data = json.loads(path.read_text())
    assert data["score"] == report.score and {"name", "score", "max_score", "output"} <= set(data["tests"][0])
    assert {t["visibility"] for t in data["tests"]} == {"visible", "after_due_date"}   # hidden tests shown later
    (tmp_path / "mine.json").write_text("not results")
    with pytest.raises(GradeError, match="refusing to overwrite"):
        write_results_json(report, tmp_path / "mine.json")


def test_full_release_is_installable_copy_without_hidden_tests(tmp_path):
    out = release("A4", tmp_path / "A4")
    assert (out / ".classroom.json").is_file() and (out / "README.md").is_file()
    assert (out / "requirements.txt").is_file() and (out / "pyproject.toml").is_file()
    assert not (out / "tests" / "hidden").exists()
    student = (out / "STUDENT.md").read_text()
    assert "BoxCoder.encode" in student and "assignment(id='A4')" in student
    for nb in (out / "notebooks").glob("*.ipynb"):
        json.loads(nb.read_text())
    with pytest.raises(ReleaseError, match="already exists"):
        release("A4", out)
    release("A4", out, force=True)   # an earlier release may be replaced


def test_student_test_command_selects_the_assignment(a9_release):
    """The -m expression STUDENT.md gives selects exactly the visible graded tests (pytest >= 8)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "assignment(id='A9')", "tests/test_module_optim.py"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    ids = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert sorted(i.split("::")[1] for i in ids) == ["test_sgd_matches_the_pytorch_update_rule",
                                                     "test_warmup_multistep_schedule"], proc.stdout
