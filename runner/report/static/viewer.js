// pov view: the cells of one execution as a grid (or two executions side by side), built from the JSON the
// page embeds (runner/report/viewer.py). No network, no library: the DOM is built with textContent only,
// so nothing an answer holds can run or load. State lives in the address's #fragment, so that a link (from
// report.html) opens the page filtered, and the back button undoes a filter.
// This file: data, state, filters, cards and the grid; cell.js (an opened cell) and compare.js (two
// executions) add to the shared `POV` object, and the page is drawn once all three have run.
(function (POV) {
  "use strict";

  const AXES = ["model", "template", "persona", "pov_set", "question", "k"];
  const AXIS_TITLES = { model: "model", template: "template", persona: "persona", pov_set: "POV set", question: "question", k: "k", repeat: "repeat" };
  const PAGE_ROWS = 6; // grid rows built at a time: about two screenfuls, the next when the last comes near
  const CARD_CHARS = 700;

  const data = JSON.parse(document.getElementById("pov-data").textContent);
  let chunks = null; // parsed on first use: most visits open few cells
  function detailsOf(ex, id) {
    // Each cell's details are a block of their own, parsed when the cell is opened.
    const block = document.getElementById("pov-d-" + ex + "-" + id);
    return block ? JSON.parse(block.textContent) : { prompt: "", stages: [], reused: {} };
  }
  function chunkText(id) {
    if (chunks === null) chunks = JSON.parse(document.getElementById("pov-chunks").textContent);
    return chunks[id] || "";
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
    const s = { mode: "grid", ex: 0, rows: "question", cols: "template·persona", filters: {}, check: "", status: "", q: "", sort: "", tokens: "", cell: "" };
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
    for (const key of ["check", "status", "tokens", "q", "sort", "cell"]) if (s[key]) parts.push(key + "=" + encodeURIComponent(s[key]));
    const hash = parts.length ? "#" + parts.join("&") : "";
    if (hash === location.hash || (!hash && !location.hash)) return;
    if (replace) history.replaceState(null, "", hash || location.pathname);
    else history.pushState(null, "", hash || location.pathname);
  }
  let state = readState();
  function update(change, replace) {
    moveTo(Object.assign({}, state, change));
    writeState(state, replace);
  }
  function moveTo(next) {
    // Opening or closing a cell leaves the grid as it is: only the panel is drawn again.
    const same = (a, b) => JSON.stringify(Object.assign({}, a, { cell: "" })) === JSON.stringify(Object.assign({}, b, { cell: "" }));
    const panelOnly = same(state, next);
    state = next;
    if (panelOnly) renderPanel();
    else render();
  }
  window.addEventListener("popstate", () => moveTo(readState()));
  window.addEventListener("hashchange", () => moveTo(readState()));

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
    return el("div", { class: "card " + c.status, "data-cell": c.id, tabindex: "0", onclick: () => update({ cell: c.id }) },
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
    lazy(body, rowKeys.length, PAGE_ROWS, cols.length + 1, (i) => {
      const rk = rowKeys[i];
      const row = rows.get(rk);
      const head = el("th", { class: "rowhead" }, rk);
      if (state.rows === "question" && questions[rk]) head.append(el("div", { class: "qtext" }, questions[rk]));
      return el("tr", {}, head, cols.map((ck) => el("td", {}, (row.get(ck) || []).map((c) => card(c, ex, shown)))));
    });
  }

  function lazy(body, count, page, colspan, row) {
    // Rows `page` at a time: the next ones when a sentinel after the last comes within 800 px of view.
    let next = 0;
    function more() {
      const stop = Math.min(count, next + page);
      for (; next < stop; next++) body.append(row(next));
      if (next < count) {
        const sentinel = el("tr", { class: "sentinel" }, el("td", { colspan }, "more…"));
        body.append(sentinel);
        observer = new IntersectionObserver((entries) => {
          if (entries.some((e) => e.isIntersecting)) { observer.disconnect(); sentinel.remove(); more(); }
        }, { rootMargin: "800px" });
        observer.observe(sentinel);
      }
    }
    more();
  }

  // ---- the page ------------------------------------------------------------------------------------

  function render() {
    if (observer) { observer.disconnect(); observer = null; }
    const focused = document.activeElement && document.activeElement.name;
    app.replaceChildren();
    app.append(header(), toolbar());
    const main = el("main", { "data-mode": state.mode });
    app.append(main);
    if (state.mode === "compare") POV.compare(main);
    else grid(main);
    renderPanel();
    if (focused === "q") {
      const q = app.querySelector("input[name=q]");
      q.focus();
      q.setSelectionRange(q.value.length, q.value.length);
    }
    document.body.dataset.ready = "1";
  }
  function renderPanel() {
    for (const old of app.querySelectorAll(".overlay")) old.remove();
    if (!state.cell) return;
    const p = state.mode === "compare" ? POV.openedPair(state.cell) : POV.opened(state.ex, state.cell);
    if (p) app.append(p);
  }
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.cell) update({ cell: "" }); });

  Object.assign(POV, {
    AXES, AXIS_TITLES, execs, el, num, short, detailsOf, chunkText, update, matches, perf, crashBlock, answerBlock, lazy,
    state: () => state,
  });
  // Inline scripts all run before DOMContentLoaded: by then cell.js and compare.js have added their parts.
  document.addEventListener("DOMContentLoaded", () => {
    render();
    performance.mark("pov-first-render");
  });
})((window.POV = window.POV || {}));
