"""``classroom check``: the catalogue's self-test, run by the test command (tests/test_classroom.py).

For every assignment:

1. the full solution scores full marks (and the independent sample of other parts' tests passes);
2. the untouched release scores 0, each failure naming the assignment's ``NotImplementedError``, while
   the tests of parts it does not touch still pass;
3. no solution line leaks into the release (package, notebooks, tests and STUDENT.md searched), and no
   marker is left;
4. putting the solution's functions back into the release scores full marks (the round trip);
5. every typical wrong solution kept in ``tests/hidden/mutants.py`` scores below full marks.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import catalogue, markers
from .grade import STAMP, expected_tests, grade, repository_root
from .release import release

SEARCHED = (".py", ".cu", ".cuh", ".h", ".ipynb", ".md")
MIN_LEAK_LINE = 6    # shorter solution lines ('else:', '}', 'return') are too common to mean anything


def load_mutants(repo: Path) -> dict:
    path = repo / "tests" / "hidden" / "mutants.py"
    spec = importlib.util.spec_from_file_location("classroom_mutants", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS


def _texts(root: Path, prefixes=("minimaskrcnn/", "notebooks/", "tests/", "STUDENT.md")) -> dict[str, str]:
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not p.is_symlink() and rel.startswith(prefixes) and rel.endswith(SEARCHED) \
                and "/fixtures/" not in rel:
            out[rel] = p.read_text(encoding="utf-8", errors="replace")
    return out


def find_leaks(a, repo: Path, released: Path) -> tuple[list[str], int]:
    """Solution lines of ``a`` found in the release more often than the solution has them outside ``a``'s
    regions (a line such as ``dbeta = dout.sum(axis=axes)`` may rightly appear in another function), and
    marker lines left anywhere. Returns (problems, number of solution lines searched)."""
    solution_lines = []
    outside = {}
    for rel, names in a.part_files().items():
        text = (repo / rel).read_text(encoding="utf-8")
        solution_lines += [ln for ln in markers.region_lines(text, rel, names) if len(ln) >= MIN_LEAK_LINE]
    wanted = set(solution_lines)
    # Occurrences the solution repository has outside the regions of a (same files searched).
    for rel, text in _texts(repo).items():
        if rel.startswith("tests/hidden/"):
            continue
        names = a.part_files().get(rel)
        if names:
            text, _ = markers.strip_text(text, rel, {q: "" for q in names})
        for ln in text.splitlines():
            s = ln.strip()
            if s in wanted:
                outside[s] = outside.get(s, 0) + 1
    found = {}
    problems = []
    for rel, text in _texts(released).items():
        for k, ln in enumerate(text.splitlines()):
            if markers.is_marker(ln):
                problems.append(f"{rel}:{k + 1}: marker left: {ln.strip()}")
            s = ln.strip()
            if s in wanted:
                found.setdefault(s, []).append(f"{rel}:{k + 1}")
    for s, where in found.items():
        if len(where) > outside.get(s, 0):
            problems.append(f"solution line leaked ({', '.join(where[:3])}): {s}")
    return problems, len(wanted)


def _copy_package(src_root: Path, dst_root: Path, a) -> Path:
    shutil.copytree(src_root / "minimaskrcnn", dst_root / "minimaskrcnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (dst_root / STAMP).write_text(json.dumps({"assignment": a.id}) + "\n")
    return dst_root


def _round_trip(a, repo: Path, released: Path, dst: Path) -> Path:
    _copy_package(released, dst, a)
    for rel, names in a.part_files().items():
        text = markers.put_back((released / rel).read_text(), (repo / rel).read_text(), rel, names)
        if rel.endswith(".cu"):   # the prelude the release added goes too: the file is the solution's again
            from .release import CUDA_PRELUDE
            text = text.replace(CUDA_PRELUDE, "", 1)
        (dst / rel).write_text(text)
    return dst


def _mutant(a, repo: Path, mutant: tuple, dst: Path) -> Path:
    rel, old, new, _ = mutant
    _copy_package(repo, dst, a)
    text = (dst / rel).read_text()
    if text.count(old) != 1:
        raise AssertionError(f"mutant {mutant[3]!r}: its snippet occurs {text.count(old)} times in {rel}, "
                             "expected once (update tests/hidden/mutants.py)")
    regions = "\n".join(markers.region_lines((repo / rel).read_text(), rel, a.part_files()[rel]))
    if old.strip().splitlines()[0].strip() not in regions:
        raise AssertionError(f"mutant {mutant[3]!r}: its snippet is not inside {a.id}'s solution regions")
    (dst / rel).write_text(markers.drop_markers(text.replace(old, new)))
    return dst


def check_assignment(a, repo: Path, say=print, jobs: int = 2) -> list[str]:
    """Run the five checks on ``a``; print a line per check; return the problems found."""
    problems = []
    t0 = time.perf_counter()

    def verdict(ok, text):
        say(f"  {'ok  ' if ok else 'FAIL'} {text}")
        if not ok:
            problems.append(f"{a.id}: {text}")

    say(f"{a.id}  {a.title}")
    extra = a.independent
    with tempfile.TemporaryDirectory(prefix=f"classroom-check-{a.id}-") as tmp:
        tmp = Path(tmp)
        sol = grade(a.id, repo, repo=repo, extra=extra, require_stamp=False)
        bad_extra = [r.name for r in sol.results if r.extra and r.status != "passed"]
        verdict(sol.score == sol.max_score > 0 and not bad_extra,
                f"solution scores {sol.score:g}/{sol.max_score:g}"
                + (f"; other parts' tests failing: {bad_extra}" if bad_extra else ""))
        for r in sol.graded:
            if r.status != "passed":
                say(f"       {r.name}: {r.status}: {r.message}")

        # Every submission is prepared first, then graded in parallel (each grade is a subprocess).
        released = release(a.id, tmp / "release", repo=repo, package_only=True)
        trip = _round_trip(a, repo, released, tmp / "round-trip")
        mutants = load_mutants(repo).get(a.id, [])
        mutant_dirs = []
        for k, m in enumerate(mutants):
            try:
                mutant_dirs.append(_mutant(a, repo, m, tmp / f"mutant-{k}"))
            except AssertionError as e:
                mutant_dirs.append(e)
        expected_tests(a, repo)     # collected once, before the parallel runs read it
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            g_f = pool.submit(grade, a.id, released, repo=repo, extra=extra)
            back_f = pool.submit(grade, a.id, trip, repo=repo)
            mutant_fs = [d if isinstance(d, AssertionError) else pool.submit(grade, a.id, d, repo=repo)
                         for d in mutant_dirs]
            g, back = g_f.result(), back_f.result()
            mutant_reports = [f if isinstance(f, AssertionError) else f.result() for f in mutant_fs]

        not_named = [r for r in g.graded if f"NotImplementedError: {a.id}:" not in r.message]
        extra_res = [r for r in g.results if r.extra]
        extra_bad = [f"{r.name} ({r.status}: {r.message})" for r in extra_res if r.status != "passed"]
        verdict(g.score == 0 and not not_named and not extra_bad,
                f"release scores {g.score:g}/{g.max_score:g}; {len(g.graded) - len(not_named)}/{len(g.graded)} "
                f"failures name NotImplementedError: {a.id}; {len(extra_res) - len(extra_bad)}/{len(extra_res)} "
                "tests of other parts pass")
        for r in not_named[:5]:
            say(f"       {r.name}: {r.status}: {r.message}")
        for r in extra_bad:
            say(f"       other part: {r}")

        leaks, n = find_leaks(a, repo, released)
        verdict(not leaks, f"no solution line in the release ({n} solution lines searched in package, notebooks, "
                           "tests, STUDENT.md; no marker left)")
        for line in leaks[:10]:
            say(f"       {line}")

        verdict(back.score == back.max_score, f"round trip (solution pasted back) scores "
                                              f"{back.score:g}/{back.max_score:g}")
        for r in back.graded:
            if r.status != "passed":
                say(f"       {r.name}: {r.status}: {r.message}")

        verdict(len(mutants) >= 2, f"{len(mutants)} wrong solutions kept as test data (at least 2)")
        for m, r in zip(mutants, mutant_reports, strict=True):
            if isinstance(r, AssertionError):
                verdict(False, str(r))
                continue
            caught = [x.name.split("::")[-1] for x in r.graded if x.status != "passed"]
            verdict(r.score < r.max_score, f"wrong solution '{m[3]}' scores {r.score:g}/{r.max_score:g}"
                                           + (f" (caught by {len(caught)} tests, e.g. {caught[0]})" if caught else ""))
    say(f"  ({time.perf_counter() - t0:.0f} s)")
    return problems


def check(ids=None, repo=None, say=print, jobs=None) -> list[str]:
    """Check the given assignments (default: every enabled one), grading ``jobs`` submissions at a time
    (default: 2, or 1 on a one-core machine). Returns every problem found."""
    jobs = jobs or min(2, os.cpu_count() or 1)
    repo = Path(repo or repository_root())
    todo = [catalogue.get(i) for i in ids] if ids else catalogue.enabled()
    problems = []
    t0 = time.perf_counter()
    for a in todo:
        problems += check_assignment(a, repo, say, jobs)
    say(f"classroom check: {len(todo)} assignments, {len(problems)} problems, {time.perf_counter() - t0:.0f} s")
    return problems
