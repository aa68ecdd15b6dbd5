// pov view: an opened cell (its checks, answer, prompt and the three ranked stages). See viewer.js.
(function (P) {
  "use strict";
  const { AXES, AXIS_TITLES, execs, el, num, short, detailsOf, chunkText, perf, crashBlock, answerBlock } = P;
  const STAGE_TITLES = { vector: "Stage 1 · vector search", query: "Stage 2 · query rerank", pov: "Stage 3 · POV rerank" };
  const SCORE_TITLES = { vector: "cosine", query: "cosine to question", pov: "POV score" };

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
    if (!rows.length) return el("p", { class: "note" }, "No output checks were recorded for this cell.");
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
    return panel("Cell " + short(c.id), () => P.update({ cell: "" }),
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

  Object.assign(P, { opened, panel, STAGE_TITLES });
})(window.POV);
