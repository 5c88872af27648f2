"""The trace side's picture: modules, lines, largest class and function (issue 19).

Usage::

    python benchmarks/trace_package_picture.py SRC_ROOT [SRC_ROOT ...]

``SRC_ROOT`` is a ``src/greyanom`` folder (e.g. of this checkout, or of ``git archive main``).
The trace side is ``traces/`` (or, before issue 19, ``shape/`` plus the root modules
``_wafer_frames.py``, ``_wafer_model.py``, ``_multiway.py``, ``_trace_persist.py``). Lines are
physical lines of the source, docstrings included; a class's size with its in-package bases
is its own lines plus those of every base class defined on the trace side; a class's code
lines leave out its docstrings and those of its methods (numpydoc parameter sections make a
detector's docstring long: it documents every constructor parameter). Static (``ast``):
nothing is imported.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT_TRACE_MODULES = ("_wafer_frames.py", "_wafer_model.py", "_multiway.py", "_trace_persist.py")


def trace_modules(root):
    root = Path(root)
    pkg = root / "traces" if (root / "traces" / "_kernels.py").exists() else root / "shape"
    files = sorted(pkg.glob("*.py")) + [root / m for m in ROOT_TRACE_MODULES if (root / m).exists()]
    return files


def _docstring_lines(node):
    """Lines of the docstrings of ``node`` and of every class or function inside it."""
    n = 0
    for sub in ast.walk(node):
        if isinstance(sub, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and sub.body:
            first = sub.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str):
                n += first.end_lineno - first.lineno + 1
    return n


def picture(root):
    classes, funcs, lines, n_mod = {}, [], 0, 0
    for f in trace_modules(root):
        src = f.read_text()
        n_mod += 1
        lines += len(src.splitlines())
        tree = ast.parse(src)
        for node in ast.walk(tree):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef):
                bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
                n_methods = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
                classes[node.name] = (size, bases, f.name, n_methods, size - _docstring_lines(node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n_args = len(node.args.args) + len(node.args.kwonlyargs) + len(node.args.posonlyargs)
                funcs.append((size, node.name, f.name, n_args))

    def with_bases(name, seen=()):
        size, bases, _, n, _ = classes[name]
        total, methods = size, n
        for b in bases:
            if b in classes and b not in seen:
                s, m = with_bases(b, (*seen, name))
                total, methods = total + s, methods + m
        return total, methods

    big = max(classes, key=lambda c: classes[c][0])
    det = "ShapeSignatureDetector"
    det_total, det_methods = with_bases(det)
    f = max(funcs)
    fb = next(x for x in funcs if x[1] == "fit_batch")
    return {
        "modules": n_mod,
        "lines": lines,
        "largest class": f"{big} ({classes[big][0]} lines, {classes[big][4]} without docstrings, "
                         f"{classes[big][2]})",
        f"{det} with its in-package bases": f"{det_total} lines, {det_methods} methods, "
                                            f"bases {classes[det][1]}",
        "largest function": f"{f[1]} ({f[0]} lines, {f[2]})",
        "fit_batch": f"{fb[0]} lines, {fb[3]} arguments",
        "classes over 300 lines": ", ".join(f"{c} ({v[0]})" for c, v in classes.items() if v[0] > 300) or "none",
        "classes over 300 lines without docstrings": ", ".join(
            f"{c} ({v[4]})" for c, v in classes.items() if v[4] > 300) or "none",
    }


if __name__ == "__main__":
    for root in sys.argv[1:]:
        print(f"== {root}")
        for k, v in picture(root).items():
            print(f"{k:45s} {v}")
