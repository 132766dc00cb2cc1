"""The book builds offline with warnings as errors, and reads right in a real browser.

The build: ``jupyter-book build --all -W --keep-going book/`` into book/_build (the command the
README gives). Then headless Chromium opens every page from a server on 127.0.0.1 and the tests
assert from the rendered page (Chrome DevTools protocol over ``--remote-debugging-pipe``: no
Python dependency beyond the standard library):

- every chapter notebook present in notebooks/ is a page, and every chapter listed in
  notebooks/README.md has its notebook (a missing one fails here, by name);
- figures: each chapter page shows at least as many images as its notebook has image outputs,
  all loaded (``naturalWidth > 0``);
- math is typeset by MathJax (served from the site itself) and no raw TeX is left in the text;
- solutions (cells tagged ``hide-cell``) are collapsed behind a toggle;
- annotated-source pages show notes beside code, and every line of each module is on its page;
- no request leaves the machine: every URL the pages request is on 127.0.0.1 or ``data:``/
  ``blob:``, and every request succeeds. Statically, no built page or stylesheet refers to
  another host in ``src``/``href`` of scripts, stylesheets, fonts, images or frames. Allowed:
  ``<a href>`` links to other sites (a reader may follow them; nothing is loaded by them).
- launch buttons (Colab, Binder) appear only when ``repository.url`` is set in _config.yml.

Screenshots of a few pages go to book/_build/screenshots/ for a person to look at.
"""

import ast
import base64
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
HTML = BOOK / "_build" / "html"
SCREENSHOTS = BOOK / "_build" / "screenshots"
JUPYTER_BOOK = ROOT / ".venv" / "bin" / "jupyter-book"
sys.path.insert(0, str(BOOK / "_ext"))
import annotate  # noqa: E402  (book/_ext/annotate.py, what the annotated pages are made with)

# Each annotated-source page and the module it shows; every other sdlearn module is listed in
# NOT_ANNOTATED with a reason, so a new module cannot be left out by accident.
ANNOTATED = ["config", "tokenizer", "text_encoder", "layers", "unet", "vae", "sampler",
             "pipeline", "fast", "weights", "shapes", "train", "evaluate"]
NOT_ANNOTATED = {"__init__": "lazy exports", "cli": "the command line",
                 "course": "notebook helpers", "checks": "argument checks",
                 "tiny": "where the tiny weights live"}
SCREENSHOT_PAGES = ["intro", "source/unet", "instructors"]


def chapter_notebooks():
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def chapters_in_readme():
    from sdlearn_book import chapters

    return [stem for _, stem, _ in chapters(ROOT)]


def build(book_dir, out_dir):
    shutil.rmtree(out_dir / "_build" / "html", ignore_errors=True)  # no stale pages
    start = time.monotonic()
    run = subprocess.run([str(JUPYTER_BOOK), "build", "--all", "-W", "--keep-going",
                          "--path-output", str(out_dir), str(book_dir)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0 and "build succeeded" in run.stdout, (
        f"jupyter-book build failed:\n{run.stdout[-6000:]}\n{run.stderr[-4000:]}")
    return time.monotonic() - start


@pytest.fixture(scope="module")
def book():
    seconds = build(BOOK, BOOK)
    print(f"book built in {seconds:.0f} s")
    return HTML


def page_names(html_dir):
    return sorted(p.relative_to(html_dir).with_suffix("").as_posix()
                  for p in html_dir.rglob("*.html")
                  if not p.relative_to(html_dir).parts[0].startswith("_"))


# --- What the build produced --------------------------------------------------------------------

def test_every_chapter_is_in_the_book(book):
    pages = set(page_names(book))
    for notebook in chapter_notebooks():
        assert f"notebooks/{notebook.stem}" in pages, f"{notebook.name} has no page in the book"
    listed = chapters_in_readme()
    assert len(listed) == 9 and listed[0].startswith("00_"), listed


def test_every_listed_chapter_has_its_notebook():
    missing = [stem for stem in chapters_in_readme()
               if not (ROOT / "notebooks" / f"{stem}.ipynb").exists()]
    assert not missing, f"chapters listed in notebooks/README.md without a notebook: {missing}"


def test_every_module_has_an_annotated_page(book):
    modules = {p.stem for p in (ROOT / "sdlearn").glob("*.py")}
    unplaced = modules - set(ANNOTATED) - set(NOT_ANNOTATED)
    assert not unplaced, f"sdlearn modules with no annotated page and no reason: {unplaced}"
    for name in ANNOTATED:
        assert (book / "source" / f"{name}.html").exists(), name


@pytest.mark.parametrize("name", ANNOTATED)
def test_annotated_split_keeps_every_line(name):
    source = (ROOT / "sdlearn" / f"{name}.py").read_text()
    rows = annotate.split(source)
    covered = set().union(*(row.lines for row in rows))
    nonblank = {i for i, line in enumerate(source.splitlines(), 1) if line.strip()}
    assert nonblank <= covered, f"lines not on the page: {sorted(nonblank - covered)[:20]}"
    code = "\n".join("\n".join(row.code) for row in rows)
    for node in ast.parse(source).body:  # every top-level def and class is shown as code
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assert f"{'def' if isinstance(node, ast.FunctionDef) else 'class'} {node.name}" in code


def test_slowest_cells_read_from_nbclient_timestamps(tmp_path):
    sys.path.insert(0, str(BOOK))
    from time_notebooks import slowest_cells

    def cell(kind, source, start=None, end=None):
        stamps = {"iopub.execute_input": start, "shell.execute_reply": end} if start else {}
        return {"cell_type": kind, "source": source, "metadata": {"execution": stamps}}

    t = "2026-12-02T01:00:{:02d}.500000Z".format
    executed = tmp_path / "nb.ipynb"
    executed.write_text(json.dumps({"cells": [
        cell("markdown", "# Title"), cell("code", ["# ~3 s: fast\n", "x = 1"], t(0), t(3)),
        cell("code", "# ~40 s: slow\ny = 2", t(3), t(43)), cell("code", "z = 3", t(43), t(44)),
        cell("code", "never run")]}))
    assert slowest_cells(executed, count=2) == [[2, 40.0, "# ~40 s: slow"],
                                                [1, 3.0, "# ~3 s: fast"]]


def test_annotated_notes_become_markdown():
    note = ["The noise eps_theta(x_t, t, c) on (B, H*W, C) tokens, a *cumulative* product,",
            "a <colour> word, math $\\epsilon_\\theta$ and ``code<x>``::", "",
            "    x_t = sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps", "", "after"]
    md = annotate.to_markdown(note)
    assert "H\\*W" in md and "*cumulative*" in md and "\\<colour>" in md
    assert "$\\epsilon_\\theta$" in md and "``code<x>``:\n" in md
    assert "```text\nx_t = sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps\n```" in md


class _Refs(html.parser.HTMLParser):
    """(tag, attribute, url) of everything a page loads; <a href> is navigation, not loading."""

    LOADS = {"script": ["src"], "link": ["href"], "img": ["src", "srcset"],
             "iframe": ["src"], "frame": ["src"], "source": ["src", "srcset"],
             "video": ["src", "poster"], "audio": ["src"], "embed": ["src"], "object": ["data"],
             "track": ["src"], "input": ["src"]}

    def __init__(self):
        super().__init__()
        self.refs, self.styles = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in self.LOADS.get(tag, []):
            if attrs.get(name):
                self.refs.append((tag, name, attrs[name]))
        if attrs.get("style"):
            self.styles.append(attrs["style"])
        if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh":
            self.refs.append((tag, "content", (attrs.get("content") or "").split("url=")[-1]))

    def handle_data(self, data):
        if self.lasttag == "style":
            self.styles.append(data)


def _external(url):
    url = url.strip()
    return bool(re.match(r"^([a-z][a-z0-9+.-]*:)?//", url, re.I)) and not url.startswith("file:")


CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""")


def test_no_page_or_stylesheet_refers_to_another_host(book):
    problems = []
    for page in book.rglob("*.html"):
        parser = _Refs()
        parser.feed(page.read_text(errors="replace"))
        for tag, attribute, url in parser.refs:
            for part in url.split(","):  # srcset lists
                if _external(part.split()[0] if part.split() else ""):
                    problems.append(f"{page.relative_to(book)}: <{tag} {attribute}={url}>")
        for style in parser.styles:
            problems += [f"{page.relative_to(book)}: style url({u})"
                         for u in CSS_URL.findall(style) if _external(u)]
    for sheet in book.rglob("*.css"):
        problems += [f"{sheet.relative_to(book)}: url({u})"
                     for u in CSS_URL.findall(sheet.read_text(errors="replace")) if _external(u)]
    assert not problems, "\n".join(problems[:30])
    assert (book / "_static" / "mathjax" / "tex-chtml.js").exists()


def _launch_links(page):
    text = page.read_text()
    return re.findall(r'href="(https://(?:colab\.research\.google\.com|mybinder\.org)[^"]*)"', text)


def test_no_launch_buttons_without_a_repository_url(book):
    config = (BOOK / "_config.yml").read_text()
    assert re.search(r'^  url: ""', config, re.M), "this test expects repository.url to be empty"
    for page in book.rglob("*.html"):
        assert not _launch_links(page), page
        assert "github.com/executablebooks" not in page.read_text(), page


def test_launch_buttons_with_a_repository_url(tmp_path, book):
    """The same config with repository.url set, on a two-page book: Colab and Binder links."""
    small = tmp_path / "book"
    small.mkdir()
    for name in ("_ext", "_static"):
        shutil.copytree(BOOK / name, small / name)
    (small / "notebooks").symlink_to(ROOT / "notebooks")
    config = (BOOK / "_config.yml").read_text()
    config, count = re.subn(r'^  url: ""', "  url: https://github.com/example-org/sdlearn",
                            config, flags=re.M)
    assert count == 1
    config = config.replace("only_build_toc_files: false", "only_build_toc_files: true")
    (small / "_config.yml").write_text(config)
    stem = chapter_notebooks()[0].stem
    (small / "_toc.yml").write_text(f"format: jb-book\nroot: intro\nchapters:\n"
                                    f"  - file: notebooks/{stem}\n")
    (small / "intro.md").write_text("# Launch test\n\nOne chapter.\n")
    build(small, small)
    links = _launch_links(small / "_build" / "html" / "notebooks" / f"{stem}.html")
    assert (f"https://colab.research.google.com/github/example-org/sdlearn/blob/main/"
            f"notebooks/{stem}.ipynb") in links, links
    assert any(link.startswith("https://mybinder.org/v2/gh/example-org/sdlearn/main?urlpath=")
               and link.endswith(f"notebooks/{stem}.ipynb") for link in links), links


# --- In the browser -----------------------------------------------------------------------------

def find_chromium():
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    if shutil.which("apt-get"):  # scripts/test.sh installs it where apt-get exists
        pytest.fail("Chromium is missing: apt-get install -y chromium (scripts/test.sh does)")
    pytest.skip("no Chromium on this machine; install it to check the rendered book")


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out)."""

    def __init__(self, executable, profile):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def pipes():  # in the child: the protocol's fds are 3 (commands) and 4 (replies)
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe",
                 # Names other than localhost resolve nowhere: a stray request fails fast
                 # (and is still seen and reported by the test).
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
                 "about:blank"]
        self.process = subprocess.Popen([executable, *flags], preexec_fn=pipes, close_fds=False,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id, self._replies, self.events = 0, {}, []
        self._lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable", session=True)

    def _read(self):
        buffer = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._lock:
                for message in messages:
                    data = json.loads(message)
                    if "id" in data:
                        self._replies[data["id"]] = data
                    else:
                        self.events.append(data)
                self._lock.notify_all()

    def call(self, method, session=False, timeout=30, **params):
        with self._lock:
            self._next_id += 1
            number = self._next_id
        message = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(lambda: number in self._replies, timeout):
                raise TimeoutError(method)
            reply = self._replies.pop(number)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def open(self, url, timeout=30):
        """Navigate and wait for the load event; returns the events seen while loading."""
        with self._lock:
            first = len(self.events)
        self.call("Page.navigate", session=True, url=url)
        with self._lock:
            loaded = self._lock.wait_for(lambda: any(
                e["method"] == "Page.loadEventFired" for e in self.events[first:]), timeout)
        assert loaded, f"{url} did not finish loading in {timeout} s"
        return first

    def evaluate(self, expression, timeout=30):
        result = self.call("Runtime.evaluate", session=True, timeout=timeout,
                           expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"]["value"]

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chrome)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# Run in each page once it has loaded: wait for images and MathJax, then report what is shown.
INSPECT = r"""
(async () => {
  const article = document.querySelector('article') || document.body;
  const images = [...article.querySelectorAll('img')];
  await Promise.race([
    Promise.all(images.map(i => i.complete ? null :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); }))),
    new Promise(r => setTimeout(r, 15000))]);
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.right, r.top, r.bottom]; };
  // The prose a reader sees: no code, no outputs, no typeset math, no scripts.
  const prose = article.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, mjx-container, .cell_output, .output, ' +
                         '.annotated-code').forEach(e => e.remove());
  return {
    title: document.title,
    images: images.map(i => ({src: i.getAttribute('src'), width: i.naturalWidth,
                              height: i.naturalHeight, output: !!i.closest('.cell_output')})),
    math: article.querySelectorAll('.math').length,
    typeset: article.querySelectorAll('mjx-container').length,
    untypeset: [...article.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container'))
                 .map(e => e.textContent.slice(0, 80)),
    mathErrors: article.querySelectorAll('mjx-merror, [data-mjx-error]').length,
    prose: prose.textContent,
    hidden: [...article.querySelectorAll('.tag_hide-cell')].map(c => {
      const d = c.querySelector('details');
      const input = c.querySelector('.cell_input');
      return {details: !!d, open: d ? d.open : null,
              shown: input ? input.checkVisibility() : null};
    }),
    rows: [...article.querySelectorAll('.annotated-row')].map(r => ({
      note: r.querySelector('.annotated-note').innerText.trim().length,
      code: r.querySelector('.annotated-code').innerText.trim(),
      noteBox: box(r.querySelector('.annotated-note')),
      codeBox: box(r.querySelector('.annotated-code'))})),
    launch: [...document.querySelectorAll('a')].map(a => a.href)
              .filter(h => /colab\.research|mybinder\.org/.test(h)),
  };
})()
"""

RAW_TEX = [re.compile(p) for p in (r"\\\(", r"\\\)", r"\\\[", r"\\\]", r"\$\$",
                                     r"\$[^$\n]*\\[a-zA-Z]+[^$\n]*\$", r"\$[^$\s]*[_^][^$\s]*\$")]


@pytest.fixture(scope="module")
def rendered(book, tmp_path_factory):
    """{page name: what the browser shows} for every page, and every request they made."""
    executable = find_chromium()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(book)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    browser = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pages = {}
    try:
        start = time.monotonic()
        for name in page_names(book):
            if name in ("genindex", "search", "index"):
                continue
            # Annotated pages put notes beside code from 1500 px on; other pages as on a laptop.
            width = 1600 if name.startswith("source/") else 1280
            browser.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                         height=1600, deviceScaleFactor=1, mobile=False)
            first = browser.open(base + name + ".html")
            pages[name] = browser.evaluate(INSPECT)
            if name in SCREENSHOT_PAGES or name == f"notebooks/{chapter_notebooks()[0].stem}":
                browser.screenshot(SCREENSHOTS / (name.replace("/", "_") + ".png"))
            with browser._lock:
                pages[name]["events"] = browser.events[first:]
        print(f"{len(pages)} pages checked in Chromium in {time.monotonic() - start:.0f} s")
    finally:
        browser.close()
        server.shutdown()
    return pages


def test_no_request_leaves_the_machine(rendered):
    local = ("http://127.0.0.1:", "data:", "blob:", "about:")
    for name, page in rendered.items():
        events = page["events"]
        urls = [e["params"]["request"]["url"] for e in events
                if e["method"] == "Network.requestWillBeSent"]
        assert urls, f"{name}: no requests seen at all; is the network log working?"
        outside = [u for u in urls if not u.startswith(local)]
        assert not outside, f"{name} requested other hosts: {outside}"
        statuses = {e["params"]["response"]["url"]: e["params"]["response"]["status"]
                    for e in events if e["method"] == "Network.responseReceived"}
        bad = {u: s for u, s in statuses.items() if s >= 400}
        failed = [e["params"].get("errorText") for e in events
                  if e["method"] == "Network.loadingFailed"
                  and e["params"].get("errorText") != "net::ERR_ABORTED"]
        assert not bad and not failed, f"{name}: failed requests {bad} {failed}"


def test_every_chapter_shows_its_figures(rendered):
    for notebook in chapter_notebooks():
        cells = json.loads(notebook.read_text())["cells"]
        figures = sum(1 for cell in cells for output in cell.get("outputs", [])
                      if any(k.startswith("image/") for k in output.get("data", {})))
        page = rendered[f"notebooks/{notebook.stem}"]
        shown = [image for image in page["images"] if image["output"]]
        assert len(shown) >= figures, f"{notebook.stem}: {len(shown)} of {figures} figures shown"
        empty = [image["src"] for image in page["images"] if image["width"] == 0]
        assert not empty, f"{notebook.stem}: images that did not load: {empty}"


def test_math_is_typeset_and_no_raw_tex_is_left(rendered):
    pages_with_math = 0
    for name, page in rendered.items():
        assert not page["untypeset"], f"{name}: math left as TeX: {page['untypeset'][:5]}"
        assert page["mathErrors"] == 0, f"{name}: MathJax reported errors"
        pages_with_math += page["math"] > 0
        assert page["typeset"] >= page["math"], name
        for pattern in RAW_TEX:
            found = pattern.search(page["prose"])
            assert not found, f"{name}: raw TeX in the text: {found.group(0)!r}"
    assert rendered["intro"]["math"] >= 5 and pages_with_math >= 3


def test_solutions_are_hidden_behind_a_toggle(rendered):
    for notebook in chapter_notebooks():
        cells = json.loads(notebook.read_text())["cells"]
        tagged = sum("hide-cell" in cell.get("metadata", {}).get("tags", []) for cell in cells)
        hidden = rendered[f"notebooks/{notebook.stem}"]["hidden"]
        assert len(hidden) == tagged, f"{notebook.stem}: {len(hidden)} toggles, {tagged} tagged"
        for cell in hidden:
            assert cell["details"] and cell["open"] is False and cell["shown"] is False, cell


def test_annotated_pages_show_notes_beside_code(rendered):
    for name in ANNOTATED:
        rows = rendered[f"source/{name}"]["rows"]
        source = (ROOT / "sdlearn" / f"{name}.py").read_text()
        assert len(rows) >= 3, f"{name}: {len(rows)} rows"
        assert sum(row["note"] > 0 for row in rows) >= 2, f"{name}: no notes"
        code = "\n".join(row["code"] for row in rows)
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert node.name in code, f"{name}: {node.name} not shown"
        # At 1600 px the note sits left of its code, side by side.
        both = [row for row in rows if row["note"] and row["code"]]
        assert both and all(row["noteBox"][1] <= row["codeBox"][0] for row in both), name


def test_launch_buttons_absent_in_the_browser(rendered):
    assert not any(page["launch"] for page in rendered.values())


def test_screenshots_written(rendered):
    shots = sorted(SCREENSHOTS.glob("*.png"))
    assert len(shots) >= 4 and all(s.stat().st_size > 10_000 for s in shots), shots
