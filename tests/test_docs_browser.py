"""The built site in headless Chromium (tools/browser_check.py; `make docs-check` runs the same): every page loads from a
local server with no console error, no failed or outside request, no unrendered maths, no broken image, and wide tables
that scroll. Skipped when Chromium is not installed (.ci/run installs it) or the site is not built."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = Path(os.environ.get("COMPODISTILL_DOCS", ROOT / "docs"))
sys.path.insert(0, str(ROOT / "tools"))
import browser_check  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not (DOCS / "index.html").is_file(), reason="docs/ not built (run make docs)"),
    pytest.mark.skipif(browser_check.find_chromium() is None, reason="no chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("websocket", reason="websocket-client is a dev requirement")
    return browser_check.check_site(DOCS)


def test_every_page_loads_cleanly_in_chromium(report):
    pages = [p for p in report["pages"] if p != "(server)"]
    assert "index.html" in pages and len(pages) == len(list(DOCS.rglob("*.html")))
    bad = [f"{page}: {f}" for page, found in report["pages"].items() for f in found]
    assert not bad, f"{len(bad)} problems in the browser:\n" + "\n".join(bad[:40])


def test_the_browser_rendered_the_maths(report):
    assert report["math_spans"] >= 50
