"""The built site in headless Chromium (tools/browser_check.py; `make docs-check` runs the same): every page loads from a
local server with no console error, no failed or outside request, no unrendered maths, no broken image, wide tables
that scroll with a visible cue, no raw Markdown in signatures, every chapter mention a link to a page that exists, and
figures whose text stays readable. Each check is first shown to fail on a page planted with its defect. Skipped when
Chromium is not installed (.ci/run installs it) or the site is not built."""
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = Path(os.environ.get("COMPODISTILL_DOCS", ROOT / "docs"))
sys.path.insert(0, str(ROOT / "tools"))
import browser_check  # noqa: E402

needs_chromium = pytest.mark.skipif(browser_check.find_chromium() is None, reason="no chromium (apt-get install chromium)")
needs_site = pytest.mark.skipif(not (DOCS / "index.html").is_file(), reason="docs/ not built (run make docs)")
FIGURE = "figure text"  # the problems of figures drawn too wide for the column (see test_figures_are_readable)


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("websocket", reason="websocket-client is a dev requirement")
    return browser_check.check_site(DOCS)


# ---------------------------------------------------------------- each check fails on a page planted with its defect

WIDE = "<tr>" + "".join(f'<td style="white-space: nowrap">column {i} of a wide table</td>' for i in range(12)) + "</tr>"
PLANTED = {  # page -> (its <main>, the start of the problem it must raise; None: the good page, no problem)
    "signature.html": ('<div class="cell-output-markdown"><pre><code>def f(\n    x, # a [`Scene`](https://example.org/world.html#scene)\n):</code></pre></div>',
                       "Markdown link shown as text in a signature"),
    "unlinked.html": ("<p>See <code>08_training</code> for the trainer.</p>", "chapter named but not linked: 08_training"),
    "missing.html": ('<p>See <a href="08_training.html"><code>08_training</code></a>.</p>', "link to a page the site does not have"),
    "bare_table.html": (f'<div style="overflow-x: auto"><table>{WIDE}</table></div>', "wide table scrolls with no cue"),
    "opaque_table.html": (f'<div class="sd-table"><table style="background: white">{WIDE}</table></div>', "wide table scrolls with no cue"),
    "figure.html": ('<img src="wide.png" style="max-width: 100%">', "figure text"),
    "good.html": (f'<p>See <a href="good.html"><code>00_paper</code></a>.</p><div class="sd-table"><table>{WIDE}</table></div>'
                  '<img src="narrow.png" style="max-width: 100%">', None),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    "A site of one page per defect (and one without any), with the project's stylesheet, checked in Chromium."
    pytest.importorskip("websocket", reason="websocket-client is a dev requirement")
    from PIL import Image
    site = tmp_path_factory.mktemp("planted")
    shutil.copy(ROOT / "nbs" / "styles.css", site)
    Image.new("RGB", (1188, 300), "white").save(site / "wide.png")  # shown in a 640-px column: 10-pt text at 5.6 pt
    Image.new("RGB", (600, 300), "white").save(site / "narrow.png")
    for page, (main, _) in {**PLANTED, "index.html": PLANTED["good.html"]}.items():
        (site / page).write_text(f'<!doctype html><html><head><title>{page}</title><link rel="icon" href="data:,"><link rel="stylesheet" href="styles.css">'
                                 f'</head><body><main style="width: 640px">{main}</main></body></html>')
    return browser_check.check_site(site)["pages"]


@needs_chromium
@pytest.mark.parametrize("page", PLANTED)
def test_each_check_fails_on_a_planted_page(planted, page):
    expected = PLANTED[page][1]
    if expected is None: assert planted[page] == [], planted[page]
    else: assert any(p.startswith(expected) for p in planted[page]), f"{page}: {planted[page]}"


# ---------------------------------------------------------------- a notebook opened and saved in JupyterLab


@needs_chromium
@pytest.mark.parametrize("hook", [True, False], ids=["nbdev hook", "no hook"])
def test_a_notebook_saved_in_jupyterlab_stays_as_committed(tmp_path, hook):
    "It opens with its kernel and no dialog; saved with nbdev's pre-save hook (`nbdev_install_hooks`; `jupyter_hooks` in"
    "settings.ini) it is byte for byte the committed file, so `make check-sync` stays green; without the hook it is not."
    pytest.importorskip("jupyterlab")
    from jupyter_client.kernelspec import KernelSpecManager
    (tmp_path / "nbs").mkdir()
    shutil.copy(ROOT / "settings.ini", tmp_path)
    nb = ROOT / "nbs" / "02_world.ipynb"
    shutil.copy(nb, tmp_path / "nbs")
    seen = browser_check.jupyterlab_save(tmp_path, "nbs/02_world.ipynb", hook=hook)
    assert seen["dialog"] is None and seen["saved"], seen
    assert seen["kernel"] == KernelSpecManager().get_kernel_spec("python3").display_name
    assert ((tmp_path / "nbs" / nb.name).read_bytes() == nb.read_bytes()) == hook


# ---------------------------------------------------------------- the built site passes them


@needs_chromium
@needs_site
def test_every_page_loads_cleanly_in_chromium(report):
    pages = [p for p in report["pages"] if p != "(server)"]
    assert "index.html" in pages and len(pages) == len(list(DOCS.rglob("*.html")))
    bad = [f"{page}: {f}" for page, found in report["pages"].items() for f in found if not f.startswith(FIGURE)]
    assert not bad, f"{len(bad)} problems in the browser:\n" + "\n".join(bad[:40])


@needs_chromium
@needs_site
def test_the_browser_rendered_the_maths(report):
    assert report["math_spans"] >= 50


@needs_chromium
@needs_site
@pytest.mark.xfail(reason="figures drawn 800-1190 px wide (matplotlib, 100 dpi) are shrunk into the 644-px column; "
                          "they are redrawn for it in their own notebooks (#27 item 4)", strict=False)
def test_figures_are_readable(report):
    small = [f"{page}: {f}" for page, found in report["pages"].items() for f in found if f.startswith(FIGURE)]
    assert not small, f"{len(small)} figures with text under {browser_check.MIN_FIGURE_PT} pt:\n" + "\n".join(small)
