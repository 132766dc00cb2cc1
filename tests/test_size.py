"""The package is the textbook: each file stays about as short as KerasCV's first version.

Code lines are lines with code on them: blank lines, comments and docstrings do not count.
"""

import ast
import io
import tokenize
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sdlearn"
BUDGETS = {"text_encoder.py": 95, "unet.py": 190, "vae.py": 95, "sampler.py": 110,
           "tokenizer.py": 117}


def code_lines(path):
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_code_line_budget(name):
    count = code_lines(PACKAGE / name)
    print(f"{name}: {count} code lines (budget {BUDGETS[name]})")
    assert count <= BUDGETS[name]


def test_counter_ignores_comments_and_docstrings(tmp_path):
    example = tmp_path / "x.py"
    example.write_text('"""Doc\nstring."""\n# comment\n\ndef f(x):\n    """Doc."""\n'
                       '    return (x +\n            1)  # note\n')
    assert code_lines(example) == 3
