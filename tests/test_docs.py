"""The documentation site built by `make docs`: one page per notebook, with its figures and API reference; every link
and cross-reference lands on a page and an anchor that exist, maths is rendered, and nothing is loaded from elsewhere.
(tests/test_docs_browser.py loads the same site in Chromium.)"""
import functools
import json
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import docs  # noqa: E402
DOCS = Path(os.environ.get("COMPODISTILL_DOCS", ROOT / "docs"))
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))

built = pytest.mark.skipif(not DOCS.is_dir() and "COMPODISTILL_DOCS" not in os.environ,
                           reason="docs/ not built (run make docs; make test sets COMPODISTILL_DOCS)")


# ---------------------------------------------------------------- the build's steps, on planted text (no site needed)


def test_a_chapter_mention_links_to_its_page_and_a_missing_chapter_is_reported():
    text = ("<p><code>04_misalignment</code>, <code>08_training</code>, <code>05_vat</code> (this page), "
            '<a href="x.html"><code>06_taf</code></a></p><pre><code>01_data</code></pre>')
    out, linked, missing = docs.link_chapters(text, "05_vat", {"04_misalignment", "05_vat", "06_taf", "01_data"})
    assert '<a href="04_misalignment.html"><code>04_misalignment</code></a>' in out
    assert (linked, missing) == (1, ["08_training"])
    assert "<code>05_vat</code> (this page)" in out and '<a href="x.html"><code>06_taf</code></a>' in out
    assert "<pre><code>01_data</code></pre>" in out  # code blocks are left alone


def test_a_markdown_link_in_a_signature_becomes_an_html_link():
    sig = '<pre><code>    data, <span class="co"># a [`ConversationDataset`](https://h.io/p/data.html#conversationdataset)</span></code></pre>'
    assert docs.signature_links(sig) == ('<pre><code>    data, <span class="co"># a <a href="https://h.io/p/data.html#conversationdataset">'
                                         'ConversationDataset</a></span></code></pre>')
    assert docs.signature_links("<p>[`x`](https://h.io/a.html)</p>") == "<p>[`x`](https://h.io/a.html)</p>"  # prose: untouched


def test_old_paper_citations_link_to_the_paper_chapter():
    out = docs.cite_paper("<p>as the code does (paper.md §2.7) and (paper.md §6, §10)</p><pre>x  # paper.md §4.4</pre>")
    assert '(<a href="00_paper.html#official-vat">00_paper: official vat</a>)' in out
    assert '<a href="00_paper.html#scoring">00_paper: scoring</a>, <a href="00_paper.html#unknowns">' in out
    assert out.endswith("<pre>x  # paper.md §4.4</pre>")
    with pytest.raises(SystemExit): docs.cite_paper("<p>paper.md §99</p>")


def test_readme_links_go_to_the_pages_the_build_writes():
    base = docs.doc_url()
    md = f"`load_benchmark` ([`load_benchmark`]({base}vqa.html#load_benchmark)), `11_reproduce`, `99_none`\n```sh\n`05_vat`\n```"
    out = docs.readme_links(md, {"vqa.html": "01b_vqa.html"}, {"11_reproduce", "05_vat"})
    assert f"]({base}01b_vqa.html#load_benchmark)" in out
    assert f"[`11_reproduce`]({base}11_reproduce.html)" in out and "`99_none`" in out and "```sh\n`05_vat`\n```" in out


def test_the_paper_chapter_comes_first_and_every_notebook_has_a_section():
    order = docs.reading_order(nb.stem for nb in NOTEBOOKS)
    assert order[:2] == ["00_paper", "00_models"] and sorted(order) == sorted(nb.stem for nb in NOTEBOOKS if nb.stem != "index")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_the_kernelspec_jupyterlab_starts(nb):
    "A kernel JupyterLab starts without asking (`python3`), in the form nbdev_clean keeps (display name = name)."
    meta = json.loads(nb.read_text())["metadata"]
    assert meta.get("kernelspec") == {"display_name": "python3", "language": "python", "name": "python3"}, nb.name


def test_no_notebook_cites_a_file_outside_the_repository_where_it_links_to_the_paper_chapter():
    cells = {nb.stem: json.loads(nb.read_text())["cells"] for nb in NOTEBOOKS}
    cites = [f"{stem}: {''.join(c['source'])[:60]}" for stem, cs in cells.items() for c in cs
             if "paper.md" in "".join(c["source"]) + json.dumps(c.get("outputs", []))]
    assert not cites, cites


# ---------------------------------------------------------------- the built site


def _figures(nb: Path) -> int:
    cells = json.loads(nb.read_text())["cells"]
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


def _exported_names(nb: Path) -> list[str]:
    src = [''.join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    exported = [s for s in src if re.match(r"#\|\s*exports?\b", s)]
    return [m for s in exported for m in re.findall(r"^(?:def|class) ([A-Za-z]\w*)", s, re.M)]


@built
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_a_page_with_its_figures_and_api(nb):
    page = DOCS / f"{nb.stem}.html"
    assert page.is_file(), f"{nb.name} produced no page in {DOCS}"
    html = page.read_text()
    assert html.count("<img") >= _figures(nb), f"{page.name} lost figures of {nb.name}"
    for name in _exported_names(nb):
        assert f'id="{name.lower()}"' in html, f"{page.name} has no API entry for {name}"


@built
def test_the_notebooks_have_figures():
    assert sum(_figures(nb) for nb in NOTEBOOKS) >= 3


# ---------------------------------------------------------------- the site as a reader gets it: links, maths, assets

PAGES = sorted(DOCS.rglob("*.html")) if DOCS.is_dir() else []
SKIP_TEXT = {"pre", "code", "script", "style", "textarea", "annotation"}
RAW_MATH = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$")


class Page(HTMLParser):
    "One built page: its ids, its links (tag, URL) and its counts of maths spans and of KaTeX's output."

    def __init__(self, path: Path):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.math, self.katex = set(), [], 0, 0
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        cls = (a.get("class") or "").split()
        if tag == "span" and "math" in cls: self.math += 1
        if tag == "span" and "katex" in cls: self.katex += 1
        for key in ("href", "src"):
            if a.get(key) is not None and not (tag == "a" and key == "src"): self.links.append((tag, a[key]))


class Tree(HTMLParser):
    "A page's text outside `pre`, `code`, scripts and KaTeX's output, tracked by element nesting."

    VOID = {"meta", "link", "img", "br", "hr", "input", "col", "source", "wbr", "area", "base", "embed", "track"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.out = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID: return
        cls = (dict(attrs).get("class") or "").split()
        self.stack.append((tag, tag in SKIP_TEXT or "katex" in cls or "sourceCode" in cls))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):  # close up to the matching tag (HTML's implied ends)
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        if not any(skip for _, skip in self.stack): self.out.append(data)


@functools.cache
def parsed(path: Path) -> Page:
    return Page(path)


def _resolve(page: Path, url: str) -> tuple[Path, str] | None:
    "The file and anchor an internal link goes to; None for an external link or a data/mailto URL."
    s = urlsplit(url)
    if s.scheme or url.startswith(("//", "data:", "mailto:", "javascript:")): return None
    target = (page.parent / unquote(s.path)).resolve() if s.path else page.resolve()
    if target.is_dir(): target = target / "index.html"
    return target, unquote(s.fragment)


@built
def test_the_site_has_its_pages():
    assert len(PAGES) >= len(NOTEBOOKS), f"{len(PAGES)} pages in {DOCS} for {len(NOTEBOOKS)} notebooks"


@built
def test_every_link_goes_to_a_page_and_an_anchor_that_exist():
    "Internal links and cross-references: the file exists and, with #anchor, has an element with that id."
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    own_site = cfg["DEFAULT"]["doc_host"].rstrip("/") + "/" + cfg["DEFAULT"]["doc_baseurl"].strip("/")
    broken, checked = [], 0
    for page in PAGES:
        for tag, url in parsed(page).links:
            if url.startswith(own_site):
                broken.append(f"{page.name}: link to the project's own site, not rewritten: {url}")
                continue
            hit = _resolve(page, url)
            if hit is None: continue
            target, anchor = hit
            checked += 1
            if not target.is_file():
                broken.append(f"{page.name}: <{tag}> {url}: no file {target.relative_to(DOCS.resolve())}")
            elif anchor and target.suffix == ".html" and anchor not in parsed(target).ids:
                broken.append(f"{page.name}: <{tag}> {url}: {target.name} has no id {anchor!r}")
    assert checked > 100, f"only {checked} internal links found"
    assert not broken, f"{len(broken)} of {checked} links broken:\n" + "\n".join(broken[:40])


@built
def test_cross_references_go_to_the_notebook_pages_and_not_to_private_names():
    refs = [(p.name, u) for p in PAGES for t, u in parsed(p).links if t == "a" and re.match(r"[\w./]*\.html#\w", u)]
    assert len(refs) > 50, f"only {len(refs)} cross-references"
    stems = {nb.stem for nb in NOTEBOOKS} | {"index"}
    wrong = [r for r in refs if Path(urlsplit(r[1]).path).stem not in stems]
    private = [r for r in refs if any(part.startswith("_") for part in urlsplit(r[1]).fragment.split("."))]
    assert not wrong, f"cross-references to pages this build does not write: {wrong[:10]}"
    assert not private, f"private names linked: {private[:10]}"


@built
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_maths_is_rendered_when_the_site_is_built(page):
    "Every maths span holds KaTeX's output (no script needed), and no `\\(`, `\\[` or `$$` is left in the text."
    text = page.read_text()
    p = parsed(page)
    assert "katex-error" not in text, f"{page.name}: KaTeX could not render some maths (see the build's warnings)"
    assert p.katex >= p.math, f"{page.name}: {p.math - p.katex} maths spans not rendered"
    raw = [s.strip()[:80] for s in Tree(text).out if RAW_MATH.search(s)]
    assert not raw, f"{page.name}: unrendered maths: {raw[:5]}"


@built
def test_the_notebooks_maths_is_on_the_site():
    assert sum(parsed(p).katex for p in PAGES) >= 50


@built
def test_the_site_loads_nothing_from_elsewhere():
    "No CDN script or stylesheet, no web font from Google: assets are files of the site."
    outside = [f"{p.name}: <{t}> {u}" for p in PAGES for t, u in parsed(p).links if t in ("link", "script", "img") and urlsplit(u).scheme in ("http", "https")]
    for css in DOCS.rglob("*.css"):
        outside += [f"{css.relative_to(DOCS)}: {u}" for u in re.findall(r"(?:@import\s+|url\()\s*['\"]?(https?://[^'\")\s]+)", css.read_text())]
        for u in re.findall(r"url\(\s*['\"]?([^'\")\s]+)", css.read_text()):
            if not u.startswith(("data:", "http", "#")) and not (css.parent / unquote(u.split("#")[0].split("?")[0])).is_file():
                outside.append(f"{css.relative_to(DOCS)}: missing {u}")
    assert not outside, "\n".join(outside[:20])


@built
def test_every_page_has_the_favicon():
    for page in PAGES:
        icons = [u for t, u in parsed(page).links if t == "link" and "favicon" in u]
        assert icons and _resolve(page, icons[0])[0].is_file(), f"{page.name}: no favicon"


@built
def test_the_sidebar_is_in_reading_order_in_sections():
    html = (DOCS / "index.html").read_text()
    nav = html[html.index('id="quarto-sidebar"'):]
    nav = nav[:nav.index("</nav>")]
    sections = re.findall(r'sidebar-item-section.*?<span class="menu-text">([^<]*)</span>', nav, re.S)
    assert len(sections) >= 4, f"sidebar sections: {sections}"
    pages = re.findall(r'<a href="([\w.]+)\.html" class="sidebar-item-text', nav)
    assert pages[0] == "index" and pages[1:] == docs.reading_order(nb.stem for nb in NOTEBOOKS), pages


def _prose(page: Path) -> str:
    "A built page's text outside links and code blocks."
    parts = []
    docs.outside_links_and_code(page.read_text(), lambda t: parts.append(t) or t)
    return "".join(parts)


@built
def test_every_chapter_mention_is_a_link_and_the_index_table_links_each_notebook_it_lists():
    "Outside code blocks, a chapter named in inline code is a link to its page (its own page excepted)."
    plain = [f"{p.name}: {m}" for p in PAGES for m in re.findall(r"<code>(\d\d[a-z]?_\w+)</code>", _prose(p)) if m != p.stem]
    assert not plain, plain[:20]
    index = (DOCS / "index.html").read_text()
    table = index[index.index('id="the-notebooks-in-reading-order"'):]
    table = table[:table.index("</table>")]
    listed = re.findall(r"<tr>\s*<td>(.*?)</td>", table, re.S)
    assert len(listed) >= 20 and all(re.fullmatch(r'<a href="(\w+)\.html"><code>\1</code></a>', c) for c in listed), listed[:5]


@built
def test_no_page_shows_a_markdown_link_or_cites_a_file_outside_the_site():
    for p in PAGES:
        text = _prose(p)
        assert not re.search(r"\[`?\w+`?\]\(https?://", p.read_text()), f"{p.name}: a Markdown link shown as text"
        prose = re.sub(r"<pre\b.*?</pre>|<code>.*?</code>", "", text, flags=re.S)
        assert "paper.md" not in prose, f"{p.name} cites paper.md"
