// pov view: two executions side by side, paired by cell id, with word diffs of the answers. See viewer.js.
(function (P) {
  "use strict";
  const { AXES, AXIS_TITLES, execs, el, short, detailsOf, crashBlock, answerBlock } = P;
  const PAGE_PAIRS = 80;

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
    // One side of the diff: common text plain, this side's own words marked, runs of them merged.
    const box = el("div", { class: "diff" });
    let run = null;
    for (const [op, t] of ops) {
      const mine = (op === "-" && side === "a") || (op === "+" && side === "b");
      if (op !== "=" && !mine) continue;
      if (mine && run) { run.textContent += t; continue; }
      if (mine) { run = el(side === "a" ? "del" : "ins", {}, t); box.append(run); continue; }
      run = null;
      box.append(t);
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
    const shown = both.filter(([x, y]) => P.matches(x, P.state()) || P.matches(y, P.state()));
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
    P.lazy(body, shown.length, PAGE_PAIRS, 5, (i) => {
      const [x, y] = shown[i];
      const ans = sameAnswer(x, y), rank = sameRanking(x, y);
      return el("tr", { class: "pair", "data-cell": x.id, onclick: () => P.update({ cell: x.id }) },
        el("td", {}, el("code", {}, short(x.id)), " ", [x.axes.template, x.axes.persona, x.axes.pov_set, x.axes.question].join(" · ")),
        el("td", { class: "status " + x.status }, x.status + (x.cause ? " (" + x.cause + ")" : "")),
        el("td", { class: "status " + y.status }, y.status + (y.cause ? " (" + y.cause + ")" : "")),
        el("td", { class: "verdict " + ans, "data-answer": ans }, ans),
        el("td", { class: "verdict " + rank, "data-ranking": rank }, rank));
    });
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
      box.append(el("div", { "data-stage": sa.name }, el("b", {}, P.STAGE_TITLES[sa.name] || sa.name), ": ", same ? el("span", { class: "verdict identical" }, "identical") : el("ol", {}, rows)));
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
    return P.panel("Cell " + short(id) + " in both executions", () => P.update({ cell: "" }),
      el("p", { class: "axes" }, AXES.map((a) => el("span", { class: "axis" }, AXIS_TITLES[a] + ": ", el("b", {}, x.axes[a])))),
      el("p", {}, "answer: ", el("span", { class: "verdict " + ans, "data-answer": ans }, ans), " · rankings: ", el("span", { class: "verdict " + sameRanking(x, y) }, sameRanking(x, y))),
      el("div", { class: "sides" }, side(x, "a"), side(y, "b")),
      el("h3", {}, "Ranking changes"), rankingChanges(detailsOf(0, id), detailsOf(1, id)));
  }

  Object.assign(P, { compare, openedPair });
})(window.POV);
