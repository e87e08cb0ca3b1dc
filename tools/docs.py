"""Build the documentation site and README.md from the notebooks without Quarto (`make docs`, `make readme`).

Steps: nbdev's own notebook processing (`proc_nbs`: hides `#| hide` cells, adds the API reference of every exported
symbol) into `_proc/`, then smalldocs renders `_proc/` into `docs/`, then `finish_site` makes the site whole offline:

- the sidebar is in reading order, in sections (`SECTIONS`), written in place of nbdev's flat one;
- a chapter named in inline code (`04_misalignment`) links to its page, and a name like a chapter's that no notebook
  has fails the build; a Markdown link that nbdev wrote into a signature's comment (docments) becomes an HTML link;
  `x ± y` does not break across lines;
- cross-references go to the pages this build writes: nbdev links a name to `<doc_host><doc_baseurl>/<module>.html#name`
  (the `output-file` nbdev gives each notebook, which only Quarto reads), smalldocs names a page after its notebook,
  so each link is rewritten to the notebook's page, relative; a private name is not linked;
- maths is rendered to HTML + MathML at build time with KaTeX from the npm registry (`npm pack`, cached in
  `.docs-cache/`); its CSS and fonts go into `site_libs/katex/`, so no page loads a script or a CDN for maths;
- the theme's web font (Source Sans Pro, which the theme imports from Google Fonts) is bundled from the npm package
  `@fontsource/source-sans-pro`, so the site requests nothing outside itself.

README.md is `_proc/index.ipynb` as Markdown, read on GitHub and PyPI: its links stay absolute, to the pages of the
published site that this build writes (`01b_vqa.html#load_benchmark`, not nbdev's `vqa.html`), and each chapter it
names in inline code links to its page there.
"""
import configparser
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".docs-cache"  # npm tarballs, unpacked; kept between builds (gitignored)
KATEX = ("katex", "0.16.11")
FONT = ("@fontsource/source-sans-pro", "5.3.0")
FONT_FACES = ("300", "400", "400-italic", "700", "700-italic")  # the weights the theme uses (Google's import: 300, 400, 700)

# The sidebar, in reading order: each section takes the notebooks it names, then those whose number (`08` of
# `08d_runner`) is in its range, in name order.
SECTIONS = [
    ("The paper", ["00_paper"]),
    ("Models and data", 0, 2),
    ("The paper's method", 3, 7),
    ("Training", 8, 9),
    ("Evaluation and reproduction", 10, 12),
    ("Tools", 13, 99),
]

MATH = re.compile(r'<span class="math (inline|display)">(\\\(|\\\[)(.*?)(\\\)|\\\])</span>', re.S)
LINK = re.compile(r'<a href="(?P<url>[^"]*)"(?P<attrs>[^>]*)>(?P<text>.*?)</a>', re.S)
CHAPTER = re.compile(r"<code>(\d\d[a-z]?_\w+)</code>")  # inline code that names a chapter, such as `04_misalignment`
LINKED_OR_CODE = re.compile(r"<a\b[^>]*>.*?</a>|<pre\b[^>]*>.*?</pre>", re.S)  # where text is left as it is
# The project's old fact sheet on the paper, cited by section in some notebooks' prose: each citation becomes a link to
# the section of `00_paper` that restates it (a notebook that links to `00_paper` itself needs none of this).
PAPER_SECTIONS = {"2.7": "official-vat", "3": "analysis", "4": "stages", "4.2": "stage-0", "4.3": "official-stages",
                  "4.4": "compute", "6": "scoring", "7": "numbers", "7.1": "table-1", "7.4": "hallucination",
                  "7.5": "scaling", "10": "unknowns", "12": "scoring"}  # its section -> the anchor in 00_paper
PAPER_CITE = re.compile(r"paper\.md (§[\d.]+(?:(?:, | and |-)§?[\d.]+)*)")
MD_LINK = re.compile(r"\[`?([^\]`<>]+?)`?\]\((https?://[^)\s<>]+)\)")  # nbdev's Markdown link in a signature's comment
KATEX_CDN = re.compile(r'<link rel="stylesheet" href="https://cdn\.jsdelivr\.net/npm/katex@[^"]*/katex\.min\.css">|'
                       r'<script src="https://cdn\.jsdelivr\.net/npm/katex@[^"]*" defer></script>')
GOOGLE_FONTS = re.compile(r"@import url\(https://fonts\.googleapis\.com/[^)]*\);?")


def settings() -> configparser.SectionProxy:
    "settings.ini's `[DEFAULT]`: doc_host, doc_baseurl, ..."
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    return cfg["DEFAULT"]


def doc_url() -> str:
    "Where nbdev says the site lives, such as `https://compodistill.github.io/compodistill/`: cross-references start so."
    s = settings()
    return s["doc_host"].rstrip("/") + "/" + s["doc_baseurl"].strip("/") + "/"


# ---------------------------------------------------------------- the sidebar


def section_of(stem: str) -> str | None:
    "The `SECTIONS` title a notebook belongs to: the section that names it, else the one whose range has its number."
    m = re.match(r"(\d+)", stem)
    named = next((t for t, *rule in SECTIONS if len(rule) == 1 and stem in rule[0]), None)
    return named or next((t for t, *rule in SECTIONS if len(rule) == 2 and m and rule[0] <= int(m.group(1)) <= rule[1]), None)


def reading_order(stems) -> list[str]:
    "Notebook names (no index) in the order of the sidebar: section by section, named ones first, then by name."
    titles = [t for t, *_ in SECTIONS]
    def key(stem):
        t = section_of(stem)
        if t is None: sys.exit(f"docs: {stem}.ipynb has no section in tools/docs.py SECTIONS (by its name or number)")
        rule = SECTIONS[titles.index(t)][1:]
        return titles.index(t), rule[0].index(stem) if len(rule) == 1 else 0, stem
    return sorted((s for s in stems if s != "index"), key=key)


def write_sidebar(nbs: Path) -> str:
    "Write `nbs/sidebar.yml` (gitignored, as nbdev's own): the index, then one section per `SECTIONS` entry."
    import yaml
    groups: dict[str, list[str]] = {title: [] for title, *_ in SECTIONS}
    for stem in reading_order(nb.stem for nb in nbs.glob("*.ipynb")):
        groups[section_of(stem)].append(f"{stem}.ipynb")
    contents = ["index.ipynb", *({"section": t, "contents": c} for t, c in groups.items() if c)]
    text = yaml.safe_dump({"website": {"sidebar": {"contents": contents}}}, sort_keys=False, allow_unicode=True)
    (nbs / "sidebar.yml").write_text(text)
    return text


def process_notebooks() -> dict[str, str]:
    "Run nbdev's notebook processing into a fresh `_proc/`; the answer maps nbdev's page names (`runner.html`) to this build's."
    from nbdev.quarto import refresh_quarto_yml
    from nbdev.serve import proc_nbs
    shutil.rmtree(ROOT / "_proc", ignore_errors=True)  # proc_nbs keeps an older copy, whose page names were taken out below
    refresh_quarto_yml()
    write_sidebar(ROOT / "nbs")
    proc_nbs()
    pages = {}
    for nb in sorted((ROOT / "_proc").glob("*.ipynb")):
        data = json.loads(nb.read_text())
        first = data["cells"][0] if data["cells"] else None
        src = "".join(first["source"]) if first else ""
        m = re.search(r"^output-file: (\S+)\n", src, re.M)
        if m is None: continue
        pages[m.group(1)] = f"{nb.stem}.html"
        first["source"] = src[:m.start()] + src[m.end():]  # smalldocs names pages after notebooks and warns at this key
        nb.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    return pages


# ---------------------------------------------------------------- assets from the npm registry


def npm_package(name: str, version: str) -> Path:
    "An npm package's folder, unpacked from its tarball (`npm pack`) into `.docs-cache/` on first use."
    dest = CACHE / f"{name.replace('/', '+')}-{version}"
    if (dest / "package" / "package.json").is_file(): return dest / "package"
    if shutil.which("npm") is None: sys.exit(f"docs: npm is needed once to fetch {name}@{version} (apt-get install npm)")
    CACHE.mkdir(exist_ok=True)
    out = subprocess.run(["npm", "pack", f"{name}@{version}", "--silent", "--pack-destination", str(CACHE)],
                         check=True, capture_output=True, text=True).stdout.split()
    tgz = CACHE / out[-1]
    shutil.rmtree(dest, ignore_errors=True)
    with tarfile.open(tgz) as t: t.extractall(dest, filter="data")
    tgz.unlink()
    return dest / "package"


def bundle_katex(site: Path) -> Path:
    "KaTeX's CSS and fonts into `site_libs/katex/`; the answer is the package, for rendering."
    pkg = npm_package(*KATEX)
    dest = site / "site_libs" / "katex"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(pkg / "dist" / "katex.min.css", dest)
    shutil.copytree(pkg / "dist" / "fonts", dest / "fonts", dirs_exist_ok=True)
    return pkg


def bundle_font(site: Path) -> str:
    "Source Sans Pro's faces into `site_libs/fonts/`; the answer is the CSS `@import` that replaces Google's."
    pkg = npm_package(*FONT)
    dest = site / "site_libs" / "fonts" / "source-sans-pro"
    (dest / "files").mkdir(parents=True, exist_ok=True)
    css = "\n".join((pkg / f"{face}.css").read_text() for face in FONT_FACES)
    for f in sorted(set(re.findall(r"url\(\./files/([^)]+)\)", css))):
        shutil.copy(pkg / "files" / f, dest / "files" / f)
    (dest / "source-sans-pro.css").write_text(css)
    return "@import url(../fonts/source-sans-pro/source-sans-pro.css);"


# ---------------------------------------------------------------- the pages


def render_math(items: list[tuple[str, bool]], katex: Path) -> list[dict]:
    "KaTeX's HTML + MathML for each (TeX, display) pair, by one node process (tools/render_math.js)."
    if not items: return []
    if shutil.which("node") is None: sys.exit("docs: node is needed to render the maths (apt-get install nodejs)")
    out = subprocess.run(["node", str(ROOT / "tools" / "render_math.js"), str(katex)], input=json.dumps(items),
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def private(anchor: str) -> bool:
    "Whether a cross-reference's anchor names a private symbol: `_get`, `_VisualMap.forward`."
    return any(part.startswith("_") for part in anchor.split("."))


def rewrite_links(text: str, page: Path, site: Path, pages: dict[str, str], ids: dict[str, set[str]]) -> tuple[str, int]:
    "Point every link to the project's own doc_host at the page and anchor this build writes, relative; unlink private names."
    base, n = doc_url(), 0

    def fix(m: re.Match) -> str:
        nonlocal n
        url = html.unescape(m["url"])
        if not url.startswith(base): return m[0]
        path, _, anchor = url[len(base):].partition("#")
        if anchor and private(anchor): return m["text"]  # nbdev's index holds private names too; they have no entry
        target = pages.get(path, path) or "index.html"
        if anchor and anchor not in ids.get(target, set()) and "." in anchor:
            cls = anchor.split(".")[0]  # a method with no entry of its own (`Scene.in_reading_order`): its class's entry
            if cls in ids.get(target, set()): anchor = cls
        n += 1
        rel = os.path.relpath(site / target, page.parent).replace(os.sep, "/")
        href = rel + (f"#{anchor}" if anchor else "")
        return f'<a href="{html.escape(href)}"{m["attrs"]}>{m["text"]}</a>'

    return LINK.sub(fix, text), n


def outside_links_and_code(text: str, fn) -> str:
    "`text` with `fn` applied to each stretch outside links (`<a>`) and code blocks (`<pre>`)."
    out, at = [], 0
    for skip in LINKED_OR_CODE.finditer(text):
        out += [fn(text[at:skip.start()]), skip[0]]
        at = skip.end()
    return "".join(out + [fn(text[at:])])


def link_chapters(text: str, page: str, chapters: set[str]) -> tuple[str, int, list[str]]:
    "Link each chapter named in inline code, outside links and code blocks, to its page; the answer also counts the links and lists names like a chapter's that no notebook has."
    missing, linked = [], []

    def fix(m: re.Match) -> str:
        stem = m[1]
        if stem not in chapters: missing.append(stem)
        if stem not in chapters or stem == page: return m[0]
        linked.append(stem)
        return f'<a href="{stem}.html">{m[0]}</a>'

    text = outside_links_and_code(text, lambda part: CHAPTER.sub(fix, part))
    return text, len(linked), missing


def cite_paper(text: str) -> str:
    "Each `paper.md §N` citation in prose (outside code) as links to the sections of `00_paper` that restate it."
    def sections(m: re.Match) -> str:
        nums = re.findall(r"\d+(?:\.\d+)*", m[1])
        if any(n not in PAPER_SECTIONS for n in nums): sys.exit(f"docs: no section of 00_paper for {m[0]!r} (PAPER_SECTIONS)")
        anchors = dict.fromkeys(PAPER_SECTIONS[n] for n in nums)
        return ", ".join(f'<a href="00_paper.html#{a}">00_paper: {a.replace("-", " ")}</a>' for a in anchors)

    return outside_links_and_code(text, lambda part: PAPER_CITE.sub(sections, part))


def keep_together(text: str) -> str:
    "A value and its spread (`50.0 ± 0.0`) joined by no-break spaces outside code, so a narrow table column never splits it."
    return outside_links_and_code(text, lambda part: part.replace(" ± ", "\u00a0±\u00a0"))


def signature_links(text: str) -> str:
    "nbdev's Markdown links inside code blocks (a signature's docments) as HTML links, which `rewrite_links` then fixes."
    def fix(m: re.Match) -> str:
        return MD_LINK.sub(lambda l: f'<a href="{l[2]}">{l[1]}</a>', m[0])
    return re.sub(r"<pre\b[^>]*>.*?</pre>", fix, text, flags=re.S)


def page_ids(text: str) -> set[str]:
    "The ids of a page's elements: where a link's `#anchor` may land."
    return set(re.findall(r'\bid="([^"]*)"', text))


def finish_site(site: Path, pages: dict[str, str]) -> dict:
    "Make the rendered site whole offline: links, maths, the KaTeX and font assets; the answer counts what was done."
    files = sorted(site.rglob("*.html"))
    texts = {f: f.read_text() for f in files}
    ids = {f.relative_to(site).as_posix(): page_ids(t) for f, t in texts.items()}
    katex = bundle_katex(site)
    spans = {f: list(MATH.finditer(t)) for f, t in texts.items()}
    items = sorted({(html.unescape(m[3]).strip(), m[1] == "display") for ms in spans.values() for m in ms})
    rendered = dict(zip(items, render_math(items, katex)))
    stats = {"pages": len(files), "links": 0, "math": 0, "math_errors": [], "chapter_links": 0, "missing_chapters": []}
    chapters = {f.stem for f in files}
    for f, text in texts.items():
        off = os.path.relpath(site, f.parent).replace(os.sep, "/")
        off = "" if off == "." else off + "/"

        def math(m: re.Match) -> str:
            r = rendered[(html.unescape(m[3]).strip(), m[1] == "display")]
            if "error" in r: stats["math_errors"].append(f"{f.name}: {r['error']}")
            return f'<span class="math {m[1]}">{r["html"]}</span>'

        text, n = MATH.subn(math, text)
        stats["math"] += n
        if n: text = KATEX_CDN.sub("", text, count=1).replace("</head>", f'<link rel="stylesheet" href="{off}site_libs/katex/katex.min.css">\n</head>', 1)
        text = KATEX_CDN.sub("", text)
        text, linked, missing = link_chapters(keep_together(cite_paper(text)), f.stem, chapters)
        stats["missing_chapters"] += [f"{f.name}: `{m}`" for m in missing]
        stats["chapter_links"] += linked
        text, links = rewrite_links(signature_links(text), f, site, pages, ids)
        stats["links"] += links
        f.write_text(text)
    font = bundle_font(site)
    for css in (site / "site_libs" / "themes").glob("*.css"):
        css.write_text(GOOGLE_FONTS.sub(font, css.read_text()))
    for e in stats["math_errors"]: print(f"warning: maths KaTeX cannot render: {e}")
    return stats


# ---------------------------------------------------------------- README


def readme_links(md: str, pages: dict[str, str], chapters: set[str]) -> str:
    "README Markdown with nbdev's links to the site pointing at the pages this build writes, and chapters named in inline code (outside code blocks) linked."
    base = doc_url()
    md = re.sub(re.escape(base) + r"([\w.-]+\.html)", lambda m: base + pages.get(m[1], m[1]), md)
    def chapter(m: re.Match) -> str:
        return f"[`{m[1]}`]({base}{m[1]}.html)" if m[1] in chapters else m[0]
    parts = re.split(r"(```.*?```)", md, flags=re.S)
    return "".join(p if i % 2 else re.sub(r"(?<![\[`])`(\d\d[a-z]?_\w+)`(?![`\]])", chapter, p) for i, p in enumerate(parts))


def render_readme(pages: dict[str, str]) -> str:
    "README.md text: the processed index notebook as Markdown, with a title line instead of front matter."
    out = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--log-level", "WARN", "--to", "markdown",
                          "--stdout", str(ROOT / "_proc" / "index.ipynb")], check=True, capture_output=True, text=True)
    md = out.stdout
    front = re.match(r"---\n(.*?)\n---\n", md, re.S)
    if front is None: sys.exit("README: _proc/index.ipynb has no front matter")
    meta = dict(re.findall(r"^(\w[\w-]*): '?(.*?)'?$", re.sub(r"\n\s+", " ", front.group(1)), re.M))
    body = re.sub(r"<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->\n", "", md[front.end():]).strip()
    body = readme_links(re.sub(r"\n{3,}", "\n\n", body), pages, {nb.stem for nb in (ROOT / "nbs").glob("*.ipynb")})
    return f"# {meta['title']}\n\n> {meta['description']}\n\n{body}\n"


def main(cmd: str):
    "`build`: site into docs/ and check README.md; `readme`: rewrite README.md; `check`: the site in a browser."
    if cmd == "build":
        shutil.rmtree(ROOT / "docs", ignore_errors=True)
        pages = process_notebooks()
        subprocess.run([str(Path(sys.executable).parent / "smalldocs"), "render", str(ROOT / "_proc")], check=True)
        (ROOT / "_proc" / "docs").rename(ROOT / "docs")
        s = finish_site(ROOT / "docs", pages)
        print(f"docs: {s['pages']} pages, {s['links']} cross-reference links made relative, {s['chapter_links']} "
              f"chapter mentions linked, {s['math']} maths spans rendered")
        if s["missing_chapters"]: sys.exit("docs: chapters named that no notebook has: " + ", ".join(s["missing_chapters"]))
        if (ROOT / "README.md").read_text() != render_readme(pages):
            sys.exit("README.md is out of date with nbs/index.ipynb: run `make readme` and commit it")
    elif cmd == "readme":
        (ROOT / "README.md").write_text(render_readme(process_notebooks()))
    elif cmd == "check":
        sys.path.insert(0, str(ROOT / "tools"))
        from browser_check import main as check
        sys.exit(check(ROOT / "docs"))
    else:
        sys.exit(f"usage: python tools/docs.py build|readme|check (got {cmd!r})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
