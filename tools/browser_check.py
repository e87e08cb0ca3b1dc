"""The built site in a real browser (`make docs-check`, tests/test_docs_browser.py): headless Chromium loads every page.

The site is served by `http.server` on 127.0.0.1 (a free port, stopped at the end); Chromium is driven over its
DevTools protocol (`--remote-debugging-port`, with the `websocket-client` package). A page fails on:

- a console error or an uncaught exception;
- a resource that answered 4xx/5xx or failed to load, and any request that leaves 127.0.0.1 (a CDN, a web font);
- maths that is not rendered (`\\(`, `\\[`, `$$` left in the text; a KaTeX error);
- an image that did not load (`naturalWidth` 0);
- a wide table that cannot scroll (its container not `overflow-x: auto`), or that scrolls without a cue: its box draws
  no edge shadow (a `linear-gradient`/`radial-gradient` background) or its cells hide it (an opaque background);
- a Markdown link shown as text in a signature (`[`name`](url)` in an API entry's code block);
- a chapter named in inline code (`04_misalignment`) that is not a link, and a link to a page the site does not have;
- a figure whose text is below `MIN_FIGURE_PT` at the width it is shown: matplotlib's default 10-pt text, drawn at
  100 dpi (13.9 image pixels), shrinks with the image, so a figure shown at less than 9/10.4 of its drawn width has
  text under 9 pt (a 1188-pixel figure in a 644-pixel column: 5.6 pt).

`jupyterlab_save` opens a notebook in JupyterLab in the same browser and saves it, with nbdev's pre-save hook installed
as `nbdev_install_hooks` installs it (in a temporary Jupyter config folder here): tests/test_docs_browser.py checks that
it opens with its kernel and no dialog, and that saving leaves the file byte for byte as committed.

usage: python tools/browser_check.py [SITE] [--screenshots DIR]   (exit 1 on any problem)
"""
import base64
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PAGE_TIMEOUT = 30  # seconds for one page to load
MIN_FIGURE_PT = 9  # the smallest text a figure may show, in points, taking its text as matplotlib's default (below)
FIGURE_TEXT_PT = 10 * 100 / 96  # matplotlib's 10-pt text at 100 dpi, in CSS points when the image is shown 1:1
SETTLE = 0.3  # seconds after `load` for late requests (fonts) and console messages

CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Run in the page after it loaded: what the reader would see broken.
PROBE = r"""(() => {
  const out = {images: [], math: [], tables: [], katexErrors: document.querySelectorAll('.katex-error').length};
  for (const img of document.images)
    if (!img.complete || img.naturalWidth === 0) out.images.push((img.currentSrc || img.src).slice(0, 80));
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {acceptNode: n =>
    n.parentElement.closest('pre, code, script, style, .katex, .sourceCode, textarea')
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  const raw = /\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\s][^$]*[\\^_][^$]*\$/;
  for (let n; (n = walker.nextNode());) if (raw.test(n.data)) out.math.push(n.data.trim().slice(0, 80));
  const clear = el => !el || /^(transparent|rgba\(0, 0, 0, 0\))$/.test(getComputedStyle(el).backgroundColor);
  out.uncued = [];
  for (const t of document.querySelectorAll('main table')) {
    const box = t.parentElement, name = t.querySelector('th, td')?.textContent.trim().slice(0, 40) || '?';
    if (t.scrollWidth <= box.clientWidth + 1) continue;
    if (!['auto', 'scroll'].includes(getComputedStyle(box).overflowX)) out.tables.push(name);
    else if (!/gradient/.test(getComputedStyle(box).backgroundImage) || !clear(t) || !clear(t.querySelector('td')))
      out.uncued.push(name);
  }
  out.signatures = [];
  for (const pre of document.querySelectorAll('main .cell-output-markdown pre'))
    for (const m of pre.textContent.matchAll(/\[`?[^\]\s`]+`?\]\([^)\s]+\)/g)) out.signatures.push(m[0].slice(0, 80));
  out.unlinked = [...document.querySelectorAll('main code')]
    .filter(c => !c.closest('a, pre') && /^\d\d[a-z]?_\w+$/.test(c.textContent) &&
                 c.textContent + '.html' !== location.pathname.split('/').pop())
    .map(c => c.textContent);
  out.hrefs = [...new Set([...document.querySelectorAll('main a[href]')].map(a => a.getAttribute('href'))
    .filter(h => /^[\w./-]+\.html(#.*)?$/.test(h)).map(h => new URL(h, location.href).pathname))];
  out.figures = [...document.querySelectorAll('main img')].map((i, n) => i.naturalWidth > 0 &&
    [`image ${n + 1}, ${i.naturalWidth}×${i.naturalHeight} px`, i.getBoundingClientRect().width / i.naturalWidth]).filter(Boolean);
  out.math_spans = document.querySelectorAll('.katex').length;
  out.title = document.title;
  return out;
})()"""


def find_chromium() -> str | None:
    "The Chromium binary: $CHROMIUM, or the first on PATH."
    if os.environ.get("CHROMIUM"): return os.environ["CHROMIUM"]
    return next((p for p in map(shutil.which, CHROMIUM) if p), None)


class Handler(http.server.SimpleHTTPRequestHandler):
    "Serve the site quietly, keeping each request's path and status."
    log: list = []

    def log_message(self, fmt, *args): pass

    def log_request(self, code="-", size="-"):
        self.log.append((self.path, int(code) if str(code).isdigit() else 0))


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    "The site on 127.0.0.1, a free port, in a daemon thread; the answer is the server and its root URL."
    handler = type("SiteHandler", (Handler,), {"log": []})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/"


class Browser:
    "Headless Chromium and one tab, over the DevTools protocol."

    def __init__(self, binary: str):
        import websocket
        self.profile = tempfile.mkdtemp(prefix="docs-check-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-extensions", "--no-first-run", "--disable-default-apps", "--disable-sync",
             "--disable-component-update", "--window-size=1280,900",
             f"--remote-debugging-port={port}", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, tabs = time.time() + 30, None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    tabs = [t for t in json.load(r) if t.get("type") == "page"]
                if tabs: break
            except OSError:
                time.sleep(0.2)
        if not tabs:
            self.close()
            raise RuntimeError("chromium did not open its DevTools port")
        self.ws = websocket.create_connection(tabs[0]["webSocketDebuggerUrl"], timeout=PAGE_TIMEOUT, suppress_origin=True)
        self.next_id, self.events = 0, []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Network.setCacheDisabled", cacheDisabled=True)

    def call(self, method: str, **params) -> dict:
        "Send one command; keep the events that arrive before its answer."
        self.next_id += 1
        me = self.next_id
        self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == me:
                if "error" in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg: self.events.append(msg)

    def wait_for(self, event: str, timeout: float) -> bool:
        "Read events until one named `event` arrives, or the time is up."
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                self.ws.settimeout(max(0.05, deadline - time.time()))
                try:
                    msg = json.loads(self.ws.recv())
                except Exception:  # the socket's timeout: nothing more came
                    return False
                if "method" in msg:
                    self.events.append(msg)
                    if msg["method"] == event: return True
            return False
        finally:
            self.ws.settimeout(PAGE_TIMEOUT)

    def close(self):
        "Stop Chromium (only the process this object started) and remove its profile."
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def problems_of(events: list, base: str) -> list[str]:
    "What the browser said went wrong while a page loaded: console errors, exceptions, failed and outside requests."
    out, urls = [], {}
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            urls[p["requestId"]] = url
            if not url.startswith((base, "data:", "blob:", "about:")): out.append(f"request outside the site: {url}")
        elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
            out.append(f"{p['response']['status']} for {p['response']['url']}")
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"failed to load {urls.get(p['requestId'], '?')}: {p.get('errorText')}")
        elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append("console error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"console error: {p['entry']['text']} {p['entry'].get('url', '')}".strip())
    return list(dict.fromkeys(out))


def check_site(site: Path, screenshots: Path | None = None, binary: str | None = None) -> dict:
    "Load the index and every page; the answer has, per page, its problems, and totals."
    site = Path(site).resolve()
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    pages.sort(key=lambda p: p != "index.html")
    srv, base = serve(site)
    browser = Browser(binary or find_chromium())
    report = {"pages": {}, "math_spans": 0, "requests": 0}
    try:
        for page in pages:
            browser.events.clear()
            browser.call("Page.navigate", url=base + page)
            loaded = browser.wait_for("Page.loadEventFired", PAGE_TIMEOUT)
            browser.wait_for("never", SETTLE)
            probe = browser.call("Runtime.evaluate", expression=PROBE, returnByValue=True)["result"]["value"]
            found = [] if loaded else [f"did not load in {PAGE_TIMEOUT} s"]
            found += problems_of(browser.events, base)
            found += [f"image did not load: {s}" for s in probe["images"]]
            found += [f"unrendered maths: {s!r}" for s in probe["math"]]
            found += [f"{probe['katexErrors']} maths KaTeX could not render"] if probe["katexErrors"] else []
            found += [f"wide table cannot scroll: {s}" for s in probe["tables"]]
            found += [f"wide table scrolls with no cue at its edges: {s}" for s in probe["uncued"]]
            found += [f"Markdown link shown as text in a signature: {s}" for s in probe["signatures"]]
            found += [f"chapter named but not linked: {s}" for s in dict.fromkeys(probe["unlinked"])]
            found += [f"link to a page the site does not have: {h}" for h in probe["hrefs"] if not (site / h.lstrip("/")).is_file()]
            found += [f"figure text {FIGURE_TEXT_PT * r:.1f} pt (shown at {r:.0%} of its drawn width): {src}"
                      for src, r in probe["figures"] if FIGURE_TEXT_PT * r < MIN_FIGURE_PT]
            report["pages"][page] = found
            report["math_spans"] += probe["math_spans"]
            if screenshots:
                screenshots.mkdir(parents=True, exist_ok=True)
                shot = browser.call("Page.captureScreenshot", format="png")
                (screenshots / (page.replace("/", "_")[:-5] + ".png")).write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
        srv.shutdown()
        srv.server_close()
    served = srv.RequestHandlerClass.func.log
    report["requests"] = len(served)
    for path, code in served:  # the server's own view: every 404, favicon requests included
        if code >= 400: report["pages"].setdefault("(server)", []).append(f"{code} for {path}")
    return report


def poll(browser: Browser, expression: str, timeout: float):
    "Evaluate `expression` in the page until it is truthy (or the time is up); the answer is its last value."
    deadline, value = time.time() + timeout, None
    while time.time() < deadline:
        value = browser.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")
        if value: break
        browser.wait_for("never", 0.5)
    return value


def jupyterlab_save(root: Path, notebook: str, hook: bool = True, screenshot: Path | None = None,
                    binary: str | None = None) -> dict:
    "Open `root/notebook` in JupyterLab in Chromium, wait for its kernel, save it (Ctrl+S): the dialog, kernel and dirty marks seen, and whether it was written."
    from nbdev.clean import _pre_save_hook_src  # what nbdev_install_hooks writes into ~/.jupyter
    tmp = Path(tempfile.mkdtemp(prefix="jupyterlab-check-"))
    (tmp / "config").mkdir()
    (tmp / "config" / "jupyter_server_config.py").write_text(_pre_save_hook_src + "\n" if hook else "")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--allow-root",
                            "--IdentityProvider.token=", f"--ServerApp.root_dir={root}"], cwd=root, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    browser, path = None, Path(root, notebook)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2): break
            except OSError:
                time.sleep(0.5)
        browser, before = Browser(binary or find_chromium()), path.stat().st_mtime_ns
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/lab/tree/{notebook}")
        name = "(document.querySelector('.jp-Dialog') ? 'dialog' : document.querySelector('.jp-Toolbar-kernelName')?.innerText)"
        out = {"kernel": poll(browser, f"!['No Kernel', 'Kernel', 'dialog'].includes({name}) && {name}", 90)}
        browser.wait_for("never", 3)  # the kernel's language_info arrives just after it starts
        out["dialog"] = poll(browser, "document.querySelector('.jp-Dialog')?.innerText.slice(0, 100) || ''", 0.1) or None
        out["dirty_after_open"] = bool(poll(browser, "!!document.querySelector('.jp-mod-dirty')", 0.1))
        browser.call("Runtime.evaluate", expression="document.querySelector('.jp-Notebook').focus()")
        for kind in ("rawKeyDown", "keyUp"):
            browser.call("Input.dispatchKeyEvent", type=kind, modifiers=2, key="s", code="KeyS", windowsVirtualKeyCode=83)
        out["saved"] = bool(poll(browser, "!document.querySelector('.jp-mod-dirty')", 30)) and path.stat().st_mtime_ns != before
        if screenshot: screenshot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
        return out
    finally:
        if browser: browser.close()
        lab.terminate()
        try:
            lab.wait(20)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main(site: Path = Path("docs"), screenshots: Path | None = None) -> int:
    "Print each page's problems and a summary; 0 when there are none."
    if not Path(site, "index.html").is_file():
        print(f"docs-check: {site}/index.html missing: run `make docs` first")
        return 1
    binary = find_chromium()
    if binary is None:
        print("docs-check: no chromium found (apt-get install chromium)")
        return 1
    start = time.time()
    r = check_site(Path(site), screenshots, binary)
    bad = {p: f for p, f in r["pages"].items() if f}
    for page, found in bad.items():
        for f in found: print(f"{page}: {f}")
    n = len([p for p in r["pages"] if p != "(server)"])
    print(f"docs-check: {n} pages loaded in chromium, {r['requests']} requests served, {r['math_spans']} maths spans "
          f"rendered, {sum(map(len, bad.values()))} problems ({time.time() - start:.1f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    shots = None
    if "--screenshots" in args:
        i = args.index("--screenshots")
        shots = Path(args[i + 1])
        del args[i:i + 2]
    sys.exit(main(Path(args[0]) if args else Path("docs"), shots))
