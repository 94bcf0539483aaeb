"""The grader's pytest plugin: keep the tests of one assignment, write one JSON line per outcome.

The grader copies this file next to its own copy of the tests and loads it with ``-p``; it is not
imported from the submission (a student could edit that). Lines are flushed as they happen, so a run
that is killed (an endless loop in C code, a crash) still leaves what was decided before.
"""
import json


OUTPUT_CAP = 2000   # characters of a test's captured output kept in the report


def pytest_addoption(parser):
    g = parser.getgroup("classroom")
    g.addoption("--classroom-assignment", default=None, help="keep only this assignment's graded tests")
    g.addoption("--classroom-report", default=None, help="write one JSON line per test outcome here")
    g.addoption("--classroom-extra", action="append", default=[], help="also run this test node id (0 points)")


_REPORTER = None


class _Reporter:
    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")

    def write(self, **record):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


def pytest_configure(config):
    global _REPORTER
    path = config.getoption("--classroom-report")
    if path:
        _REPORTER = _Reporter(path)
        try:   # which package is graded: the grader checks that it is the submission's
            import minimaskrcnn
            _REPORTER.write(event="package", path=str(getattr(minimaskrcnn, "__file__", "")))
        except BaseException as e:  # noqa: B036 - a submission that does not import is graded, not fatal
            _REPORTER.write(event="package", path="", error=f"{type(e).__name__}: {e}"[:300])


def _points(item, assignment):
    for mark in item.iter_markers("assignment"):
        if mark.kwargs.get("id") == assignment:
            return float(mark.kwargs.get("points", 1))
    return None


def pytest_collection_modifyitems(config, items):
    assignment = config.getoption("--classroom-assignment")
    if not assignment:
        return
    extra = set(config.getoption("--classroom-extra"))
    keep, drop = [], []
    for item in items:
        points = _points(item, assignment)
        is_extra = item.nodeid in extra
        if points is None and not is_extra:
            drop.append(item)
            continue
        keep.append(item)
        item._classroom = (points or 0.0, points is None)
        if _REPORTER:
            _REPORTER.write(event="collected", nodeid=item.nodeid, points=points or 0.0, extra=points is None,
                            hidden="/hidden/" in "/" + item.nodeid, skip=_skip_reason(item))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collectreport(report):
    if report.failed:
        if _REPORTER:
            _REPORTER.write(event="collect_error", nodeid=report.nodeid, message=_first_line(report))


def pytest_runtest_logstart(nodeid, location):
    if _REPORTER:
        _REPORTER.write(event="start", nodeid=nodeid)


def pytest_runtest_logreport(report):
    if _REPORTER is None:
        return
    if report.when == "call" or report.failed or report.skipped:
        output = "".join(content for _, content in report.sections)
        if len(output) > OUTPUT_CAP:
            output = output[:OUTPUT_CAP] + f"\n... ({len(output) - OUTPUT_CAP} more characters of output cut)"
        _REPORTER.write(event="result", nodeid=report.nodeid, when=report.when, outcome=report.outcome,
                  message=_first_line(report) if not report.passed else "", output=output)


def _skip_reason(item):
    """Why ``item`` skips here whatever the code under test does (no GPU, no compiler), or ''."""
    try:
        from _pytest.skipping import evaluate_skip_marks
        skip = evaluate_skip_marks(item)
    except Exception:  # noqa: BLE001 - a private pytest API: without it, no test is known to skip
        return ""
    return (skip.reason or "skipped") if skip is not None else ""


def _first_line(report):
    """The failure's one-line reason: 'NotImplementedError: A2: ...', 'AssertionError: ...'."""
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and crash.message:
        text = crash.message
    elif isinstance(longrepr, tuple) and len(longrepr) == 3:   # a skip: (path, line, reason)
        text = str(longrepr[2])
    else:
        text = str(longrepr or "")
        lines = [ln for ln in text.splitlines() if ln.startswith("E ")] or text.splitlines()[-1:]
        text = lines[0][1:].strip() if lines and lines[0].startswith("E ") else (lines[0] if lines else "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    # 'AssertionError:' alone says nothing: NumPy's assert_allclose puts the reason on the next lines.
    short = lines[0] if not lines[0].endswith(":") else "; ".join(lines[:4]).replace(":;", ":", 1)
    return short[:300]
