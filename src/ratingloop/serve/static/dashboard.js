// The admin dashboard: fetches v1/dashboard and shows its plots (inline SVG) and small tables.
// The admin key is asked for only when the server wants one (a server without a key on this machine lets
// every caller in) and is kept in sessionStorage: this tab only, gone when it closes.
"use strict";

const KEY = "ratingloop-admin-key";
const MAX_ROWS = 500; // rows of a long table shown; the JSON has them all

const $ = (id) => document.getElementById(id);

function setStatus(text) {
  $("status").textContent = text;
}

async function load(problem = "") {
  const key = sessionStorage.getItem(KEY);
  setStatus("loading…");
  let response;
  try {
    response = await fetch("v1/dashboard", { headers: key ? { Authorization: `Bearer ${key}` } : {}, cache: "no-store" });
  } catch (e) {
    setStatus(`the server cannot be reached (${e.message})`);
    return;
  }
  if (response.status === 401 || response.status === 403) {
    if (key) {
      // a refused key is dropped; the server may need none (no admin key, on this machine): try without
      sessionStorage.removeItem(KEY);
      load(await errorText(response));
      return;
    }
    askForKey(problem);
    return;
  }
  if (!response.ok) {
    setStatus(`the server answered ${response.status}: ${await errorText(response)}`);
    return;
  }
  render(await response.json());
  $("forget").hidden = !key;
  setStatus(`as of ${new Date().toLocaleTimeString()}`);
}

async function errorText(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return response.statusText;
  }
}

function askForKey(problem) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = problem;
  setStatus("");
  $("key").focus();
}

// --- building blocks -------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function plot(svg, caption) {
  const figure = el("figure", { class: "plot" });
  figure.innerHTML = svg; // rendered by matplotlib on the server, which escapes every label
  if (caption) figure.append(el("figcaption", {}, caption));
  return figure;
}

function table(columns, rows, rowClass = () => "") {
  const head = el("tr", {}, ...columns.map(([title]) => el("th", {}, title)));
  const body = rows.slice(0, MAX_ROWS).map((row) => {
    const tr = el("tr", { class: rowClass(row) });
    for (const [, cell, numeric] of columns) tr.append(el("td", numeric ? { class: "num" } : {}, cell(row)));
    return tr;
  });
  const out = el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
  if (rows.length > MAX_ROWS) return el("div", {}, out, el("p", { class: "note" }, `${rows.length - MAX_ROWS} more rows in v1/dashboard`));
  return out;
}

function details(summary, ...children) {
  return el("details", {}, el("summary", {}, summary), ...children);
}

const num = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);

function fill(id, section, build) {
  const body = document.querySelector(`#${id} .body`);
  body.replaceChildren(...(section.note ? [el("p", { class: "note" }, section.note)] : build(section)));
}

// --- the sections ----------------------------------------------------------------------------------------

function ratings(s) {
  const cells = [...s.all].reverse();
  const captions = {
    all: `Every version's mean rating and its count per ${s.unit}.`,
    kind: "By kind (comments: their sentiment; implicit signals: their fixed weak rewards).",
    aspect: "By aspect.",
  };
  return [
    ...Object.entries(captions).filter(([name]) => s.plots[name]).map(([name, caption]) => plot(s.plots[name], caption)),
    details(`the numbers per version and ${s.unit}`, table([
      [s.unit, (c) => c.bucket], ["version", (c) => c.version], ["ratings", (c) => String(c.n), true],
      ["mean", (c) => num(c.mean), true],
    ], cells)),
  ];
}

function values(s) {
  const shown = (h) => h.counts.map(([v, n]) => `${v}: ${n}`).join(", ") || "–";
  return [
    ...(s.plot ? [plot(s.plot)] : []),
    table([["kind", (h) => h.kind], ["ratings", (h) => String(h.n), true], ["values", shown]], s.kinds),
  ];
}

function raters(s) {
  const columns = [
    ["rater", (r) => r.rater_id], ["ratings", (r) => String(r.n), true], ["bias", (r) => num(r.bias), true],
    ["scale", (r) => num(r.scale), true], ["reliability", (r) => num(r.reliability), true],
  ];
  const flagged = s.flagged.length
    ? table([...columns, ["why", (r) => r.reasons.join("; ")]], s.flagged, () => "flagged")
    : el("p", { class: "note" }, "no rater is flagged");
  return [
    el("p", {}, `signals run ${s.run_id} of ${s.created_at.slice(0, 19).replace("T", " ")} UTC, ` +
                `${s.n_ratings} ratings, ${s.raters.length} raters.`),
    plot(s.plot, "Reliability against ratings given; flagged raters as red crosses."),
    el("h3", {}, `Flagged raters (${s.flagged.length})`),
    flagged,
    details("every rater", table(columns, s.raters, (r) => (r.flagged ? "flagged" : ""))),
  ];
}

function versions(s) {
  const ci = (v) => (v.win_rate === null ? "–" : `${num(v.win_rate)} [${num(v.ci_low)}, ${num(v.ci_high)}]`);
  return [
    plot(s.plot),
    table([
      ["version", (v) => v.id], ["status", (v) => v.status], ["method", (v) => v.method || "–"],
      ["serves", (v) => pct(s.serving[v.id] || 0), true], ["verdict", (v) => v.verdict || "–"],
      ["win rate [CI]", ci], ["created", (v) => v.created_at.slice(0, 16).replace("T", " ")],
    ], s.rows),
  ];
}

function render(data) {
  $("login").hidden = true;
  $("main").hidden = false;
  fill("ratings", data.ratings, ratings);
  fill("values", data.values, values);
  fill("raters", data.raters, raters);
  fill("versions", data.versions, versions);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  load();
});
$("refresh").addEventListener("click", () => load());
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  askForKey("");
});
load();
