"""Split a Python module into notes and code, labml-style: the book's annotated-source pages.

Pure Python (``ast`` and ``tokenize``), no Sphinx, so the tests can check it directly. The rules:

- The module docstring is the first note, with no code beside it.
- A ``def`` or ``class`` with a docstring starts a new row: the docstring is the note, the
  signature and the body (without the docstring) are the code.
- A run of full-line ``#`` comments starts a new row: the comments are the note, the code that
  follows is the code. A comment just above a documented ``def`` is merged with its docstring.
- A comment that looks like ``# --- Title ------`` becomes a heading row.
- Trailing comments (``x = conv(x)  # (B, 64, 64, 320)``) stay in the code: they annotate shapes.

Every line of the file lands in exactly one row (``Row.lines``), so nothing is silently dropped.

Notes become MyST Markdown (``to_markdown``): ``$...$`` is math, ``code`` spans and *emphasis*
work, and a block indented by 4 or more spaces is shown verbatim (as Python when it parses;
a reST-style ``::`` before it shows as one colon).
"""

import ast
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass, field

HEADING = re.compile(r"^-{2,}\s*(.*?)\s*-*$")


@dataclass
class Row:
    note: list = field(default_factory=list)  # prose lines (a list of paragraphs' lines)
    code: list = field(default_factory=list)  # source lines, indentation kept
    code_start: int = 0  # 1-based line number of code[0] in the file
    lines: set = field(default_factory=set)  # every file line this row accounts for
    heading: str = ""  # a "# --- Title ---" comment

    @property
    def has_code(self):
        return any(line.strip() for line in self.code)


def _docstrings(tree):
    """{first line of the owner (decorators included): (docstring start, end, cleaned text)}."""
    found = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            continue
        expr = body[0]
        if isinstance(node, ast.Module):
            owner = 0  # the module: no header lines
        else:
            owner = min([node.lineno] + [d.lineno for d in node.decorator_list])
        found[owner] = (expr.lineno, expr.end_lineno, inspect.cleandoc(expr.value.value))
    return found


def _comment_lines(source):
    """{line number: comment text} for lines that hold only a comment."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and not token.line[: token.start[1]].strip():
            text = token.string[1:]
            comments[token.start[0]] = text[1:] if text.startswith(" ") else text
    return comments


def split(source):
    """The module as a list of ``Row``s, top to bottom."""
    lines = source.splitlines()
    docstrings = _docstrings(ast.parse(source))
    comments = _comment_lines(source)
    rows = [Row()]

    def new_row():
        if rows[-1].note or rows[-1].has_code or rows[-1].heading:
            rows.append(Row())
        else:  # only blank lines so far: keep accounting for them in the new row
            rows[-1].code = []
        return rows[-1]

    if 0 in docstrings:  # the module docstring
        start, end, text = docstrings[0]
        rows[-1].note = text.splitlines()
        rows[-1].lines.update(range(start, end + 1))
        rows.append(Row())  # the module's story stands alone, full width; the imports follow
        skip_to = end
    else:
        skip_to = 0

    number = skip_to
    while number < len(lines):
        number += 1
        line = lines[number - 1]
        if number in docstrings:  # a documented def or class starts here
            start, end, text = docstrings[number]
            row = rows[-1]
            if row.has_code or row.heading or not row.note:
                row = new_row()
            elif row.note:  # a comment right above: keep it, then the docstring
                row.note += [""]
            row.note += text.splitlines()
            row.code = lines[number - 1: start - 1]
            row.code_start = number
            row.lines.update(range(number, end + 1))
            # Lines after the closing quotes on the same line (rare) would be lost: refuse them.
            tail = lines[end - 1].split('"""')[-1].split("'''")[-1].strip()
            if tail and not tail.startswith("#"):
                raise ValueError(f"code after a docstring on line {end}: {tail!r}")
            if end < len(lines) and not lines[end].strip():
                end += 1  # the blank line after a docstring: it separated note from code
                row.lines.add(end)
            number = end
            continue
        if number in comments:
            run = [number]
            while run[-1] + 1 in comments:
                run.append(run[-1] + 1)
            texts = [comments[n] for n in run]
            heading = HEADING.match(texts[0])
            if heading and len(run) == 1:
                row = new_row()
                row.heading = heading.group(1)
                row.lines.add(number)
                rows.append(Row())
            else:
                row = rows[-1]
                if row.has_code or row.heading:
                    row = new_row()
                row.note += ([""] if row.note else []) + texts
                row.lines.update(run)
            number = run[-1]
            continue
        row = rows[-1]
        if not row.code and not line.strip():
            row.lines.add(number)  # a blank line before any code: account for it, show nothing
            continue
        if not row.code:
            row.code_start = number
        row.code.append(line)
        row.lines.add(number)

    for row in rows:
        while row.code and not row.code[-1].strip():
            row.code.pop()
    return [row for row in rows if row.note or row.has_code or row.heading]


# --- Notes as MyST Markdown ---------------------------------------------------------------------

_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def _escape_prose(text):
    """Markdown-escape what a docstring means literally: ``<`` (not HTML) and ``*`` inside words
    (``H*W`` is a product, not emphasis). Code spans are left alone."""
    out, last = [], 0
    for match in _CODE_SPAN.finditer(text):
        out.append(_escape_plain(text[last: match.start()]))
        out.append(match.group(0))
        last = match.end()
    out.append(_escape_plain(text[last:]))
    return "".join(out)


def _escape_plain(text):
    text = text.replace("<", r"\<")
    return re.sub(r"(?<=[\w)\]])\*(?=[\w(\[])", r"\\*", text)


def _verbatim(block):
    code = textwrap.dedent("\n".join(block)).strip("\n")
    try:
        ast.parse(code)
        language = "python"
    except SyntaxError:
        language = "text"
    return ["", f"```{language}", *code.splitlines(), "```", ""]


def to_markdown(note_lines):
    """Docstring or comment lines -> MyST Markdown."""
    out, block = [], []
    for line in note_lines:
        indented = len(line) - len(line.lstrip(" ")) >= 4 and line.strip()
        if indented or (block and not line.strip()):
            block.append(line)
            continue
        if block:
            out += _verbatim(block)
            block = []
        if line.rstrip().endswith("::"):  # reST's "the block below is literal": show one colon
            line = line.rstrip()[:-1]
        out.append(_escape_prose(line))
    if block:
        out += _verbatim(block)
    return "\n".join(out).strip("\n")
