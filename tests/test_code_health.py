"""Code health outside tests/: no function longer than :data:`MAX_CODE_LINES` code lines.

A function's code lines are the lines from its ``def`` to its end, less its
docstring, blank lines and lines that hold only a comment (a nested function's
lines count in the function around it too).
"""

import ast
import io
import os
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pmm_jax", "experiments")
MAX_CODE_LINES = 90


def _python_files():
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def _comment_only_lines(source: str) -> set[int]:
    """Line numbers whose only token is a comment."""
    code, comments = set(), set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments.add(token.start[0])
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code.update(range(token.start[0], token.end[0] + 1))
    return comments - code


def _docstring_lines(node) -> set[int]:
    body = node.body
    first = body[0] if body else None
    is_doc = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    return set(range(first.lineno, first.end_lineno + 1)) if is_doc else set()


def function_lengths(path: str) -> list[tuple[str, int]]:
    """``[(qualified name, code lines)]`` of every function in the file at ``path``."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    blank = {i + 1 for i, line in enumerate(lines) if not line.strip()}
    skip = blank | _comment_only_lines(source)
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = set(range(child.lineno, child.end_lineno + 1))
                count = len(span - skip - _docstring_lines(child))
                name = f"{prefix}{child.name}"
                out.append((name, count))
                name += "."
            elif isinstance(child, ast.ClassDef):
                name = f"{prefix}{child.name}."
            visit(child, name)

    visit(ast.parse(source, filename=path), "")
    return out


def test_counting_skips_docstrings_blank_and_comment_lines(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        'def f(x):\n    """Doc.\n\n    More.\n    """\n\n    # a comment\n'
        "    y = x  # code\n    return y\n\n\nclass C:\n    def g(self):\n"
        "        def h():\n            return 1\n\n        return h\n"
    )
    assert function_lengths(str(path)) == [("f", 3), ("C.g", 4), ("C.g.h", 2)]


def test_no_function_over_90_code_lines():
    long = [
        f"{os.path.relpath(path, ROOT)}:{name} ({count} lines)"
        for path in _python_files()
        for name, count in function_lengths(path)
        if count > MAX_CODE_LINES
    ]
    assert not long, f"functions over {MAX_CODE_LINES} code lines:\n" + "\n".join(long)
