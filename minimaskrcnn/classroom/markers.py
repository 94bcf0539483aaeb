"""Solution markers in the real source, nbgrader's convention, and what a release does with them.

A region of a function's body between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` comment lines
(``// ### BEGIN SOLUTION`` in CUDA C) is a part an assignment can hand out. The function's signature and
docstring stay outside the markers, so a student gets them. Which function a region belongs to is found
with :mod:`ast` for Python and with a brace scan for ``.cu`` files, so the catalogue names parts as
``path::qualname`` (``minimaskrcnn/nn/norm.py::batch_norm_forward``, ``...::BoxCoder.encode``).

A release replaces the regions of the assignment's functions by a stub and drops the marker lines of
every other region (their solutions stay: other parts of the detector keep working).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
_MARK = re.compile(r"^\s*(?://\s*)?### (BEGIN|END) SOLUTION\s*$")


class MarkerError(ValueError):
    """Markers that do not pair up, or a region outside any function."""


@dataclass(frozen=True)
class Region:
    begin: int          # 0-based line index of the BEGIN marker
    end: int            # 0-based line index of the END marker
    indent: str         # the BEGIN marker's indentation: the stub's
    function: str       # qualname of the innermost enclosing function ('' if none)


def is_marker(line: str) -> bool:
    return bool(_MARK.match(line))


def find_regions(text: str, path: str) -> list[Region]:
    """Every marked region of ``text``, with its enclosing function. Unpaired or nested markers raise."""
    lines = text.splitlines()
    spans = function_spans(text, path)
    regions, begin = [], None
    for i, line in enumerate(lines):
        m = _MARK.match(line)
        if not m:
            continue
        if m.group(1) == "BEGIN":
            if begin is not None:
                raise MarkerError(f"{path}:{i + 1}: BEGIN SOLUTION inside the region opened at line {begin + 1}")
            begin = i
        else:
            if begin is None:
                raise MarkerError(f"{path}:{i + 1}: END SOLUTION without a BEGIN SOLUTION")
            inside = [(s, e, q) for q, (s, e) in spans.items() if s <= begin <= e]  # END may trail the last statement
            func = max(inside)[2] if inside else ""   # the innermost: the latest start
            indent = re.match(r"\s*", lines[begin]).group(0)
            regions.append(Region(begin, i, indent, func))
            begin = None
    if begin is not None:
        raise MarkerError(f"{path}:{begin + 1}: BEGIN SOLUTION is never closed")
    return regions


def function_spans(text: str, path: str) -> dict[str, tuple[int, int]]:
    """``qualname -> (first line, last line)``, 0-based, of every function (and method) in ``text``."""
    if path.endswith(".py"):
        try:
            return _python_spans(text)
        except SyntaxError as e:
            raise MarkerError(f"{path}:{e.lineno}: not valid Python ({e.msg})") from None
    if path.endswith((".cu", ".cuh", ".h")):
        return _c_spans(text)
    return {}


def _python_spans(text: str) -> dict[str, tuple[int, int]]:
    spans = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                    spans[name] = (first - 1, child.end_lineno - 1)
                visit(child, name + ".")

    visit(ast.parse(text), "")
    return spans


_C_FUNC = re.compile(r"^[ \t]*(?:template\s*<[^>]*>\s*)?(?:[\w:<>*&]+[ \t]+)+\**(\w+)\s*\(", re.M)


def _c_spans(text: str) -> dict[str, tuple[int, int]]:
    """Functions of a CUDA C file: a definition at the top level, from its first line to its closing brace."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    spans, depth, i = {}, 0, 0
    while i < len(code):
        c = code[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and (i == 0 or code[i - 1] == "\n"):
            m = _C_FUNC.match(code, i)
            if m and m.group(1) not in ("if", "for", "while", "switch", "return"):
                j = code.find("{", m.end())
                semi = code.find(";", m.end())
                if j != -1 and (semi == -1 or j < semi):   # a definition, not a declaration
                    k, d = j, 0
                    while k < len(code):
                        d += {"{": 1, "}": -1}.get(code[k], 0)
                        if d == 0:
                            break
                        k += 1
                    spans[m.group(1)] = (code.count("\n", 0, i), code.count("\n", 0, k))
                    i = k + 1
                    continue
        i += 1
    return spans


def python_stub(indent: str, message: str) -> list[str]:
    return [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError({message!r})"]


def cuda_stub(indent: str, message: str) -> list[str]:
    # NOT_IMPLEMENTED is defined by the release's prelude (see release.CUDA_PRELUDE): the CPU emulator
    # turns it into Python's NotImplementedError after the launch; on a GPU it stops the kernel.
    msg = message.replace("\\", "\\\\").replace('"', '\\"')
    return [f"{indent}// YOUR CODE HERE", f'{indent}NOT_IMPLEMENTED("{msg}");']


def strip_text(text: str, path: str, functions: dict[str, str]) -> tuple[str, list[Region]]:
    """``text`` with the regions of ``functions`` (qualname -> stub message) replaced by stubs and every
    other marker line dropped. Returns the new text and the regions stubbed."""
    lines = text.splitlines()
    regions = find_regions(text, path)
    stub = cuda_stub if path.endswith((".cu", ".cuh", ".h")) else python_stub
    stubbed = [r for r in regions if r.function in functions]
    out, i = [], 0
    by_begin = {r.begin: r for r in stubbed}
    while i < len(lines):
        r = by_begin.get(i)
        if r is not None:
            out.extend(stub(r.indent, functions[r.function]))
            i = r.end + 1
            continue
        if not is_marker(lines[i]):
            out.append(lines[i])
        i += 1
    return "\n".join(out) + ("\n" if text.endswith("\n") else ""), stubbed


def stub_every_region(text: str, stub: str) -> str:
    """``text`` with every marked region replaced by ``stub`` (at the region's indentation), whatever
    encloses it: for the notebook generator scripts, whose solution cells sit inside string literals."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        m = _MARK.match(line)
        if m and m.group(1) == "BEGIN":
            inside = True
            indent = re.match(r"\s*", line).group(0)
            out += [indent + s + "\n" for s in stub.splitlines()]
        elif m:
            inside = False
        elif not inside:
            out.append(line)
    return "".join(out)


def drop_markers(text: str) -> str:
    """``text`` without its marker lines (the solutions stay)."""
    keep = [line for line in text.splitlines(keepends=True) if not is_marker(line)]
    return "".join(keep)


def region_lines(text: str, path: str, functions) -> list[str]:
    """The solution lines (stripped of indentation) inside the regions of ``functions``."""
    lines = text.splitlines()
    return [lines[k].strip() for r in find_regions(text, path) if r.function in functions
            for k in range(r.begin + 1, r.end)]


def put_back(release_text: str, solution_text: str, path: str, functions) -> str:
    """The round trip: ``release_text`` with each of ``functions`` replaced by the solution's whole
    function (markers dropped), as a student pasting in the solution would."""
    sol_lines = drop_markers(solution_text).splitlines()
    sol_spans = function_spans(drop_markers(solution_text), path)
    rel_lines = release_text.splitlines()
    rel_spans = function_spans(release_text, path)
    # Replace from the bottom up so earlier spans keep their line numbers.
    for name in sorted(functions, key=lambda q: rel_spans[q][0], reverse=True):
        s, e = rel_spans[name]
        ss, se = sol_spans[name]
        rel_lines[s:e + 1] = sol_lines[ss:se + 1]
    return "\n".join(rel_lines) + ("\n" if release_text.endswith("\n") else "")
