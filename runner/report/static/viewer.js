// pov view: the cells of one execution as a grid (or two executions side by side), built from the JSON the
// page embeds (runner/report/viewer.py). No network, no library: the DOM is built with textContent only,
// so nothing an answer holds can run or load. State lives in the address's #fragment, so that a link (from
// report.html) opens the page filtered, and the back button undoes a filter.
(function () {
  "use strict";

  const AXES = ["model", "template", "persona", "pov_set", "question", "k"];
  const AXIS_TITLES = { model: "model", template: "template", persona: "persona", pov_set: "POV set", question: "question", k: "k", repeat: "repeat" };
  const STAGE_TITLES = { vector: "Stage 1 · vector search", query: "Stage 2 · query rerank", pov: "Stage 3 · POV rerank" };
  const SCORE_TITLES = { vector: "cosine", query: "cosine to question", pov: "POV score" };
  const PAGE_ROWS = 20;
  const PAGE_PAIRS = 80;
  const CARD_CHARS = 700;

  const data = JSON.parse(document.getElementById("pov-data").textContent);
  let details = null; // parsed on first use: most visits open few cells
  function detailsOf(ex, id) {
    if (details === null) details = JSON.parse(document.getElementById("pov-details").textContent);
    return details.executions[ex][id] || { prompt: "", stages: [], reused: {} };
  }
  function chunkText(id) {
    if (details === null) details = JSON.parse(document.getElementById("pov-details").textContent);
    return details.chunks[id] || "";
  }

  const execs = data.executions;
  const app = document.getElementById("app");
  let observer = null;

  // ---- helpers -------------------------------------------------------------------------------------

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return node;
  }
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(digits === undefined ? 2 : digits);
  }
  function slug(title) {
    return title.toLowerCase().replace(/[^a-z0-9]+/g, "_").replace(/^_+|_+$/g, "") || "section";
  }
  function short(id) {
    return id.length > 12 ? id.slice(0, 8) + "…" : id;
  }
  function promptTokens(c) {
    const m = c.metrics;
    return m.complexity_prompt_tokens ?? m.prompt_tokens ?? null;
  }

  // ---- state in the #fragment ------------------------------------------------------------------------

  function readState() {
    const s = { mode: "grid", ex: 0, rows: "question", cols: "template·persona", filters: {}, check: "", status: "", q: "", sort: "", tokens: "", cell: "", side: "" };
    const raw = location.hash.replace(/^#/, "");
    for (const part of raw.split("&")) {
      if (!part) continue;
      const i = part.indexOf("=");
      const key = decodeURIComponent(i < 0 ? part : part.slice(0, i));
      const value = i < 0 ? "" : decodeURIComponent(part.slice(i + 1).replace(/\+/g, " "));
      if (AXES.includes(key) || key === "repeat") s.filters[key] = value;
      else if (key in s) s[key] = key === "ex" ? Number(value) || 0 : value;
    }
    if (s.mode === "compare" && execs.length < 2) s.mode = "grid";
    if (s.ex >= execs.length) s.ex = 0;
    return s;
  }
  function writeState(s, replace) {
    const parts = [];
    const defaults = { mode: "grid", ex: 0, rows: "question", cols: "template·persona" };
    for (const key of ["mode", "ex", "rows", "cols"]) if (s[key] !== defaults[key]) parts.push(key + "=" + encodeURIComponent(s[key]));
    for (const [k, v] of Object.entries(s.filters)) if (v !== "") parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(v));
    for (const key of ["check", "status", "tokens", "q", "sort", "cell", "side"]) if (s[key]) parts.push(key + "=" + encodeURIComponent(s[key]));
    const hash = parts.length ? "#" + parts.join("&") : "";
    if (hash === location.hash || (!hash && !location.hash)) return;
    if (replace) history.replaceState(null, "", hash || location.pathname);
    else history.pushState(null, "", hash || location.pathname);
  }
  let state = readState();
  function update(change, replace) {
    state = Object.assign({}, state, change);
    writeState(state, replace);
    render();
  }
  window.addEventListener("popstate", () => { state = readState(); render(); });
  window.addEventListener("hashchange", () => { state = readState(); render(); });

  // ---- filtering -----------------------------------------------------------------------------------

  function axisValue(c, axis) {
    return axis === "repeat" ? String(c.repeat) : c.axes[axis];
  }
  function keyOf(c, spec) {
    return spec.split("·").map((a) => axisValue(c, a)).join(" · ");
  }
  function matches(c, s) {
    for (const [axis, value] of Object.entries(s.filters)) if (value !== "" && axisValue(c, axis) !== value) return false;
    if (s.status && c.status !== s.status) return false;
    if (s.check) {
      const [name, want] = s.check.split(":");
      const got = c.checks[name];
      if (got === undefined || (want && got !== want)) return false;
    }
    if (s.tokens) {
      const [lo, hi] = s.tokens.split("-").map(Number);
      const t = promptTokens(c);
      if (t === null || Math.round(t) < lo || Math.round(t) > (Number.isNaN(hi) ? lo : hi)) return false;
    }
    if (s.q) {
      const q = s.q.toLowerCase();
      const hay = (c.answer || "") + "\n" + (c.error || "") + "\n" + (c.cause || "");
      if (!hay.toLowerCase().includes(q)) return false;
    }
    return true;
  }
  const SORTS = {
    "": ["cell order", null],
    latency: ["latency, slowest first", (c) => -(c.metrics.latency_s ?? -Infinity)],
    pov: ["POV retention, lowest first", (c) => c.metrics.check_pov_retention ?? Infinity],
    copied: ["copied share, highest first", (c) => -(c.metrics.check_copied_share ?? -Infinity)],
    dup: ["duplication, highest first", (c) => -Math.max(c.metrics.check_dup_overlap ?? -Infinity, c.metrics.check_dup_cosine ?? -Infinity)],
    tokens: ["prompt tokens, longest first", (c) => -(promptTokens(c) ?? -Infinity)],
  };
  function sorted(cells, s) {
    const by = SORTS[s.sort] ? SORTS[s.sort][1] : null;
    if (!by) return cells;
    return cells.map((c, i) => [by(c), i, c]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((x) => x[2]);
  }

  // ---- the badges of a card ------------------------------------------------------------------------

  function badges(c, ex) {
    const m = c.metrics;
    const out = [];
    const ck = c.checks;
    function badge(name, label, tip) {
      const v = ck[name];
      if (v === undefined) return;
      out.push(el("span", { class: "badge " + (v === "pass" ? "pass" : "fail"), title: tip, "data-check": name, "data-result": v }, label));
    }
    badge("sections", "sections " + (m.check_sections_missing ? m.check_sections_missing + " missing" : "✓"), "every section the template declares is there");
    if (ck.words !== undefined) {
      const titles = execs[ex].sections[c.axes.template] || [];
      const counts = titles.map((t) => m["check_words_" + slug(t)]).filter((x) => x !== undefined && x !== null);
      badge("words", "words " + (counts.length ? counts.map((x) => x.toFixed(0)).join("/") : "?"), "words per section: " + titles.join(", "));
    }
    const dup = Math.max(m.check_dup_overlap ?? -1, m.check_dup_cosine ?? -1);
    badge("duplication", "dup " + (dup >= 0 ? num(dup) : "?"), "how much the sections repeat one another (trigram overlap, cosine)");
    badge("pov_retention", "POV " + num(m.check_pov_retention), "POV score of the answer over its context's: 1 keeps the edge");
    badge("idk", ck.idk === "fail" ? "I don't know" : "answered", "the answer is not just \"I don't know\"");
    badge("degenerate", ck.degenerate === "fail" ? "degenerate" : "not degenerate", "empty, or stuck in a repetition loop");
    badge("copied", "copied " + num(100 * (m.check_copied_share ?? 0), 0) + "%", "share of the answer's word 8-grams found verbatim in its context");
    for (const name of Object.keys(ck)) if (!["sections", "words", "duplication", "pov_retention", "idk", "degenerate", "copied"].includes(name)) badge(name, name, "check " + name);
    return out;
  }
  function perf(c) {
    const m = c.metrics;
    const bits = [];
    if (m.latency_s !== undefined && m.latency_s !== null) bits.push(num(m.latency_s) + " s");
    if (m.new_tokens !== undefined && m.new_tokens !== null) bits.push(num(m.new_tokens, 0) + " new tok");
    if (m.tokens_per_s !== undefined && m.tokens_per_s !== null) bits.push(num(m.tokens_per_s, 1) + " tok/s");
    const t = promptTokens(c);
    if (t !== null) bits.push(num(t, 0) + " prompt tok");
    return bits.join(" · ");
  }
  function answerBlock(c, ex, full) {
    // The answer as the model wrote it; its heading lines (markdown, or a declared section's title) stand
    // out, and a chip per declared section says whether the checks found it, with its word count.
    const box = el("div", { class: "answer" });
    const m = c.metrics;
    if (c.sections && c.sections.length) {
      box.append(el("div", { class: "sections" }, c.sections.map((s) => {
        const n = m["check_words_" + slug(s.title)];
        return el("span", { class: "section-chip " + (s.present ? "present" : "missing"), "data-section": s.title },
          s.title + (s.present ? (n !== undefined && n !== null ? " · " + n.toFixed(0) + " words" : "") : " · missing"));
      })));
    }
    const titles = (execs[ex].sections[c.axes.template] || []).map((t) => t.toLowerCase());
    const text = el("div", { class: "answer-text" });
    for (const line of clip(c.answer || "", full).split("\n")) {
      const bare = line.replace(/^[\s#*_>-]+|[\s*_:]+$/g, "").toLowerCase();
      const heading = /^\s*#{1,6}\s/.test(line) || (bare && titles.includes(bare));
      text.append(heading ? el("div", { class: "section-title" }, line) : el("div", { class: "line" }, line || "\u00a0"));
    }
    box.append(text);
    return box;
  }
  function clip(text, full) {
    return full || text.length <= CARD_CHARS ? text : text.slice(0, CARD_CHARS) + " …";
  }
  function crashBlock(c, full) {
    const tail = (c.stderr || "").split("\n").filter((x) => x.trim()).slice(full ? -40 : -4).join("\n");
    return el("div", { class: "crash" },
      el("div", {}, el("b", { class: "cause" }, c.cause || "crashed"), " ", c.error || ""),
      tail ? el("pre", { class: "stderr" }, tail) : null);
  }
  function card(c, ex, shown) {
    const others = AXES.filter((a) => !shown.includes(a)).map((a) => AXIS_TITLES[a] + " " + c.axes[a]);
    if (c.repeat && c.repeat !== "0") others.push("repeat " + c.repeat);
    return el("div", { class: "card " + c.status, "data-cell": c.id, tabindex: "0", onclick: () => update({ cell: c.id, side: "" }) },
      el("div", { class: "meta" }, el("span", { class: "status " + c.status }, c.status), " ", others.join(" · ")),
      c.status === "crashed" ? crashBlock(c, false) : el("div", { class: "badges" }, badges(c, ex)),
      c.status === "crashed" ? null : el("div", { class: "perf" }, perf(c)),
      c.answer !== undefined ? answerBlock(c, ex, false) : null);
  }

  // ---- toolbar -------------------------------------------------------------------------------------

  function valuesOf(axis) {
    const seen = new Set();
    for (const ex of execs) for (const c of ex.cells) seen.add(axisValue(c, axis));
    return [...seen].sort();
  }
  function checkNames() {
    const seen = new Set();
    for (const ex of execs) for (const c of ex.cells) for (const k of Object.keys(c.checks)) seen.add(k);
    return [...seen].sort();
  }
  function select(name, options, value, onchange, label) {
    const s = el("select", { name, "aria-label": label || name, onchange: (e) => onchange(e.target.value) });
    for (const [v, text] of options) s.append(el("option", { value: v, selected: v === value }, text));
    return s;
  }
  function toolbar() {
    const bar = el("div", { class: "toolbar" });
    if (execs.length > 1) {
      bar.append(el("div", { class: "tabs" },
        el("button", { class: state.mode === "grid" ? "on" : "", "data-mode": "grid", onclick: () => update({ mode: "grid", cell: "" }) }, "Grid"),
        el("button", { class: state.mode === "compare" ? "on" : "", "data-mode": "compare", onclick: () => update({ mode: "compare", cell: "" }) }, "Compare")));
      if (state.mode === "grid") bar.append(el("label", {}, "execution ", select("ex", execs.map((e, i) => [String(i), e.label]), String(state.ex), (v) => update({ ex: Number(v), cell: "" }))));
    }
    const layouts = [...AXES, "repeat", "template·persona", "model·k", "pov_set·k"].map((a) => [a, a.split("·").map((x) => AXIS_TITLES[x]).join(" · ")]);
    if (state.mode === "grid") {
      bar.append(el("label", {}, "rows ", select("rows", layouts, state.rows, (v) => update({ rows: v }))));
      bar.append(el("label", {}, "columns ", select("cols", layouts, state.cols, (v) => update({ cols: v }))));
    }
    const filters = el("div", { class: "filters" });
    for (const axis of [...AXES, "repeat"]) {
      const values = valuesOf(axis);
      if (values.length < 2 && !state.filters[axis]) continue;
      filters.append(el("label", {}, AXIS_TITLES[axis] + " ", select(axis, [["", "all"], ...values.map((v) => [v, v])], state.filters[axis] || "", (v) => update({ filters: Object.assign({}, state.filters, { [axis]: v }) }), "filter " + axis)));
    }
    const checks = [["", "any"]];
    for (const n of checkNames()) checks.push([n + ":fail", n + " failed"], [n + ":pass", n + " passed"]);
    filters.append(el("label", {}, "check ", select("check", checks, state.check, (v) => update({ check: v }))));
    filters.append(el("label", {}, el("input", { type: "checkbox", name: "crashed", checked: state.status === "crashed", onchange: (e) => update({ status: e.target.checked ? "crashed" : "" }) }), " crashed only"));
    if (state.tokens) filters.append(el("span", { class: "chip" }, "prompt tokens " + state.tokens + " ", el("button", { onclick: () => update({ tokens: "" }) }, "×")));
    const search = el("input", { type: "search", name: "q", placeholder: "search answers", value: state.q });
    let timer = null;
    search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => update({ q: search.value }, true), 200); });
    filters.append(search);
    filters.append(el("label", {}, "sort ", select("sort", Object.entries(SORTS).map(([k, v]) => [k, v[0]]), state.sort, (v) => update({ sort: v }))));
    bar.append(filters);
    return bar;
  }

  // ---- the grid ------------------------------------------------------------------------------------

  function header() {
    const box = el("header", {});
    box.append(el("h1", {}, data.title));
    for (const ex of execs) {
      const total = ex.cells_total;
      const crashed = ex.cells.filter((c) => c.status === "crashed").length;
      const line = el("p", { class: "exec" }, el("b", {}, ex.label), " · spec " + ex.spec_name + " · " + ex.cells.length + (total ? " of " + total : "") + " cells recorded, " + crashed + " crashed");
      box.append(line);
      if (ex.in_progress) box.append(el("p", { class: "warn", "data-in-progress": ex.run_id }, "In progress: execution " + ex.label + " is still running (or was stopped by a kill before it finished); this page shows the " + ex.cells.length + (total ? " of " + total : "") + " cells recorded so far. Run pov view again for the rest."));
      if (!ex.cells.length) box.append(el("p", { class: "warn empty" }, "Execution " + ex.label + " has no finished or crashed cells yet."));
    }
    return box;
  }
  function grid(main) {
    const ex = state.ex;
    const shown = [...state.rows.split("·"), ...state.cols.split("·")];
    const cells = sorted(execs[ex].cells.filter((c) => matches(c, state)), state);
    main.append(el("p", { class: "count", "data-count": cells.length }, cells.length + " of " + execs[ex].cells.length + " cells"));
    if (!cells.length) { main.append(el("p", { class: "empty" }, "No cell matches these filters.")); return; }
    const cols = [];
    const rows = new Map();
    for (const c of cells) {
      const ck = keyOf(c, state.cols);
      const rk = keyOf(c, state.rows);
      if (!cols.includes(ck)) cols.push(ck);
      if (!rows.has(rk)) rows.set(rk, new Map());
      const row = rows.get(rk);
      if (!row.has(ck)) row.set(ck, []);
      row.get(ck).push(c);
    }
    if (!state.sort) cols.sort();
    const rowKeys = [...rows.keys()];
    if (!state.sort) rowKeys.sort();
    const table = el("table", { class: "grid" });
    table.append(el("thead", {}, el("tr", {}, el("th", {}, state.rows.split("·").map((a) => AXIS_TITLES[a]).join(" · ")), cols.map((k) => el("th", {}, k)))));
    const body = el("tbody", {});
    table.append(body);
    main.append(table);
    const questions = execs[ex].questions || {};
    let next = 0;
    function more() {
      const stop = Math.min(rowKeys.length, next + PAGE_ROWS);
      for (; next < stop; next++) {
        const rk = rowKeys[next];
        const row = rows.get(rk);
        const head = el("th", { class: "rowhead" }, rk);
        if (state.rows === "question" && questions[rk]) head.append(el("div", { class: "qtext" }, questions[rk]));
        body.append(el("tr", {}, head, cols.map((ck) => el("td", {}, (row.get(ck) || []).map((c) => card(c, ex, shown))))));
      }
      if (next < rowKeys.length) {
        const sentinel = el("tr", { class: "sentinel" }, el("td", { colspan: cols.length + 1 }, "more…"));
        body.append(sentinel);
        observer = new IntersectionObserver((entries) => {
          if (entries.some((e) => e.isIntersecting)) { observer.disconnect(); sentinel.remove(); more(); }
        }, { rootMargin: "800px" });
        observer.observe(sentinel);
      }
    }
    more();
  }

  // ---- an opened cell ------------------------------------------------------------------------------

  function move(chunk) {
    if (chunk.prev === null || chunk.prev === undefined) return el("span", { class: "move new", title: "not in the stage before" }, "new");
    const d = chunk.prev - chunk.rank;
    if (d > 0) return el("span", { class: "move up", title: "rank " + chunk.prev + " → " + chunk.rank }, "▲" + d);
    if (d < 0) return el("span", { class: "move down", title: "rank " + chunk.prev + " → " + chunk.rank }, "▼" + -d);
    return el("span", { class: "move same", title: "same rank" }, "=");
  }
  function highlighted(text, spans) {
    const box = el("div", { class: "chunk-text" });
    let at = 0;
    for (const [a, b] of spans || []) {
      if (a > at) box.append(text.slice(at, a));
      box.append(el("mark", {}, text.slice(a, b)));
      at = b;
    }
    box.append(text.slice(at));
    return box;
  }
  function stageTable(stage, reused, first) {
    const sims = stage.sims || [];
    const statements = stage.statements || [];
    const head = el("tr", {}, el("th", {}, "#"), first ? null : el("th", {}, "move"), el("th", {}, "chunk"), el("th", {}, SCORE_TITLES[stage.name] || "score"),
      statements.map((s, j) => el("th", { class: "sim", title: s }, "s" + (j + 1))));
    const table = el("table", { class: "stage", "data-stage": stage.name }, el("thead", {}, head));
    const body = el("tbody", {});
    stage.chunks.forEach((chunk, i) => {
      const text = chunkText(chunk.id);
      const r = reused[chunk.id];
      const tr = el("tr", { class: "chunk" + (r ? " reused" : ""), "data-chunk": chunk.id, title: r ? "the answer reused " + Math.round(100 * r.share) + "% of its 8-grams from this chunk" : "" },
        el("td", {}, chunk.rank), first ? null : el("td", {}, move(chunk)),
        el("td", { class: "snippet" }, el("code", {}, short(chunk.id)), " ", text.slice(0, 90) + (text.length > 90 ? "…" : ""), r ? el("span", { class: "reuse" }, " reused " + Math.round(100 * r.share) + "%") : null),
        el("td", { class: "num" }, num(chunk.score, 3)),
        (sims[i] || []).map((v) => el("td", { class: "num sim", style: "--w:" + Math.max(0, Math.min(1, v)).toFixed(3) }, num(v, 2))));
      const open = el("tr", { class: "chunk-open", hidden: true }, el("td", { colspan: 4 + statements.length }, highlighted(text, r && r.spans)));
      tr.addEventListener("click", () => { open.hidden = !open.hidden; });
      body.append(tr, open);
    });
    table.append(body);
    const box = el("div", { class: "stage-box" }, el("h4", {}, (STAGE_TITLES[stage.name] || stage.name) + " · k=" + stage.k), table);
    if (statements.length) box.append(el("ol", { class: "statements" }, statements.map((s, j) => el("li", { value: j + 1 }, "s" + (j + 1) + ": " + s))));
    return box;
  }
  function checksTable(c) {
    const rows = Object.entries(c.checks).map(([k, v]) => el("tr", { "data-check": k }, el("td", {}, k), el("td", { class: v }, v)));
    const metrics = Object.entries(c.metrics).filter(([k]) => k.startsWith("check_")).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, num(v, 3))));
    return el("div", { class: "checks" }, el("table", { class: "checks-table" }, el("tbody", {}, rows)), el("table", { class: "metrics-table" }, el("tbody", {}, metrics)));
  }
  function stagesOf(d) {
    return el("div", { class: "stages" }, d.stages.map((s, i) => stageTable(s, d.reused || {}, i === 0)));
  }
  function panel(title, onclose, ...body) {
    const box = el("aside", { class: "panel", role: "dialog", "aria-label": title },
      el("div", { class: "panel-head" }, el("h2", {}, title), el("button", { class: "close", "aria-label": "close", onclick: onclose }, "×")), ...body);
    return el("div", { class: "overlay", onclick: (e) => { if (e.target === e.currentTarget) onclose(); } }, box);
  }
  function opened(ex, id) {
    const c = execs[ex].cells.find((x) => x.id === id);
    if (!c) return null;
    const d = detailsOf(ex, id);
    const q = execs[ex].questions[c.axes.question];
    return panel("Cell " + short(c.id), () => update({ cell: "" }),
      el("p", { class: "axes" }, AXES.map((a) => el("span", { class: "axis" }, AXIS_TITLES[a] + ": ", el("b", {}, c.axes[a])))),
      q ? el("p", { class: "question" }, q) : null,
      el("p", { class: "meta" }, el("span", { class: "status " + c.status }, c.status), " ", perf(c), " · cell ", el("code", {}, c.id)),
      c.status === "crashed" ? crashBlock(c, true) : null,
      el("h3", {}, "Checks"), checksTable(c),
      c.answer !== undefined ? [el("h3", {}, "Answer"), answerBlock(c, ex, true)] : null,
      el("h3", {}, "Retrieval"), el("p", { class: "note" }, "Each stage ranks the previous one's chunks; ▲/▼ is the move from the stage before. Highlighted: chunks the answer reused (shared word 8-grams); click a chunk for its text."),
      stagesOf(d),
      el("h3", {}, "Prompt as sent"), el("pre", { class: "prompt" }, d.prompt));
  }

  // ---- compare -------------------------------------------------------------------------------------

  function tokens(text) {
    return text.match(/\s+|[^\s]+/g) || [];
  }
  function wordDiff(a, b) {
    const x = tokens(a), y = tokens(b);
    if (x.length * y.length > 4e6) return null;
    const n = x.length, m = y.length;
    const dp = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) dp[i][j] = x[i] === y[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
    const out = [];
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (x[i] === y[j]) { out.push(["=", x[i]]); i++; j++; }
      else if (dp[i + 1][j] >= dp[i][j + 1]) out.push(["-", x[i++]]);
      else out.push(["+", y[j++]]);
    }
    while (i < n) out.push(["-", x[i++]]);
    while (j < m) out.push(["+", y[j++]]);
    return out;
  }
  function diffBlock(ops, side) {
    const box = el("div", { class: "diff" });
    for (const [op, t] of ops) {
      if (op === "=") box.append(t);
      else if (op === "-" && side === "a") box.append(el("del", {}, t));
      else if (op === "+" && side === "b") box.append(el("ins", {}, t));
    }
    return box;
  }
  function pairs() {
    const a = new Map(execs[0].cells.map((c) => [c.id, c]));
    const b = new Map(execs[1].cells.map((c) => [c.id, c]));
    const both = [...a.keys()].filter((id) => b.has(id)).map((id) => [a.get(id), b.get(id)]);
    return { both, onlyA: [...a.values()].filter((c) => !b.has(c.id)), onlyB: [...b.values()].filter((c) => !a.has(c.id)) };
  }
  function sameAnswer(x, y) {
    if (x.status !== y.status) return "changed";
    if (x.status === "crashed") return x.cause === y.cause ? "identical" : "changed";
    return x.answer === y.answer ? "identical" : "changed";
  }
  function sameRanking(x, y) {
    if (x.ranking && y.ranking) return x.ranking === y.ranking ? "identical" : "changed";
    return "?";
  }
  function compare(main) {
    const { both, onlyA, onlyB } = pairs();
    const shown = both.filter(([x, y]) => matches(x, state) || matches(y, state));
    const ansSame = shown.filter(([x, y]) => sameAnswer(x, y) === "identical").length;
    const rankSame = shown.filter(([x, y]) => sameRanking(x, y) === "identical").length;
    main.append(el("p", { class: "count summary", "data-count": shown.length },
      shown.length + " cells in both executions: answers identical in " + ansSame + ", rankings identical in " + rankSame +
      "; only in " + execs[0].label + ": " + onlyA.length + "; only in " + execs[1].label + ": " + onlyB.length));
    const table = el("table", { class: "pairs" }, el("thead", {}, el("tr", {},
      el("th", {}, "cell"), el("th", {}, execs[0].label), el("th", {}, execs[1].label), el("th", {}, "answer"), el("th", {}, "rankings"))));
    const body = el("tbody", {});
    table.append(body);
    main.append(table);
    let next = 0;
    function more() {
      const stop = Math.min(shown.length, next + PAGE_PAIRS);
      for (; next < stop; next++) {
        const [x, y] = shown[next];
        const ans = sameAnswer(x, y), rank = sameRanking(x, y);
        body.append(el("tr", { class: "pair", "data-cell": x.id, onclick: () => update({ cell: x.id }) },
          el("td", {}, el("code", {}, short(x.id)), " ", [x.axes.template, x.axes.persona, x.axes.pov_set, x.axes.question].join(" · ")),
          el("td", { class: "status " + x.status }, x.status + (x.cause ? " (" + x.cause + ")" : "")),
          el("td", { class: "status " + y.status }, y.status + (y.cause ? " (" + y.cause + ")" : "")),
          el("td", { class: "verdict " + ans, "data-answer": ans }, ans),
          el("td", { class: "verdict " + rank, "data-ranking": rank }, rank)));
      }
      if (next < shown.length) {
        const sentinel = el("tr", { class: "sentinel" }, el("td", { colspan: 5 }, "more…"));
        body.append(sentinel);
        observer = new IntersectionObserver((entries) => {
          if (entries.some((e) => e.isIntersecting)) { observer.disconnect(); sentinel.remove(); more(); }
        }, { rootMargin: "800px" });
        observer.observe(sentinel);
      }
    }
    more();
    for (const [label, list] of [[execs[0].label, onlyA], [execs[1].label, onlyB]]) {
      if (!list.length) continue;
      main.append(el("h3", {}, "Only in " + label + " (" + list.length + ")"),
        el("ul", { class: "only" }, list.map((c) => el("li", {}, el("code", {}, short(c.id)), " " + AXES.map((a) => c.axes[a]).join(" · ") + " · " + c.status))));
    }
  }
  function rankingChanges(da, db) {
    const box = el("div", { class: "ranking-changes" });
    da.stages.forEach((sa, i) => {
      const sb = db.stages[i];
      if (!sb) return;
      const ia = sa.chunks.map((c) => c.id), ib = sb.chunks.map((c) => c.id);
      const same = ia.length === ib.length && ia.every((v, j) => v === ib[j]);
      const rows = same ? [] : ib.map((id, j) => {
        const was = ia.indexOf(id);
        return el("li", {}, el("code", {}, short(id)), " ", was < 0 ? "new at " + (j + 1) : was === j ? "= " + (j + 1) : (was + 1) + " → " + (j + 1));
      });
      box.append(el("div", { "data-stage": sa.name }, el("b", {}, STAGE_TITLES[sa.name] || sa.name), ": ", same ? el("span", { class: "verdict identical" }, "identical") : el("ol", {}, rows)));
    });
    return box;
  }
  function openedPair(id) {
    const x = execs[0].cells.find((c) => c.id === id), y = execs[1].cells.find((c) => c.id === id);
    if (!x || !y) return null;
    const ops = x.answer !== undefined && y.answer !== undefined ? wordDiff(x.answer, y.answer) : null;
    const ans = sameAnswer(x, y);
    function side(c, key) {
      return el("div", { class: "side" }, el("h4", {}, execs[key === "a" ? 0 : 1].label),
        c.status === "crashed" ? crashBlock(c, true) : ops && ans === "changed" ? diffBlock(ops, key) : answerBlock(c, key === "a" ? 0 : 1, true));
    }
    return panel("Cell " + short(id) + " in both executions", () => update({ cell: "" }),
      el("p", { class: "axes" }, AXES.map((a) => el("span", { class: "axis" }, AXIS_TITLES[a] + ": ", el("b", {}, x.axes[a])))),
      el("p", {}, "answer: ", el("span", { class: "verdict " + ans, "data-answer": ans }, ans), " · rankings: ", el("span", { class: "verdict " + sameRanking(x, y) }, sameRanking(x, y))),
      el("div", { class: "sides" }, side(x, "a"), side(y, "b")),
      el("h3", {}, "Ranking changes"), rankingChanges(detailsOf(0, id), detailsOf(1, id)));
  }

  // ---- the page ------------------------------------------------------------------------------------

  function render() {
    if (observer) { observer.disconnect(); observer = null; }
    const focused = document.activeElement && document.activeElement.name;
    app.replaceChildren();
    app.append(header(), toolbar());
    const main = el("main", { "data-mode": state.mode });
    app.append(main);
    if (state.mode === "compare") compare(main);
    else grid(main);
    if (state.cell) {
      const p = state.mode === "compare" ? openedPair(state.cell) : opened(state.ex, state.cell);
      if (p) app.append(p);
    }
    if (focused === "q") {
      const q = app.querySelector("input[name=q]");
      q.focus();
      q.setSelectionRange(q.value.length, q.value.length);
    }
    document.body.dataset.ready = "1";
  }
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.cell) update({ cell: "" }); });

  render();
  performance.mark("pov-first-render");
})();
