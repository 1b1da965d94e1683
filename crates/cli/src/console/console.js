"use strict";
// The tokenmeter console: reads the collector's read API (docs/api.md) and draws it as
// plain HTML and SVG. Everything from the store enters the page as text nodes or attribute
// values, never as markup, so collected prompts and answers show as what they are.
(() => {
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = {
    prompt: "#3867d6", completion: "#20bf6b", cached: "#8854d0", reasoning: "#fa8231",
    bad: "#c0392b", muted: "#5e6779", ok: "#20bf6b",
  };
  // A step per window that gives 24 to 60 points and reads the coarsest rollup tier that
  // fits (minutes for an hour, hours for a day and a week, days for 30 days).
  const STEPS = { PT1H: "PT1M", P1D: "PT1H", P7D: "PT6H", P30D: "P1D" };
  const TABS = ["overview", "usage", "quality", "operations", "monitors", "trace"];
  const RECORD_FIELDS = new Set(["id", "time", "model", "operation", "route", "dimensions",
    "usage", "status", "duration_ms", "ttft_ms", "truncated"]);
  const PAGE = 20;

  // ---- building the page -------------------------------------------------------------

  function add(node, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    return add(e, children);
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return add(e, children);
  }

  const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const ms = (x) => (x === null || x === undefined ? "–" : `${Number(x).toFixed(1)} ms`);
  const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);
  const dec = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

  function card(label, value, id, raw) {
    return el("div", { class: "card" },
      el("div", { class: "label" }, label),
      el("div", { class: "value", id, "data-value": raw ?? null }, value));
  }

  function panel(title, ...children) {
    return el("section", { class: "panel" }, title ? el("h2", {}, title) : null, children);
  }

  function legend(items) {
    return el("div", { class: "legend" },
      items.map(([name, swatch]) => el("span", {}, el("i", { class: `sw-${swatch}` }), name)));
  }

  function table(id, headers, rows, numeric = []) {
    return el("table", { id },
      el("thead", {}, el("tr", {}, headers.map((h, i) =>
        el("th", { class: numeric.includes(i) ? "num" : null }, h)))),
      el("tbody", {}, rows));
  }

  function row(cells, numeric = [], attrs = {}) {
    return el("tr", attrs, cells.map((c, i) =>
      el("td", { class: numeric.includes(i) ? "num" : null }, c)));
  }

  // ---- time --------------------------------------------------------------------------

  const utc = (t) => new Date(t).toISOString().slice(0, 16).replace("T", " ");
  function shortTime(t, spanMs) {
    const s = utc(t);
    return spanMs <= 86_400_000 ? s.slice(11) : s.slice(5);
  }

  /// Every step of an answer's window, so steps without traffic read as zero.
  function timeline(answer) {
    const from = Date.parse(answer.from);
    const to = Date.parse(answer.to);
    const step = answer.step_seconds * 1000;
    const out = [];
    for (let t = from; t < to && out.length < 10_000; t += step) out.push(t);
    return out;
  }

  /// Sums the groups' points per step of the timeline, for the given fields.
  function perStep(answer, times, value) {
    const at = new Map(times.map((t, i) => [t, i]));
    const out = times.map(() => 0);
    for (const g of answer.groups) {
      for (const p of g.points) {
        const i = at.get(Date.parse(p.time));
        if (i !== undefined) out[i] += value(p);
      }
    }
    return out;
  }

  // ---- charts ------------------------------------------------------------------------
  // Hand-drawn SVG: bars over steps and lines over time are all the console draws, and
  // SVG keeps every figure in the page as text a reader (or a test) can check.

  const W = 640, H = 190, L = 52, R = 10, T = 10, B = 24;

  /// A round top for an axis of four steps; whole steps for counts.
  function niceMax(v, whole = false) {
    if (!(v > 0)) return whole ? 4 : 1;
    const p = 10 ** Math.floor(Math.log10(v));
    let top = 10 * p;
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) { top = m * p; break; }
    return whole ? Math.max(4, Math.ceil(top / 4) * 4) : top;
  }

  function frame(label, yMax, yFmt, xTicks) {
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label });
    for (let k = 0; k <= 4; k++) {
      const y = H - B - (k / 4) * (H - T - B);
      s.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "axis" }));
      s.append(svg("text", { x: L - 6, y: y + 3, "text-anchor": "end" }, yFmt((yMax * k) / 4)));
    }
    for (const [x, text] of xTicks) {
      s.append(svg("text", { x, y: H - 6, "text-anchor": "middle" }, text));
    }
    return s;
  }

  function ticks(times, xOf) {
    if (!times.length) return [];
    const span = times[times.length - 1] - times[0];
    const picks = [...new Set([0, Math.floor((times.length - 1) / 2), times.length - 1])];
    return picks.map((i) => [xOf(i), shortTime(times[i], span)]);
  }

  /// Stacked bars, one per step: `stacks` is `[{name, color, values}]`.
  function bars(label, times, stacks, yFmt = fmt) {
    const totals = times.map((_, i) => stacks.reduce((s, st) => s + (st.values[i] || 0), 0));
    const yMax = niceMax(Math.max(0, ...totals), yFmt === fmt);
    const bw = (W - L - R) / Math.max(times.length, 1);
    const xOf = (i) => L + i * bw + bw / 2;
    const s = frame(label, yMax, yFmt, ticks(times, xOf));
    times.forEach((t, i) => {
      let y0 = H - B;
      for (const st of stacks) {
        const v = st.values[i] || 0;
        if (!v) continue;
        const h = (v / yMax) * (H - T - B);
        s.append(svg("rect", {
          x: L + i * bw + bw * 0.1, y: y0 - h, width: Math.max(bw * 0.8, 1), height: h, fill: st.color,
        }, svg("title", {}, `${utc(t)} ${st.name}: ${yFmt(v)}`)));
        y0 -= h;
      }
    });
    return s;
  }

  /// Lines over time: `series` is `[{name, color, points: [[time, value|null]]}]`, and
  /// `rules` horizontal lines `[{name, value, color}]` (thresholds).
  function lines(label, from, to, series, { rules = [], yMax = null, yFmt = dec } = {}) {
    const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
    const top = yMax ?? niceMax(Math.max(0, ...values, ...rules.map((r) => r.value)), yFmt === fmt);
    const span = Math.max(to - from, 1);
    const x = (t) => L + ((t - from) / span) * (W - L - R);
    const y = (v) => H - B - (v / top) * (H - T - B);
    const s = frame(label, top, yFmt, [[L, shortTime(from, span)], [W - R, shortTime(to, span)]]);
    for (const r of rules) {
      s.append(svg("line", {
        x1: L, x2: W - R, y1: y(r.value), y2: y(r.value), stroke: r.color, "stroke-dasharray": "4 3",
      }, svg("title", {}, `${r.name}: ${yFmt(r.value)}`)));
    }
    for (const ser of series) {
      const pts = ser.points.filter((p) => p[1] !== null);
      if (pts.length > 1) {
        s.append(svg("polyline", {
          points: pts.map((p) => `${x(p[0])},${y(p[1])}`).join(" "),
          fill: "none", stroke: ser.color, "stroke-width": 2,
        }));
      }
      for (const p of pts) {
        s.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, fill: ser.color },
          svg("title", {}, `${utc(p[0])} ${ser.name}: ${yFmt(p[1])}`)));
      }
    }
    return s;
  }

  // ---- state, the address and the API ------------------------------------------------

  const state = {
    tab: "overview", window: "P1D", from: "", to: "", scope: "", id: "",
    monitor: "", metric: "", verdict: "", offset: 0,
    token: sessionStorage.getItem("tokenmeter.token") || "",
  };

  function readHash() {
    const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
    const parts = path.split("/");
    state.tab = TABS.includes(parts[0]) ? parts[0] : "overview";
    let id = parts.slice(1).join("/");
    try { id = decodeURIComponent(id); } catch (e) { /* shown as written */ }
    state.id = state.tab === "trace" ? id : "";
    const p = new URLSearchParams(query || "");
    state.window = p.get("window") || "P1D";
    state.from = p.get("from") || "";
    state.to = p.get("to") || "";
    state.scope = p.get("scope") || "";
    state.monitor = p.get("monitor") || "";
    state.metric = p.get("metric") || "";
    state.verdict = p.get("verdict") || "";
    state.offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
  }

  function go(changes) {
    Object.assign(state, changes);
    const p = new URLSearchParams();
    p.set("window", state.window);
    if (state.window === "custom") { p.set("from", state.from); p.set("to", state.to); }
    for (const k of ["scope", "monitor", "metric", "verdict"]) if (state[k]) p.set(k, state[k]);
    if (state.offset) p.set("offset", String(state.offset));
    const path = state.tab === "trace" ? `trace/${encodeURIComponent(state.id)}` : state.tab;
    const hash = `#/${path}?${p}`;
    if (location.hash === hash) render(); else location.hash = hash;
  }

  function windowParams() {
    if (state.window === "custom") {
      const utcTime = (v) => (v ? `${v.length === 16 ? `${v}:00` : v}Z` : "");
      return { from: utcTime(state.from), to: utcTime(state.to) };
    }
    return { window: state.window };
  }
  const step = () => STEPS[state.window] || null;
  const scopeModel = () => (state.scope.startsWith("model:") ? state.scope.slice(6) : null);

  class NeedsToken extends Error {}

  async function api(path, params = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
    const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
    const query = q.toString();
    const r = await fetch(`/api/v1/${path}${query ? `?${query}` : ""}`, { headers });
    if (r.status === 401) throw new NeedsToken();
    const body = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
    return body;
  }

  // ---- tabs --------------------------------------------------------------------------

  async function overview(view) {
    const p = { ...windowParams(), scope: state.scope };
    const [u, o, m] = await Promise.all([
      api("usage", { ...p, step: step() }), api("operations", p), api("monitors")]);
    // A monitor whose scheduler stopped is not healthy, whatever its last run said.
    const healthy = m.monitors.filter((x) => x.status === "ok" && x.scheduler !== "stopped").length;
    const counts = {};
    for (const x of m.monitors) counts[x.status] = (counts[x.status] || 0) + 1;
    const stopped = m.monitors.filter((x) => x.scheduler === "stopped").length;
    if (stopped) counts["with a stopped scheduler"] = stopped;
    const monitorText = m.monitors.length
      ? Object.entries(counts).map(([k, n]) => `${n} ${k.replace("_", " ")}`).join(", ")
      : "none";
    const t = u.totals;
    view.append(el("div", { class: "cards" },
      card("Requests", fmt(t.requests), "ov-requests", t.requests),
      card("Total tokens", fmt(t.total_tokens), "ov-total-tokens", t.total_tokens),
      card("Prompt tokens", fmt(t.prompt_tokens), "ov-prompt-tokens", t.prompt_tokens),
      card("Completion tokens", fmt(t.completion_tokens), "ov-completion-tokens", t.completion_tokens),
      card("Error rate", pct(o.totals.error_rate), "ov-error-rate", o.totals.error_rate),
      card("p95 latency", ms(o.totals.duration_ms.p95), "ov-p95-latency", o.totals.duration_ms.p95),
      card("Monitors", monitorText, "ov-monitors", healthy)));
    view.append(tokenBars(u));
  }

  function tokenBars(u) {
    const times = timeline(u);
    return panel("Tokens over time",
      bars("prompt and completion tokens per step", times, [
        { name: "prompt", color: COLORS.prompt, values: perStep(u, times, (x) => x.prompt_tokens) },
        { name: "completion", color: COLORS.completion, values: perStep(u, times, (x) => x.completion_tokens) },
      ]),
      legend([["prompt", "prompt"], ["completion", "completion"]]));
  }

  async function usage(view) {
    const p = { ...windowParams(), scope: state.scope };
    const [u, byModel] = await Promise.all([
      api("usage", { ...p, step: step() }), api("usage", { ...p, step: step(), group_by: "model" })]);
    const t = u.totals;
    view.append(el("div", { class: "cards" },
      card("Requests", fmt(t.requests), "us-requests", t.requests),
      card("Prompt tokens", fmt(t.prompt_tokens), "us-prompt-tokens", t.prompt_tokens),
      card("Completion tokens", fmt(t.completion_tokens), "us-completion-tokens", t.completion_tokens),
      card("Total tokens", fmt(t.total_tokens), "us-total-tokens", t.total_tokens),
      card("Cached prompt tokens", fmt(t.cached_tokens), "us-cached-tokens", t.cached_tokens),
      card("Reasoning tokens", fmt(t.reasoning_tokens), "us-reasoning-tokens", t.reasoning_tokens)));
    const times = timeline(u);
    view.append(el("div", { class: "grid2" },
      tokenBars(u),
      panel("Cached and reasoning tokens",
        bars("cached and reasoning tokens per step", times, [
          { name: "cached", color: COLORS.cached, values: perStep(u, times, (x) => x.cached_tokens) },
          { name: "reasoning", color: COLORS.reasoning, values: perStep(u, times, (x) => x.reasoning_tokens) },
        ]),
        legend([["cached", "cached"], ["reasoning", "reasoning"]]))));
    const num = [1, 2, 3, 4, 5, 6];
    view.append(panel("By model", table("usage-by-model",
      ["Model", "Requests", "Prompt", "Completion", "Total", "Cached", "Reasoning"],
      byModel.groups.map((g) => row([g.group ?? "(none)", fmt(g.totals.requests),
        fmt(g.totals.prompt_tokens), fmt(g.totals.completion_tokens), fmt(g.totals.total_tokens),
        fmt(g.totals.cached_tokens), fmt(g.totals.reasoning_tokens)], num, { "data-model": g.group ?? "" })),
      num)));
  }

  async function quality(view) {
    const [q, m] = await Promise.all([
      api("quality", { ...windowParams(), monitor: state.monitor }), api("monitors")]);
    const names = [...new Set([...m.monitors.map((x) => x.name), ...q.monitors.map((x) => x.monitor)])];
    if (names.length > 1) {
      view.append(el("div", { class: "filters" }, el("label", {}, "Monitor ",
        el("select", { id: "monitor", onchange: (e) => go({ monitor: e.target.value, offset: 0 }) },
          el("option", { value: "" }, "All monitors"),
          names.map((n) => el("option", { value: n, selected: n === state.monitor }, n))))));
    }
    if (!q.monitors.length) {
      view.append(panel(null, el("p", { class: "muted", id: "no-runs" },
        "No monitor finished a run in this window. Monitors run on their schedule (see Monitors).")));
    }
    const from = Date.parse(q.from);
    const to = Date.parse(q.to);
    for (const mon of q.monitors) {
      view.append(el("h2", {}, `Monitor ${mon.monitor}`));
      view.append(el("div", { class: "cards" },
        card("Runs", fmt(mon.runs), `q-${mon.monitor}-runs`, mon.runs),
        card("Breached runs", fmt(mon.breached_runs), `q-${mon.monitor}-breached`, mon.breached_runs),
        card("Failed runs", fmt(mon.failed_runs), `q-${mon.monitor}-failed`, mon.failed_runs)));
      for (const met of mon.metrics) view.append(metricPanel(mon.monitor, met, from, to));
      if (mon.failures.length) {
        view.append(panel("Failed runs", table(null, ["Finished", "Run", "Error"],
          mon.failures.map((f) => row([utc(f.time), f.run_id, f.error])))));
      }
    }
    view.append(await recordsPanel(q));
  }

  function metricPanel(monitor, met, from, to) {
    const last = met.points[met.points.length - 1];
    const id = (k) => `q-${monitor}-${met.metric}-${k}`;
    const hist = [1, 2, 3, 4, 5].map((s) => met.histogram[String(s)] || 0);
    const hMax = niceMax(Math.max(0, ...hist), true);
    const hs = frame(`${met.metric} score histogram`, hMax, fmt,
      hist.map((_, i) => [L + (i + 0.5) * ((W - L - R) / 5), `score ${i + 1}`]));
    hist.forEach((n, i) => {
      const bw = (W - L - R) / 5;
      const h = (n / hMax) * (H - T - B);
      const bad = last && i + 1 < last.acceptable_score;
      hs.append(svg("rect", { x: L + i * bw + bw * 0.15, y: H - B - h, width: bw * 0.7, height: h,
        fill: bad ? COLORS.bad : COLORS.ok }, svg("title", {}, `score ${i + 1}: ${n}`)));
    });
    return panel(`${met.metric}`,
      el("div", { class: "cards" },
        card("Average score (last run)", dec(last?.average_score), id("average"), last?.average_score),
        card("Pass rate (last run)", pct(last?.pass_rate), id("pass-rate"), last?.pass_rate),
        card("Thresholds", last ? `≥ ${last.acceptable_score} passes; rate ≥ ${last.pass_rate_threshold}, average ≥ ${last.average_threshold}` : "–", id("thresholds")),
        card("Violations", fmt(met.violations), id("violations"), met.violations),
        card("Violation rate", `${pct(met.violation_rate)} (${met.breached_runs} of ${met.runs} runs)`, id("violation-rate"), met.violation_rate)),
      el("div", { class: "grid2" },
        el("div", {},
          el("h3", {}, "Average score per run"),
          lines(`${met.metric} average score per run`, from, to,
            [{ name: "average", color: COLORS.prompt, points: met.points.map((p) => [Date.parse(p.time), p.average_score]) }],
            { yMax: 5, rules: last ? [{ name: "average threshold", value: last.average_threshold, color: COLORS.bad }] : [] }),
          legend([["average score", "prompt"], ["threshold", "bad"]])),
        el("div", {},
          el("h3", {}, "Violations per run"),
          lines(`${met.metric} violations per run`, from, to,
            [{ name: "violations", color: COLORS.bad, points: met.points.map((p) => [Date.parse(p.time), p.violations]) }],
            { yFmt: fmt })),
        el("div", {}, el("h3", {}, "Scores given"), hs)));
  }

  async function recordsPanel(q) {
    const metrics = [...new Set(q.monitors.flatMap((m) => m.metrics.map((x) => x.metric)))];
    const page = await api("records", {
      ...windowParams(), model: scopeModel(), metric: state.metric,
      verdict: state.metric ? state.verdict : "", limit: PAGE, offset: state.offset,
    });
    const filters = el("div", { class: "filters" },
      el("label", {}, "Metric ", el("select", { id: "records-metric", onchange: (e) => go({ metric: e.target.value, offset: 0 }) },
        el("option", { value: "" }, "Any"),
        metrics.map((n) => el("option", { value: n, selected: n === state.metric }, n)))),
      el("label", {}, "Verdict ", el("select", { id: "records-verdict", disabled: !state.metric, onchange: (e) => go({ verdict: e.target.value, offset: 0 }) },
        el("option", { value: "" }, "Any"),
        el("option", { value: "pass", selected: state.verdict === "pass" }, "pass"),
        el("option", { value: "fail", selected: state.verdict === "fail" }, "fail"))));
    const rows = page.records.map(({ record, scores }) => row([
      record.time ? utc(record.time) : "–", record.model ?? "–", record.route ?? "–",
      el("div", { class: "text" }, typeof record.question === "string" ? record.question : ""),
      scores.length ? scores.map((s) => el("div", { class: s.score !== null && failed(s, q) ? "fail" : null },
        `${s.metric}: ${s.score ?? s.status}`)) : el("span", { class: "muted" }, "not scored"),
      record.status ?? "–",
    ], [5], { class: "link", "data-id": record.id, tabindex: 0,
      onclick: () => go({ tab: "trace", id: record.id }),
      onkeydown: (e) => { if (e.key === "Enter") go({ tab: "trace", id: record.id }); } }));
    const last = Math.min(page.offset + page.records.length, page.total);
    return panel("Sampled requests", filters,
      table("records", ["Time", "Model", "Route", "Question", "Scores", "Status"], rows, [5]),
      el("div", { class: "pager" },
        el("button", { type: "button", id: "records-prev", disabled: page.offset === 0,
          onclick: () => go({ offset: Math.max(0, page.offset - PAGE) }) }, "Previous"),
        el("span", { id: "records-count" }, page.total ? `${page.offset + 1}–${last} of ${page.total}` : "no sampled requests"),
        el("button", { type: "button", id: "records-next", disabled: last >= page.total,
          onclick: () => go({ offset: page.offset + PAGE }) }, "Next")));
  }

  /// Whether a score is under its monitor's acceptable score (the last run's, as shown).
  function failed(score, q) {
    const met = q.monitors.find((m) => m.monitor === score.monitor)?.metrics.find((x) => x.metric === score.metric);
    const p = met?.points.find((x) => x.run_id === score.run_id) ?? met?.points[met.points.length - 1];
    return p ? score.score < p.acceptable_score : false;
  }

  async function trace(view) {
    const { record, scores } = await api(`records/${encodeURIComponent(state.id)}`);
    const u = record.usage || {};
    const facts = [
      ["Id", record.id], ["Time", record.time ? utc(record.time) : "–"], ["Model", record.model ?? "–"],
      ["Operation", record.operation ?? "–"], ["Route", record.route ?? "–"], ["Status", record.status ?? "none (reset)"],
      ["Latency", record.duration_ms !== undefined ? ms(record.duration_ms) : "–"],
      ["Time to first token", record.ttft_ms !== undefined ? ms(record.ttft_ms) : "–"],
      ["Prompt tokens", fmt(u.prompt)], ["Completion tokens", fmt(u.completion)], ["Total tokens", fmt(u.total)],
      ["Usage source", u.source ?? "–"],
      ...Object.entries(record.dimensions || {}).map(([k, v]) => [`Dimension ${k}`, v]),
    ];
    if (record.truncated) facts.push(["Truncated", "text was cut to fit max_record_bytes"]);
    view.append(el("h2", {}, "Request ", el("code", { id: "trace-id" }, record.id)));
    view.append(panel("Request", el("table", { id: "trace-facts" }, el("tbody", {},
      facts.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", { "data-fact": k }, v)))))));
    const texts = Object.entries(record).filter(([k, v]) => k && !RECORD_FIELDS.has(k) && typeof v === "string");
    const order = ["question", "answer", "context"];
    texts.sort((a, b) => (order.indexOf(a[0]) + 1 || 9) - (order.indexOf(b[0]) + 1 || 9));
    for (const [k, v] of texts) view.append(panel(k[0].toUpperCase() + k.slice(1), el("pre", { id: `trace-${k}` }, v)));
    view.append(panel("Scores", scores.length
      ? table("trace-scores", ["Monitor", "Metric", "Status", "Score", "Reason", "Judge model", "Prompt version", "Run"],
        scores.map((s) => row([s.monitor, s.metric, s.status, s.score ?? "–", s.reason, s.judge_model, s.prompt_version, s.run_id], [3, 7])), [3, 7])
      : el("p", { class: "muted" }, "No monitor has scored this request.")));
  }

  async function operations(view) {
    const p = { ...windowParams(), scope: state.scope, step: step() };
    const o = await api("operations", p);
    const t = o.totals;
    const failedTotal = Object.values(t.errors).reduce((a, b) => a + b, 0);
    view.append(el("div", { class: "cards" },
      card("Requests", fmt(t.requests), "op-requests", t.requests),
      card("Failed requests", fmt(failedTotal), "op-errors", failedTotal),
      card("Error rate", pct(t.error_rate), "op-error-rate", t.error_rate),
      card("Latency p50", ms(t.duration_ms.p50), "op-latency-p50", t.duration_ms.p50),
      card("Latency p95", ms(t.duration_ms.p95), "op-latency-p95", t.duration_ms.p95),
      card("Latency p99", ms(t.duration_ms.p99), "op-latency-p99", t.duration_ms.p99),
      card("TTFT p50", ms(t.ttft_ms.p50), "op-ttft-p50", t.ttft_ms.p50),
      card("TTFT p95", ms(t.ttft_ms.p95), "op-ttft-p95", t.ttft_ms.p95),
      card("TTFT p99", ms(t.ttft_ms.p99), "op-ttft-p99", t.ttft_ms.p99)));
    const times = timeline(o);
    const errs = perStep(o, times, (x) => Object.values(x.errors).reduce((a, b) => a + b, 0));
    const reqs = perStep(o, times, (x) => x.requests);
    // Latency per step: the groups' points, one group without group_by.
    const points = (o.groups[0]?.points || []);
    const lat = (k) => points.map((x) => [Date.parse(x.time), x.duration_ms[k]]);
    view.append(el("div", { class: "grid2" },
      panel("Requests per step",
        bars("requests per step", times, [
          { name: "succeeded", color: COLORS.ok, values: reqs.map((r, i) => r - errs[i]) },
          { name: "failed", color: COLORS.bad, values: errs },
        ]),
        legend([["succeeded", "completion"], ["failed", "bad"]])),
      panel("Latency per step",
        lines("latency percentiles per step", Date.parse(o.from), Date.parse(o.to), [
          { name: "p50", color: COLORS.completion, points: lat("p50") },
          { name: "p95", color: COLORS.prompt, points: lat("p95") },
          { name: "p99", color: COLORS.bad, points: lat("p99") },
        ], { yFmt: (v) => `${Math.round(v)} ms` }),
        legend([["p50", "completion"], ["p95", "prompt"], ["p99", "bad"]]))));
    view.append(panel("Errors by type", table("errors-by-type", ["Type", "Requests", "Share of requests"],
      Object.entries(t.errors).map(([k, n]) => row([k, fmt(n), t.requests ? pct(n / t.requests) : "–"], [1, 2], { "data-type": k })), [1, 2])));
  }

  async function monitors(view) {
    const m = await api("monitors");
    if (!m.monitors.length) {
      view.append(panel(null, el("p", { class: "muted" },
        "This collector runs no monitors. Start it with --monitor FILE (see the README's quality section).")));
      return;
    }
    const firing = m.monitors.flatMap((x) => x.alerts_firing.map((a) => ({ monitor: x.name, ...a })));
    view.append(panel("Monitors", table("monitors", ["Monitor", "Status", "Metrics", "Window", "Schedule (UTC)", "Last run", "Next run"],
      m.monitors.map((x) => row([x.name, el("span", { class: `status-${x.status}` }, x.status.replace("_", " ")),
        x.metrics.join(", "), x.window, x.schedule ?? "on demand",
        x.last_run ? `${utc(x.last_run.time)}${x.last_run.error ? ` — ${x.last_run.error}` : ""}` : "never",
        x.scheduler === "stopped"
          ? el("span", { class: "fail" }, `scheduler stopped: ${x.scheduler_error}`)
          : x.next_run ? utc(x.next_run) : "–"], [], { "data-monitor": x.name })))));
    view.append(panel("Alerts firing", firing.length
      ? table("alerts-firing", ["Monitor", "Alert", "Metric", "Since", "Why"],
        firing.map((a) => row([a.monitor, a.alertname, a.metric ?? "–", utc(a.since), a.summary])))
      : el("p", { class: "muted" }, "No alert is firing.")));
  }

  // ---- controls and rendering --------------------------------------------------------

  async function refreshScopes() {
    const sel = $("scope");
    let models = [];
    try {
      const u = await api("usage", { ...windowParams(), step: step(), group_by: "model" });
      models = u.groups.map((g) => g.group).filter((g) => g !== null);
    } catch (e) { /* the view shows the error */ }
    const current = state.scope;
    sel.replaceChildren(el("option", { value: "" }, "All models"),
      ...models.map((name) => el("option", { value: `model:${name}` }, name)));
    if (current && !models.includes(current.slice(6))) {
      sel.append(el("option", { value: current }, current.replace(/^model:/, "")));
    }
    sel.value = current;
  }

  function syncControls() {
    $("window").value = state.window;
    $("custom").hidden = state.window !== "custom";
    $("from").value = state.from;
    $("to").value = state.to;
    for (const a of document.querySelectorAll("#tabs a")) {
      a.classList.toggle("active", a.dataset.tab === state.tab);
      const p = new URLSearchParams({ window: state.window });
      if (state.window === "custom") { p.set("from", state.from); p.set("to", state.to); }
      if (state.scope) p.set("scope", state.scope);
      a.href = `#/${a.dataset.tab}?${p}`;
    }
  }

  let generation = 0;
  async function render() {
    readHash();
    syncControls();
    const mine = ++generation;
    const view = el("main", {
      id: "view", "aria-live": "polite", "data-tab": state.tab, "data-loading": "true", "data-generation": mine,
    });
    $("view").replaceWith(view);
    $("error").hidden = true;
    $("login").hidden = true;
    const draw = { overview, usage, quality, operations, monitors, trace }[state.tab];
    try {
      await Promise.all([draw(view), refreshScopes()]);
    } catch (e) {
      if (mine !== generation) return;
      if (e instanceof NeedsToken) {
        $("login").hidden = false;
        $("token").focus();
      } else {
        $("error").textContent = e.message;
        $("error").hidden = false;
      }
    }
    if (mine === generation) {
      // When the view was done, in ms since the page began loading (the benchmark reads it).
      view.setAttribute("data-drawn-ms", performance.now().toFixed(1));
      view.setAttribute("data-loading", "false");
    }
  }

  function start() {
    $("window").addEventListener("change", (e) => {
      const w = e.target.value;
      if (w === "custom") {
        const now = new Date();
        const iso = (d) => d.toISOString().slice(0, 16);
        go({ window: w, from: state.from || iso(new Date(now - 86_400_000)), to: state.to || iso(now), offset: 0 });
      } else go({ window: w, offset: 0 });
    });
    $("controls").addEventListener("submit", (e) => {
      e.preventDefault();
      go({ window: "custom", from: $("from").value, to: $("to").value, offset: 0 });
    });
    $("scope").addEventListener("change", (e) => go({ scope: e.target.value, offset: 0 }));
    $("login").addEventListener("submit", (e) => {
      e.preventDefault();
      state.token = $("token").value.trim();
      sessionStorage.setItem("tokenmeter.token", state.token);
      render();
    });
    window.addEventListener("hashchange", render);
    render();
  }

  start();
})();
