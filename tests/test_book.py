"""The Jupyter Book, built with the smoke profile and opened in headless Chromium.

``make book`` executes the numbered notebooks with papermill and renders them with
``jupyter-book build``; test_notebooks.py checks that the notebooks run, not that the book
shows them. Here the same pipeline builds the book with the smoke profile into a temporary
folder (the repository's ``book/`` is not written), and Chromium, the way a reader's browser
would, loads every page listed in ``_toc.yml``:

* the page shows its chapter's title (the first heading of its notebook or Markdown file);
* no Python traceback or docutils error block made it into the page;
* the page holds at least as many images that the browser decoded (width and height > 0) as
  the executed notebook has ``image/png`` outputs: the matplotlib figures are all there;
* a page whose text has formulas shows them typeset by MathJax, which the book carries, since
  Chromium runs without a network here.

A screenshot of the first page is kept as a build artefact, ``book/_build/screenshot.png``
(git-ignored), and must be a real picture: a PNG of the window's size, over 10 kB, not one
flat colour. Chromium is Debian's ``chromium``, which ``.ci/run`` installs; without it the test
fails rather than skips, so that CI cannot pass without looking at the book.
"""

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.slow  # builds the book: minutes

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1280, 900)
SCREENSHOT = ROOT / "book" / "_build" / "screenshot.png"


def toc_files(entry) -> list[str]:
    """Every ``file`` (or ``root``) of _toc.yml, in order, parts and sections included."""
    if isinstance(entry, list):
        return [name for item in entry for name in toc_files(item)]
    if not isinstance(entry, dict):
        return []
    own = [entry[key] for key in ("root", "file") if key in entry]
    return own + [name for key in ("parts", "chapters", "sections") if key in entry
                  for name in toc_files(entry[key])]


PAGES = toc_files(yaml.safe_load((ROOT / "book" / "_toc.yml").read_text()))


def run(command: list, timeout: int, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{command[:3]} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    """The smoke-profile book, built as `make book BOOK_PROFILE=smoke` would, in a temporary folder."""
    book = tmp_path_factory.mktemp("smoke") / "book"
    (book / "notebooks").mkdir(parents=True)
    for source in (ROOT / "book" / "_config.yml", ROOT / "book" / "_toc.yml",
                   *(ROOT / "book").glob("*.md")):  # intro.md and the appendix pages
        shutil.copy(source, book / source.name)
    # One thread: the tiny runs gain nothing from more, and a busy machine slows them a lot.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for notebook in NOTEBOOKS:
        own = ROOT / "notebooks" / "profiles" / "smoke" / f"{notebook.stem}.yaml"
        run([sys.executable, "-m", "papermill", "--no-progress-bar",
             "-f", ROOT / "notebooks" / "profiles" / "smoke.yaml",
             *(["-f", own] if own.is_file() else []),
             notebook, book / "notebooks" / notebook.name], timeout=600, cwd=ROOT, env=env)
    run([Path(sys.executable).parent / "jupyter-book", "build", book], timeout=300, cwd=ROOT)
    return book


def chromium(tmp_path: Path, *arguments) -> str:
    """Headless Chromium, offline, as root, with a fresh profile; its stdout."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install -y chromium; .ci/run does it)")
    profile = tmp_path / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    return run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                "--virtual-time-budget=10000", *arguments], timeout=120).stdout


# Loads a page in a frame and, once it has loaded (images included) and MathJax has typeset it,
# writes the page's DOM and the decoded size of each of its images into this page, which
# --dump-dom then prints. Reading
# the frame needs --allow-file-access-from-files (file:// pages are otherwise cross-origin).
PROBE = """<!DOCTYPE html><html><body>
<pre id="sizes"></pre><pre id="dom"></pre>
<iframe id="page" src="{url}" width="{width}" height="{height}"></iframe>
<script>
document.getElementById("page").onload = function () {{
  var page = this.contentDocument, mathjax = this.contentWindow.MathJax;
  var record = function () {{
    document.getElementById("sizes").textContent = Array.from(
        page.images, function (image) {{ return image.naturalWidth + "x" + image.naturalHeight; }}).join(" ");
    document.getElementById("dom").textContent = page.documentElement.outerHTML;
  }};
  // MathJax typesets after the load event: wait for it where the page has it.
  if (mathjax && mathjax.startup && mathjax.startup.promise) {{
    mathjax.startup.promise.then(record, record);
  }} else {{
    record();
  }}
}};
</script></body></html>
"""


def rendered(tmp_path: Path, page: Path) -> tuple[str, list[str]]:
    """The page's DOM after Chromium loaded it, and its images' decoded sizes (``WxH``)."""
    probe = tmp_path / "probe.html"
    probe.write_text(PROBE.format(url=page.as_uri(), width=WINDOW[0], height=WINDOW[1]))
    dump = chromium(tmp_path, "--allow-file-access-from-files", "--dump-dom", probe.as_uri())
    found = {name: html.unescape(text)
             for name, text in re.findall(r'<pre id="(sizes|dom)">(.*?)</pre>', dump, re.S)}
    assert found.get("dom"), f"Chromium did not load {page}:\n{dump[:2000]}"
    return found["dom"], found["sizes"].split()


def source_of(book: Path, name: str) -> tuple[str, int, int, bool]:
    """The title of a toc entry (its first heading), its number of image/png outputs and of
    Markdown outputs holding a table (the report tables a cell displays), and whether its text
    has math ($...$)."""
    notebook = book / f"{name}.ipynb"
    if notebook.exists():
        cells = json.loads(notebook.read_text())["cells"]
        text = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
        outputs = [output.get("data", {}) for cell in cells for output in cell.get("outputs", [])]
        images = sum("image/png" in data for data in outputs)
        tables = sum("|---" in "".join(data.get("text/markdown", "")) for data in outputs)
    else:
        text, images, tables = (book / f"{name}.md").read_text(), 0, 0
    has_math = re.search(r"\$[^$\n]+\$", text) is not None
    return re.search(r"^# (.+)$", text, re.M).group(1).strip(), images, tables, has_math


@pytest.mark.parametrize("name", PAGES)
def test_every_page_of_the_toc_renders_with_its_figures(book, name, tmp_path):
    page = book / "_build" / "html" / f"{name}.html"
    assert page.exists(), f"{name} is in _toc.yml but the build has no {page.name}"
    title, images, tables, has_math = source_of(book, name)
    dom, sizes = rendered(tmp_path, page)
    # The book carries MathJax (sphinx-mathjax-offline): formulas render without a network.
    if has_math:
        assert "<mjx-container" in dom, f"{name}: its formulas were not typeset"
    # A displayed Markdown table must render as a table, not as its pipes and dashes.
    assert dom.count("<table") >= tables, f"{name}: {tables} Markdown tables, rendered {dom.count('<table')}"

    headings = [html.unescape(re.sub(r"<[^>]+>", "", heading))
                for heading in re.findall(r"<h1[^>]*>(.*?)</h1>", dom, re.S)]
    assert any(title in heading for heading in headings), f"{name}: no <h1> {title!r} in {headings}"
    errors = re.findall(r'class="[^"]*\b(?:traceback|system-message)\b[^"]*"', dom)
    assert not errors and "Traceback (most recent call last)" not in dom, f"{name}: {errors}"
    shown = [size for size in sizes if "0" not in size.split("x")]
    assert len(shown) >= images, f"{name}: {images} figures in the notebook, images shown: {sizes}"


def test_the_smoke_books_tables_name_the_data_they_were_measured_on(book):
    """The smoke profile trains on digits (chapter 6 on synthetic images) through the quick
    sweep files: every report table says so, and none says Fashion-MNIST."""
    for notebook in NOTEBOOKS:
        cells = json.loads((book / "notebooks" / notebook.name).read_text())["cells"]
        shown = ["".join(output.get("data", {}).get("text/markdown", ""))
                 for cell in cells for output in cell.get("outputs", [])]
        tables = [text for text in shown if "|---" in text]
        assert not [text for text in tables if "fashion" in text.lower()], notebook.name
        reports = [text for text in tables if "; trained on " in text]
        assert all("; trained on digits**" in text for text in reports), notebook.name


def test_first_page_screenshot_is_kept_and_is_a_picture(book, tmp_path):
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    first = book / "_build" / "html" / f"{PAGES[0]}.html"
    chromium(tmp_path, "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}",
             f"--screenshot={SCREENSHOT}", first.as_uri())

    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG"
    assert len(data) > 10_000, f"the screenshot is only {len(data)} bytes"
    with Image.open(SCREENSHOT) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5, f"the screenshot is nearly one flat colour (std {pixels.std():.1f})"
