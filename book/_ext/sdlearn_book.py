"""The book's Sphinx extension: everything that makes the site offline and keeps it current.

- MathJax 3.2.2 is copied from the ``django-static-mathjax`` package into ``_static/mathjax``
  and ``mathjax_path`` points there, so math renders without a CDN.
- Launch buttons (Colab, Binder) and the repository button exist only when ``repository.url``
  is set in ``_config.yml``; with it empty the pages link nowhere.
- ``{annotated-source} sdlearn/unet.py``: the module's docstrings and comments as notes beside
  its code, split at build time by ``annotate.py`` from the real file.
- ``{chapter-list}``: the chapters named in ``notebooks/README.md``, each linked to its page, or
  marked "not written yet" when its notebook does not exist (nothing vanishes silently).
- ``{notebook-times}``: the measured run time of each chapter, from ``notebook_times.json``
  (written by ``python book/time_notebooks.py``).
- ``{model-shapes}``: the tensor shapes at every arrow of the system, from ``sdlearn.config``.
"""

import json
import re
import shutil
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, str(Path(__file__).parent))
import annotate  # noqa: E402  (book/_ext/annotate.py)

logger = logging.getLogger(__name__)
MATHJAX_FILES = ("tex-chtml.js", "input", "output/chtml", "ui", "a11y", "sre", "adaptors")
CHAPTER_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`(\d\d_\w+)`\s*[—-]+\s*(.+?)\s*\|\s*$")


def repo_root(env):
    return Path(env.srcdir).resolve().parent


# --- Offline MathJax ----------------------------------------------------------------------------

def mathjax_source():
    import mathjax  # the django-static-mathjax package: MathJax 3.2.2 under static/mathjax/es5

    for base in mathjax.__path__:
        es5 = Path(base) / "static" / "mathjax" / "es5"
        if (es5 / "tex-chtml.js").exists():
            return es5
    raise RuntimeError("django-static-mathjax is installed but has no es5/tex-chtml.js")


def copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    source, target = mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    for name in MATHJAX_FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


# --- Configuration: MathJax path, launch buttons from one repository URL ------------------------

def configure(app, config):
    mathjax_source()  # fail early, with a clear message, if the package is missing
    config.mathjax_path = "mathjax/tex-chtml.js"  # relative: served from _static
    config.nb_ipywidgets_js = {}  # myst-nb would add require.js and widget scripts from CDNs
    theme = config.html_theme_options
    if theme.get("repository_url"):
        theme.update(use_repository_button=True, use_issues_button=True)
    else:  # no repository: no launch, repository, issue or edit buttons
        theme["launch_buttons"] = {}
        theme.update(use_repository_button=False, use_issues_button=False,
                     use_edit_page_button=False)
        theme.pop("repository_url", None)


# --- Directives ---------------------------------------------------------------------------------

class MarkdownDirective(SphinxDirective):
    def parse(self, markdown, node):
        self.state.nested_parse(StringList(markdown.splitlines(), source=self.env.docname),
                                self.content_offset, node)
        return node


class AnnotatedSource(MarkdownDirective):
    """``{annotated-source} sdlearn/unet.py``: notes beside code, generated from the file."""

    required_arguments = 1

    def run(self):
        relative = self.arguments[0]
        path = repo_root(self.env) / relative
        self.env.note_dependency(str(path))
        source = path.read_text()
        rows = annotate.split(source)
        page = nodes.container(classes=["annotated-source"])
        intro = (f"Generated when the book is built, from `{relative}` ({len(source.splitlines())} "
                 "lines): the notes are the file's docstrings and comments, the code beside them "
                 "is the file itself, with its line numbers.")
        page += self.parse(intro, nodes.container(classes=["annotated-provenance"]))
        for row in rows:
            if row.heading:
                page += nodes.rubric(row.heading, row.heading, classes=["annotated-heading"])
                continue
            line = min(row.lines) if row.lines else 0
            classes = ["annotated-row"] + ([] if row.has_code else ["annotated-wide"])
            box = nodes.container(classes=classes, ids=[f"L{row.code_start or line}"])
            note = nodes.container(classes=["annotated-note"])
            if row.note:
                self.parse(annotate.to_markdown(row.note), note)
            box += note
            code_box = nodes.container(classes=["annotated-code"])
            if row.has_code:
                code = "\n".join(row.code)
                block = nodes.literal_block(code, code, language="python", linenos=True)
                block["highlight_args"] = {"linenostart": row.code_start}
                code_box += block
            box += code_box
            page += box
        return [page]


def chapters(root):
    """[(number, stem, description)] from the table in notebooks/README.md."""
    rows = []
    for line in (root / "notebooks" / "README.md").read_text().splitlines():
        match = CHAPTER_ROW.match(line)
        if match:
            rows.append((int(match.group(1)), match.group(2), match.group(3)))
    return rows


class ChapterList(MarkdownDirective):
    """The course's chapters as a table linking to each page; missing notebooks are shown."""

    def run(self):
        root = repo_root(self.env)
        self.env.note_dependency(str(root / "notebooks" / "README.md"))
        listed = chapters(root)
        lines = ["| | chapter | what it builds |", "|---|---|---|"]
        for number, stem, description in listed:
            notebook = root / "notebooks" / f"{stem}.ipynb"
            if notebook.exists():
                link = f"[`{stem}`](notebooks/{stem}.ipynb)"
            else:
                link = f"`{stem}` (not written yet)"
                logger.info(f"[sdlearn] chapter {number} ({stem}) has no notebook yet")
            lines.append(f"| {number} | {link} | {description} |")
        extra = sorted(p.stem for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb")
                       if p.stem not in {stem for _, stem, _ in listed})
        for stem in extra:  # a notebook the README does not list yet: still show it
            lines.append(f"| | [`{stem}`](notebooks/{stem}.ipynb) | (not in notebooks/README.md) |")
        return [self.parse("\n".join(lines), nodes.container(classes=["chapter-list"]))]


class NotebookTimes(MarkdownDirective):
    """Measured run time per chapter, from book/notebook_times.json (book/time_notebooks.py)."""

    def run(self):
        root = repo_root(self.env)
        path = Path(self.env.srcdir) / "notebook_times.json"
        self.env.note_dependency(str(path))
        data = json.loads(path.read_text()) if path.exists() else {"notebooks": {}}
        times = data["notebooks"]
        sys.path.insert(0, str(Path(self.env.srcdir)))
        from time_notebooks import source_hash

        lines = ["| chapter | wall time | CPU time | measured on | load before | slowest cell |",
                 "|---|---|---|---|---|---|"]
        total = total_cpu = 0.0
        for number, stem, _ in chapters(root):
            entry, notebook = times.get(stem), root / "notebooks" / f"{stem}.ipynb"
            if not notebook.exists():
                lines.append(f"| {number} `{stem}` | (no notebook yet) | | | | |")
            elif not entry:
                lines.append(f"| {number} `{stem}` | not measured yet | | | | |")
            else:
                total += entry["seconds"]
                changed = entry.get("source_sha256") != source_hash(notebook)
                note = " (chapter changed since)" if changed else ""
                cpu = entry.get("cpu_seconds")
                total_cpu += cpu or 0.0
                lines.append(f"| {number} `{stem}` | {_duration(entry['seconds'])}{note} | "
                             f"{_duration(cpu) if cpu else ''} | {entry['date']} | "
                             f"{entry.get('load_average_before', '')} | "
                             f"{_slowest(entry.get('slowest_cells'))} |")
        lines.append(f"| **all measured chapters** | **{_duration(total)}** | "
                     f"**{_duration(total_cpu)}** | | | |")
        if data.get("machine"):
            lines += ["", f"Measured with `{data['command']}` on: {data['machine']}."]
        return [self.parse("\n".join(lines), nodes.container(classes=["notebook-times"]))]


def _slowest(cells):
    """The slowest cell of a measurement: its seconds and first line (a comment or code)."""
    if not cells:
        return ""
    _, seconds, first_line = cells[0]
    return f"{_duration(seconds)}: `{first_line.lstrip('# ').replace('|', '/')}`"


def _duration(seconds):
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class ModelShapes(MarkdownDirective):
    """The shape at every arrow of the system, computed from sdlearn.config's presets."""

    option_spec = {"preset": directives.unchanged}

    def run(self):
        root = repo_root(self.env)
        self.env.note_dependency(str(root / "sdlearn" / "config.py"))
        sys.path.insert(0, str(root))
        from sdlearn.config import get_config  # dataclasses only: no Keras import

        name = self.options.get("preset", "sd-v1")
        c = get_config(name)
        f, side = c.vae.downsampling_factor, c.image_size
        h = side // f
        te, unet = c.text_encoder, c.unet
        lines = [
            "| arrow | tensor | shape (B images) |", "|---|---|---|",
            "| prompt → tokenizer | token ids, padded with the end token | "
            f"`(B, {te.max_length})` int32 |",
            f"| tokenizer → text encoder → UNet | context c, one vector per token | "
            f"`(B, {te.max_length}, {te.width})` |",
            f"| noise → UNet | latent $x_T \\sim \\mathcal{{N}}(0, I)$ | "
            f"`(B, {h}, {h}, {unet.latent_channels})` |",
            "| inside the UNet loop | one call on the guided batch: with and without the prompt | "
            f"`(2B, {h}, {h}, {unet.latent_channels})` → $\\epsilon_\\theta(x_t, t, c)$ |",
            f"| UNet widths per level | channels at {h}, {h // 2}, {h // 4}, {h // 8} px | "
            f"`{tuple(unet.channels)}` |",
            f"| loop → decoder | clean latent $x_0$, divided by {c.vae.latent_scale} | "
            f"`(B, {h}, {h}, {unet.latent_channels})` |",
            f"| decoder → image | pixels in $[-1, 1]$, then uint8 | `(B, {side}, {side}, 3)` |",
        ]
        return [self.parse("\n".join(lines), nodes.container(classes=["model-shapes"]))]


def setup(app):
    app.connect("config-inited", configure, priority=100)
    app.connect("build-finished", copy_mathjax)
    app.add_directive("annotated-source", AnnotatedSource)
    app.add_directive("chapter-list", ChapterList)
    app.add_directive("notebook-times", NotebookTimes)
    app.add_directive("model-shapes", ModelShapes)
    app.add_css_file("sdlearn.css")
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
