"""Grade a submission: the assignment's visible and hidden tests, the grader's own copies, run against the
submitted package in a subprocess with a per-test and an overall time limit.

The tests come from the grader's repository (a student may have edited the copies in the release); they
are copied into a temporary folder with a small pytest plugin (:mod:`.pytest_plugin`) that keeps the
assignment's tests and writes one JSON line per outcome. ``PYTHONPATH`` puts the submission's
``minimaskrcnn`` first, and the plugin records which package was imported, so a grader never scores its
own solution by mistake. Whatever the submission does (does not import, loops, prints megabytes, crashes
the interpreter), every expected test gets a line: its points, or zero and the reason.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import catalogue

STAMP = ".classroom.json"
OUTPUT_CAP = 20_000          # characters of pytest's own output kept (head and tail)
PYTEST_INI = """[pytest]
addopts = -p no:cacheprovider
markers =
    assignment(id, points): a graded test of a classroom assignment
    slow: long-running tests
    gpu: needs CuPy and a CUDA device
    torch_fixture: compares against committed torchvision fixtures
filterwarnings =
    ignore::DeprecationWarning
"""


class GradeError(catalogue.ClassroomError):
    """A problem with the grader's input (not with the submission's code), reported in one line."""


@dataclass
class TestResult:
    name: str
    score: float
    max_score: float
    status: str                 # passed | failed | error | skipped | not run
    message: str = ""
    output: str = ""
    hidden: bool = False
    extra: bool = False         # a test of another part (check's independence sample), 0 points


@dataclass
class GradeReport:
    assignment: str
    submission: str
    results: list[TestResult]
    notes: list[str] = field(default_factory=list)
    output: str = ""            # pytest's own output, capped

    @property
    def graded(self):
        """The assignment's tests that count (not other parts' tests, not those this grader cannot run)."""
        return [r for r in self.results if not r.extra and not (r.status == "skipped" and r.max_score == 0)]

    @property
    def not_runnable(self):
        return [r for r in self.results if not r.extra and r.status == "skipped" and r.max_score == 0]

    @property
    def score(self) -> float:
        return sum(r.score for r in self.graded)

    @property
    def max_score(self) -> float:
        return sum(r.max_score for r in self.graded)

    def table(self) -> str:
        rows = [(r.name + ("  [hidden]" if r.hidden else ""), f"{r.score:g}/{r.max_score:g}",
                 "ok" if r.status == "passed" else f"{r.status}: {r.message}") for r in self.graded]
        w = max([len(r[0]) for r in rows] + [4])
        lines = [f"{'test':<{w}}  points  result", "-" * (w + 40)]
        lines += [f"{n:<{w}}  {p:>6}  {m}" for n, p, m in rows]
        lines.append("-" * (w + 40))
        lines.append(f"{'total ' + self.assignment:<{w}}  {self.score:g}/{self.max_score:g}")
        if self.not_runnable:
            lines.append(f"({len(self.not_runnable)} tests not counted: this grader cannot run them, e.g. "
                         f"{self.not_runnable[0].message})")
        return "\n".join(self.notes + lines)

    def gradescope(self) -> dict:
        """Gradescope's autograder ``results.json``."""
        tests = [{"name": r.name, "score": r.score, "max_score": r.max_score,
                  "status": "passed" if r.status == "passed" else "failed",
                  "output": (r.message + ("\n" + r.output if r.output else "")).strip(),
                  "visibility": "after_due_date" if r.hidden else "visible"} for r in self.graded]
        return {"score": self.score, "output": "\n".join(self.notes) or f"{self.assignment}: "
                f"{self.score:g}/{self.max_score:g}", "tests": tests}

    def to_dict(self) -> dict:
        return asdict(self)


def repository_root() -> Path:
    """The grader's repository: the folder holding this ``minimaskrcnn`` package and its ``tests/``."""
    return Path(__file__).resolve().parents[2]


def check_submission(a: catalogue.Assignment, submission) -> Path:
    sub = Path(submission)
    if not sub.is_dir():
        raise GradeError(f"{sub}: submission folder not found")
    stamp = sub / STAMP
    if not stamp.is_file():
        raise GradeError(f"{sub}: not a classroom release (no {STAMP}); a submission is the folder made by "
                         f"'classroom release {a.id}', with the student's changes")
    try:
        released = json.loads(stamp.read_text()).get("assignment")
    except (ValueError, AttributeError) as e:
        raise GradeError(f"{stamp}: unreadable release stamp ({e})") from None
    if released != a.id:
        raise GradeError(f"{sub}: a release of {released}, not of {a.id}")
    if not (sub / "minimaskrcnn" / "__init__.py").is_file():
        raise GradeError(f"{sub}: no minimaskrcnn/ package in the submission")
    return sub.resolve()


def _test_files(a: catalogue.Assignment, extra=()) -> list[str]:
    files = list(a.tests) + list(a.hidden) + [n.split("::")[0] for n in extra]
    return list(dict.fromkeys(files))


def _prepare(a, repo: Path, tmp: Path, extra) -> list[str]:
    """Copy the grader's tests of ``a`` (and the plugin) into ``tmp``; return the files to run."""
    files = _test_files(a, extra)
    for rel in files + ["tests/conftest.py"]:
        src = repo / rel
        if not src.is_file():
            raise GradeError(f"{src}: the grader's test file is missing (grade from a full clone of the "
                             "repository, with tests/hidden/)")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, tmp / rel)
    os.symlink(repo / "tests" / "fixtures", tmp / "tests" / "fixtures")
    shutil.copy2(Path(__file__).with_name("pytest_plugin.py"), tmp / "_classroom_plugin.py")
    (tmp / "pytest.ini").write_text(PYTEST_INI)
    return files


def _read_capped(stream, keep: list):
    """Read a pipe to its end, keeping the first and last OUTPUT_CAP / 2 characters."""
    head, tail, dropped, half = [], "", 0, OUTPUT_CAP // 2
    size = 0
    for chunk in iter(lambda: stream.read(8192), ""):
        if size < half:
            head.append(chunk[: half - size])
            chunk = chunk[half - size:]
            size += len(head[-1])
        if chunk:
            tail = (tail + chunk)[-half:]
            dropped += len(chunk)
    dropped = max(0, dropped - len(tail))
    keep.append("".join(head) + (f"\n... [{dropped} characters of output cut] ...\n" if dropped else "") + tail)


def run_pytest(a, package_root: Path, *, repo: Path, report: Path, tmp: Path, extra=(), collect_only=False,
               per_test_timeout: float = 60, total_timeout: float = 600, kernel_cache=None) -> tuple[int | None, str]:
    """Run the grader's tests of ``a`` in a subprocess importing ``minimaskrcnn`` from ``package_root``.
    Returns (exit code or None if killed for the overall time limit, captured output)."""
    if importlib.util.find_spec("pytest_timeout") is None:
        raise GradeError("the grader needs pytest-timeout: pip install -r requirements.txt (or pytest-timeout)")
    files = _prepare(a, repo, tmp, extra)
    cmd = [sys.executable, "-m", "pytest", "-q", "-c", str(tmp / "pytest.ini"), "--rootdir", str(tmp),
           "-p", "pytest_timeout", "-p", "_classroom_plugin", "--classroom-assignment", a.id,
           "--classroom-report", str(report), f"--timeout={per_test_timeout}"]
    cmd += [f"--classroom-extra={n}" for n in extra]
    if collect_only:
        cmd.append("--collect-only")
    cmd += files
    env = dict(os.environ, PYTHONPATH=str(package_root), PYTHONDONTWRITEBYTECODE="1",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("PYTEST_ADDOPTS", None)
    if kernel_cache is not None:   # a submission's compiled kernels go with its temporary folder
        env["MINIMASKRCNN_KERNEL_CACHE"] = str(kernel_cache)
    # Only the plugins named above: the others installed (nbmake loads Jupyter) cost seconds per run.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
    out: list[str] = []
    reader = threading.Thread(target=_read_capped, args=(proc.stdout, out), daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=total_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    reader.join(timeout=10)
    return code, (out[0] if out else "")


def _read_report(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass    # a line cut by a killed process
    return records


_EXPECTED: dict[tuple, dict] = {}


def expected_tests(a, repo: Path, extra=()) -> dict[str, dict]:
    """``nodeid -> {points, hidden, extra}`` of the grader's tests of ``a``, collected against the grader's
    own package (so a submission that breaks collection still has its tests listed, at zero)."""
    key = (a.id, str(repo), tuple(extra))
    if key not in _EXPECTED:
        with tempfile.TemporaryDirectory(prefix="classroom-collect-") as tmp:
            report = Path(tmp) / "report.jsonl"
            work = Path(tmp) / "tests-copy"
            work.mkdir()
            code, output = run_pytest(a, repo, repo=repo, report=report, tmp=work, extra=extra, collect_only=True,
                                      total_timeout=300)
            records = _read_report(report)
            errors = [r for r in records if r["event"] == "collect_error"]
            if code not in (0, 5) or errors:
                detail = errors[0]["message"] if errors else output.strip().splitlines()[-1:]
                raise GradeError(f"{a.id}: the grader's own tests do not collect ({detail})")
            _EXPECTED[key] = {r["nodeid"]: r for r in records if r["event"] == "collected"}
        if not any(not r["extra"] for r in _EXPECTED[key].values()):
            raise GradeError(f"{a.id}: no test carries @pytest.mark.assignment(id={a.id!r}, points=...)")
    return _EXPECTED[key]


def grade(assignment_id: str, submission, *, repo=None, per_test_timeout: float = 60, total_timeout: float = 600,
          extra=(), require_stamp: bool = True) -> GradeReport:
    """Score ``submission`` (a release folder with the student's changes) on ``assignment_id``."""
    a = catalogue.get(assignment_id)
    repo = Path(repo or repository_root()).resolve()
    sub = check_submission(a, submission) if require_stamp else Path(submission).resolve()
    reference = sub == repo   # grading the grader's own solution: its run lists the expected tests itself
    expected = None if reference else expected_tests(a, repo, extra)
    with tempfile.TemporaryDirectory(prefix=f"classroom-grade-{a.id}-") as tmp:
        report = Path(tmp) / "report.jsonl"
        work = Path(tmp) / "tests-copy"
        work.mkdir()
        code, output = run_pytest(a, sub, repo=repo, report=report, tmp=work, extra=extra,
                                  per_test_timeout=per_test_timeout, total_timeout=total_timeout,
                                  kernel_cache=None if reference else Path(tmp) / "kernels")
        records = _read_report(report)
    if expected is None:
        expected = {r["nodeid"]: r for r in records if r["event"] == "collected"}
        if expected and not any(r["event"] == "collect_error" for r in records):
            _EXPECTED[(a.id, str(repo), tuple(extra))] = expected
    return _assemble(a, sub, expected, records, code, output, total_timeout)


def _assemble(a, sub, expected, records, code, output, total_timeout) -> GradeReport:
    notes = []
    package = next((r for r in records if r["event"] == "package"), None)
    if package is not None and package.get("error"):
        notes.append(f"the submission's package does not import: {package['error']}")
    elif package is not None and not Path(package["path"]).resolve().is_relative_to(sub):
        raise GradeError(f"the tests imported minimaskrcnn from {package['path']}, not from the submission {sub} "
                         "(is the grader's copy installed in a way that shadows PYTHONPATH?)")
    if code is None:
        notes.append(f"the tests ran past the overall time limit of {total_timeout:g} s and were stopped")
    elif package is None or code not in (0, 1, 2, 5):
        notes.append(f"the test process ended abnormally (exit code {code}); tests that did not run score 0")
    collect_errors = {r["nodeid"]: r["message"] for r in records if r["event"] == "collect_error"}
    started = [r["nodeid"] for r in records if r["event"] == "start"]
    outcomes: dict[str, list[dict]] = {}
    for r in records:
        if r["event"] == "result":
            outcomes.setdefault(r["nodeid"], []).append(r)
    results = []
    for nodeid, info in expected.items():
        points = 0.0 if info["extra"] or info.get("skip") else float(info["points"])
        reports = outcomes.get(nodeid, [])
        if info.get("skip"):   # cannot run on this grader (no GPU, no compiler): counts for nothing
            results.append(TestResult(nodeid, 0.0, 0.0, "skipped", f"not run by this grader: {info['skip']}",
                                      "", bool(info.get("hidden")), bool(info["extra"])))
            continue
        failed = [r for r in reports if r["outcome"] == "failed"]
        skipped = [r for r in reports if r["outcome"] == "skipped"]
        calls = [r for r in reports if r["when"] == "call" and r["outcome"] == "passed"]
        output_text = "".join(r.get("output", "") for r in reports)[:2000]
        if failed:
            status = "failed" if failed[0]["when"] == "call" else "error"
            message = failed[0]["message"]
        elif skipped:
            status, message = "skipped", skipped[0]["message"]
        elif calls:
            status, message = "passed", ""
        else:
            status = "not run"
            file = nodeid.split("::")[0]
            err = next((m for n, m in collect_errors.items() if n == file or n.endswith("/" + file)), None)
            if err is not None:
                message = f"the test file could not be collected: {err}"
            elif started and started[-1] == nodeid:
                message = ("the run was stopped in this test (overall time limit)" if code is None else
                           f"the test process died in this test (exit code {code})")
            else:
                message = "the test process ended before this test ran"
        results.append(TestResult(nodeid, points if status == "passed" else 0.0, points, status, message,
                                  output_text, bool(info.get("hidden")), bool(info["extra"])))
    return GradeReport(a.id, str(sub), results, notes, output)


def write_results_json(report: GradeReport, path) -> None:
    """Write Gradescope's ``results.json``. An existing file is replaced only if it is such a file."""
    path = Path(path)
    if path.exists():
        try:
            old = json.loads(path.read_text())
            ok = isinstance(old, dict) and "tests" in old
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise GradeError(f"{path}: exists and is not a results file; refusing to overwrite it")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report.gradescope(), indent=1) + "\n")
    os.replace(tmp, path)
