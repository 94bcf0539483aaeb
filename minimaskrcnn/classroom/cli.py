"""``python -m minimaskrcnn classroom list | release | grade | check`` (wired into minimaskrcnn/cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from . import catalogue


def add_parser(sub, common=None):
    """Add the ``classroom`` command to the main parser's subparsers ``sub``."""
    c = sub.add_parser("classroom", help="assignments for teachers: list, release, grade, check")
    if common is not None:
        common(c, device=False)
    cs = c.add_subparsers(dest="classroom_command", required=True)
    cs.add_parser("list", help="the catalogue: id, title, chapter, parts, points, time")
    r = cs.add_parser("release", help="a student copy with the assignment's parts stubbed out")
    r.add_argument("assignment")
    r.add_argument("--out", required=True, help="folder to create (refused if it exists, unless --force)")
    r.add_argument("--force", action="store_true", help="replace an earlier release in --out")
    g = cs.add_parser("grade", help="score a student's copy (table; --json for Gradescope)")
    g.add_argument("assignment")
    g.add_argument("--submission", required=True, help="the student's release folder")
    g.add_argument("--json", default=None, help="write Gradescope's results.json here")
    g.add_argument("--timeout", type=float, default=60, help="seconds per test (default 60)")
    g.add_argument("--total-timeout", type=float, default=900, help="seconds for all tests (default 900)")
    k = cs.add_parser("check", help="self-test of the catalogue (what CI runs)")
    k.add_argument("assignments", nargs="*", help="default: every enabled assignment")
    return c


def cmd_list(args):
    from .grade import expected_tests, repository_root
    repo = repository_root()
    rows = []
    for a in catalogue.CATALOGUE:
        points = "-"
        if a.enabled and (repo / "tests").is_dir():
            try:
                tests = expected_tests(a, repo)
                points = f"{sum(t['points'] for t in tests.values() if not t.get('skip')):g}"
            except catalogue.ClassroomError:
                points = "?"
        parts = ", ".join(p.split("::")[1] for p in a.parts) if a.parts else f"(planned: {a.note})"
        rows.append((a.id, a.title, a.chapter[:2], points, f"{a.minutes} min", a.difficulty, parts))
    heads = ("id", "title", "nb", "points", "time", "level", "the student writes")
    widths = [max(len(str(r[i])) for r in rows + [heads]) for i in range(len(heads) - 1)]
    for row in [heads] + rows:
        print("  ".join(f"{str(v):<{w}}" for v, w in zip(row[:-1], widths)) + "  " + row[-1])


def cmd_release(args):
    from .release import release
    from .student import test_command
    out = release(args.assignment, args.out, force=args.force)
    a = catalogue.get(args.assignment)
    print(f"released {a.id} to {out}: the student writes {', '.join(p.split('::')[1] for p in a.parts)}; "
          f"instructions in {Path(out) / 'STUDENT.md'}")
    print(f"students test with: {test_command(a)}")


def cmd_grade(args):
    from .grade import grade, write_results_json
    report = grade(args.assignment, args.submission, per_test_timeout=args.timeout,
                   total_timeout=args.total_timeout)
    print(report.table())
    if args.json:
        write_results_json(report, args.json)
        print(f"wrote {args.json}")


def cmd_check(args):
    from .check import check
    problems = check(args.assignments or None)
    if problems:
        raise catalogue.ClassroomError(f"{len(problems)} problems: " + "; ".join(problems[:3]))


COMMANDS = {"list": cmd_list, "release": cmd_release, "grade": cmd_grade, "check": cmd_check}


def run(args):
    """Run a parsed ``classroom`` command; input problems raise :class:`catalogue.ClassroomError`."""
    from .markers import MarkerError
    try:
        return COMMANDS[args.classroom_command](args)
    except MarkerError as e:
        raise catalogue.ClassroomError(str(e)) from None


if __name__ == "__main__":   # pragma: no cover
    sys.exit("run: python -m minimaskrcnn classroom ...")
