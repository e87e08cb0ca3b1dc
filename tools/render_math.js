// Render TeX to HTML + MathML with KaTeX, for tools/docs.py: the site's maths is written at build time, so a page
// shows its equations with no script and no network (only katex.min.css and its fonts, bundled in site_libs/katex/).
// usage: node render_math.js KATEX_DIR < [[tex, display], ...] > [{html} | {error, html}, ...]
const katex = require(require("path").join(process.argv[2], "dist", "katex.js"));
let input = "";
process.stdin.on("data", (d) => (input += d)).on("end", () => {
  const out = JSON.parse(input).map(([tex, display]) => {
    // `\*`: a `*` escaped for Markdown inside maths (`o^\*`), meant as a star; KaTeX knows no `\*`
    const opts = { displayMode: display, output: "htmlAndMathml", strict: "ignore", macros: { "\\*": "*" } };
    try {
      return { html: katex.renderToString(tex, { ...opts, throwOnError: true }) };
    } catch (e) {
      // still written (KaTeX marks it `katex-error`), so the page shows the TeX in red and tests/test_docs.py fails
      return { error: String(e.message), html: katex.renderToString(tex, { ...opts, throwOnError: false }) };
    }
  });
  process.stdout.write(JSON.stringify(out));
});
