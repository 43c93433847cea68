// The MegaContext web explorer: plain JavaScript over the service's /v1/trees/{tree}/explorer
// API. Every piece of user text is put in the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 100;

const state = {
  key: null,
  tree: null,
  K: 32,
  top: 0,
  tokens: 0,
  path: [], // the drilled-into nodes, top level first
  listed: { level: -1, first: 0, total: 0 }, // what the node list shows
  span: null, // the span shown in detail
  trace: null, // {name, steps}
  step: 0,
  playing: null,
  sourcesShown: 0,
};

// -- the API --------------------------------------------------------------------------------

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = body.error || {};
    if (response.status === 401) forgetKey();
    throw new ApiError(error.message || `the service answered ${response.status}`);
  }
  return body;
}

const treeApi = (rest, params = {}) => {
  const query = new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== undefined && v !== null),
  ).toString();
  const base = `/v1/trees/${encodeURIComponent(state.tree)}/explorer/${rest}`;
  return query ? `${base}?${query}` : base;
};

function show(message, isError = true) {
  const box = $("message");
  box.textContent = message;
  box.className = isError ? "error" : "info";
  box.hidden = false;
  clearTimeout(show.timer);
  show.timer = setTimeout(() => (box.hidden = true), isError ? 10000 : 3000);
}

async function guarded(work) {
  try {
    return await work();
  } catch (error) {
    show(error instanceof ApiError ? error.message : `the explorer failed: ${error}`);
    return undefined;
  }
}

// -- small DOM helpers ----------------------------------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function link(text, onClick, className) {
  const a = el("a", text, className);
  a.href = "#";
  a.addEventListener("click", (event) => {
    event.preventDefault();
    guarded(onClick);
  });
  return a;
}

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [name, value] of pairs) {
    dl.append(el("dt", name), el("dd", value === null || value === undefined ? "—" : String(value)));
  }
}

const levelName = (level) => (level === 0 ? "raw" : `LOD${level}`);
const nodeLabel = (n) => `${levelName(n.level)} #${n.index} · tokens ${n.start}–${n.stop}`;
const oneLine = (text) => text.replace(/\s+/g, " ").trim();

// -- the URL fragment: tree, node, trace, step (and the key once, then forgotten) ----------

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("key")) {
    sessionStorage.setItem("megacontext-key", params.get("key"));
    params.delete("key"); // out of the address bar and the history
    history.replaceState(null, "", `${location.pathname}#${params}`);
  }
  return params;
}

function writeHash() {
  const params = new URLSearchParams();
  if (state.tree) params.set("tree", state.tree);
  if (state.span) params.set("node", `${state.span.level}.${state.span.index}`);
  if (state.trace) {
    params.set("trace", state.trace.name);
    params.set("step", String(state.step));
  }
  history.replaceState(null, "", `${location.pathname}#${params}`);
}

function forgetKey() {
  sessionStorage.removeItem("megacontext-key");
  state.key = null;
  $("explorer").hidden = true;
  $("key-form").hidden = false;
}

// -- the tree: overview and sources ---------------------------------------------------------

async function openTree(name, params) {
  state.tree = name;
  state.path = [];
  state.span = null;
  state.trace = null;
  const view = await api(treeApi("overview"));
  state.K = view.K;
  state.top = view.top_level;
  state.tokens = view.tokens;
  summarize(view);
  const rows = view.levels.map((lv) => {
    const tr = el("tr");
    tr.append(el("td", levelName(lv.level)), el("td", lv.nodes.toLocaleString()),
      el("td", lv.span_tokens.toLocaleString()));
    return tr;
  });
  document.querySelector("#levels tbody").replaceChildren(...rows);
  $("sources").replaceChildren();
  state.sourcesShown = 0;
  addSources(view.sources);
  await listTop(0);
  $("span").hidden = true;
  $("span-empty").hidden = false;
  await loadTraces(params);
  const node = params && params.get("node");
  if (node) {
    const [level, index] = node.split(".").map(Number);
    await openNode(level, index);
  }
  writeHash();
}

function summarize(view) {
  $("tree-summary").textContent =
    `${view.tokens.toLocaleString()} tokens · ${view.levels.length} levels · base ${view.base}` +
    ` · ${view.annotations} annotations`;
}

function addSources(page) {
  $("sources-count").textContent = `(${page.total})`;
  const strip = $("source-strip");
  if (page.offset === 0) strip.replaceChildren();
  for (const source of page.items) {
    const item = el("li");
    item.append(link(source.source, () => reveal(source.start)),
      el("span", ` tokens ${source.start}–${source.stop} · ${source.ingested_at || ""}`, "muted"));
    $("sources").append(item);
    const band = el("span", null, `band b${(page.offset + strip.children.length) % 6}`);
    band.style.flexGrow = String(Math.max(1, source.stop - source.start));
    band.title = `${source.source}: tokens ${source.start}–${source.stop}`;
    band.addEventListener("click", () => guarded(() => reveal(source.start)));
    strip.append(band);
  }
  state.sourcesShown = page.offset + page.items.length;
  $("sources-more").hidden = state.sourcesShown >= page.total;
}

// -- drill-down -----------------------------------------------------------------------------

async function listTop(first) {
  if (state.top === 0) {
    return listPage(await api(treeApi("nodes", { level: 0, first, limit: PAGE })));
  }
  return listPage(await api(treeApi("nodes", { level: state.top, first, limit: PAGE })));
}

function listPage(page, append = false) {
  const list = $("nodes");
  if (!append) list.replaceChildren();
  state.listed = { level: page.level, first: page.first, total: page.total };
  for (const node of page.items) {
    const item = el("li", null, `node lvl${Math.min(node.level, 4)}`);
    item.dataset.level = node.level;
    item.dataset.index = node.index;
    const title = link(nodeLabel(node), () => openNode(node.level, node.index));
    title.className = "node-link";
    item.append(title, el("span", ` ${oneLine(node.preview)}`, "preview"));
    if (node.norm !== undefined) item.append(el("span", ` ‖g‖ ${node.norm}`, "muted"));
    list.append(item);
  }
  const shown = page.first + page.items.length;
  const more = $("nodes-more");
  more.hidden = state.path.length > 0 || shown >= page.total;
  more.onclick = () =>
    guarded(async () => {
      const next = await api(treeApi("nodes", { level: page.level, first: shown, limit: PAGE }));
      listPage(next, true);
    });
  drawBreadcrumbs();
}

function drawBreadcrumbs() {
  const crumbs = [link("top", () => goUp(0))];
  state.path.forEach((node, i) => {
    crumbs.push(el("span", " › "), link(nodeLabel(node), () => goUp(i + 1)));
  });
  $("breadcrumbs").replaceChildren(...crumbs);
}

async function goUp(depth) {
  state.path = state.path.slice(0, depth);
  if (depth === 0) return listTop(0);
  const node = state.path[depth - 1];
  listPage(await api(treeApi("children", { level: node.level, index: node.index })));
}

// Open node (level, index): drill into it (a gist lists its children, a token its block's
// tokens) and show it in detail. The path above it is asked of the tree, so any entry point (a
// search hit, a citation, a timeline cell, a reload) ends in the same place as clicking down.
async function openNode(level, index) {
  const span = await api(treeApi("span", { level, index }));
  if (level === 0 && isChildOfPath(span)) return showSpan(span); // a token of the listed block
  const above = await api(treeApi("path", { token: span.start }));
  state.path = above.filter((n) => n.level > level);
  if (level >= 1) {
    state.path.push(span);
    listPage(await api(treeApi("children", { level, index })));
  } else if (state.path.length) {
    const parent = state.path[state.path.length - 1];
    listPage(await api(treeApi("children", { level: parent.level, index: parent.index })));
  } else {
    listPage(await api(treeApi("nodes", { level: 0, first: span.start, limit: PAGE })));
  }
  showSpan(span);
}

function isChildOfPath(span) {
  const parent = state.path[state.path.length - 1];
  return parent && parent.level === span.level + 1 && span.start >= parent.start &&
    span.stop <= parent.stop;
}

// Open the deepest node holding token position `token` (its LOD1 block, or the raw token in the
// tail that no block covers yet).
async function reveal(token) {
  const above = await api(treeApi("path", { token }));
  if (!above.length) return openNode(0, token);
  const block = above[above.length - 1];
  return openNode(block.level, block.index);
}

// -- span detail ----------------------------------------------------------------------------

function showSpan(span) {
  state.span = span;
  $("span-empty").hidden = true;
  $("span").hidden = false;
  Object.assign($("span").dataset,
    { level: span.level, index: span.index, start: span.start, stop: span.stop });
  facts($("span-facts"), [
    ["level", levelName(span.level)],
    ["node", `#${span.index}`],
    ["tokens", `${span.start}–${span.stop} (${span.stop - span.start})`],
    ["gist norm", span.norm],
  ]);
  $("span-text").textContent = span.text;
  $("span-truncated").hidden = !span.text_truncated;
  $("span-sources").replaceChildren(
    ...span.provenance.map((p) => {
      const lines = p.lines ? ` lines ${p.lines[0]}–${p.lines[1]}` : "";
      return el("li", `${p.source}${lines} (tokens ${p.start}–${p.stop})`);
    }),
  );
  if (!span.provenance.length) $("span-sources").append(el("li", "no recorded source", "muted"));
  drawAnnotations(span.annotations);
  resetAnnotationForm();
  drawEvidence();
  markTimeline();
  document.querySelectorAll("#nodes li").forEach((li) => {
    li.classList.toggle("selected",
      Number(li.dataset.level) === span.level && Number(li.dataset.index) === span.index);
  });
  writeHash();
}

function drawEvidence() {
  const span = state.span;
  if (!span) return;
  const step = state.trace && state.trace.total ? shownStep() : null;
  if (!step || !step.layout) {
    facts($("span-evidence"), [["step", "no trace step shown"]]);
    return;
  }
  const at = entryPosition(step.layout, span.level, span.index);
  if (at < 0) {
    facts($("span-evidence"), [
      ["step", step.step],
      ["in context", "no: another level covers it at this step"],
    ]);
    return;
  }
  const value = (list) => (list ? list[at] : null);
  facts($("span-evidence"), [
    ["step", step.step],
    ["in context", `entry ${at}`],
    ["LensNet score", value(step.scores)],
    ["lexical", value(step.lexical)],
    ["key·query", value(step.key_sim)],
  ]);
}

// The entry position of node (level, index) in runs [[level, first, count], ...], or -1.
function entryPosition(runs, level, index) {
  let position = 0;
  for (const [runLevel, first, count] of runs) {
    if (runLevel === level && index >= first && index < first + count) {
      return position + index - first;
    }
    position += count;
  }
  return -1;
}

// -- annotations ----------------------------------------------------------------------------

function drawAnnotations(list) {
  const items = list.map((a) => {
    const item = el("li", null, "annotation");
    item.dataset.id = a.id;
    item.append(el("span", a.note, "note"));
    if (a.tags.length) item.append(el("span", ` [${a.tags.join(", ")}]`, "tags"));
    item.append(
      el("span", ` · ${levelName(a.level)} ${a.start}–${a.stop} · v${a.version} by ` +
        `${a.updated_by} ${a.updated_at}`, "muted"),
      " ",
      link("edit", async () => editAnnotation(a), "edit"),
      " ",
      link("delete", async () => deleteAnnotation(a), "delete"),
      " ",
      link("history", async () => showHistory(a, item), "history"),
    );
    return item;
  });
  $("annotations").replaceChildren(...items);
  if (!items.length) $("annotations").append(el("li", "none yet", "muted"));
}

function resetAnnotationForm() {
  $("annotation-id").value = "";
  $("annotation-version").value = "";
  $("annotation-note").value = "";
  $("annotation-tags").value = "";
  $("annotation-save").textContent = "Add note";
  $("annotation-cancel").hidden = true;
}

function editAnnotation(a) {
  $("annotation-id").value = a.id;
  $("annotation-version").value = a.version;
  $("annotation-note").value = a.note;
  $("annotation-tags").value = a.tags.join(", ");
  $("annotation-save").textContent = "Save note";
  $("annotation-cancel").hidden = false;
  $("annotation-note").focus();
}

async function saveAnnotation() {
  const span = state.span;
  const note = $("annotation-note").value.trim();
  const tags = $("annotation-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
  if (!note) throw new ApiError("the note is empty: write something to keep");
  const id = $("annotation-id").value;
  if (id) {
    await api(treeApi(`annotations/${id}`),
      { method: "PATCH", body: { version: Number($("annotation-version").value), note, tags } });
  } else {
    await api(treeApi("annotations"), {
      method: "POST",
      body: { level: span.level, start: span.start, stop: span.stop, note, tags },
    });
  }
  await refreshSpan();
  show(id ? "note saved" : "note added", false);
}

async function deleteAnnotation(a) {
  await api(treeApi(`annotations/${a.id}`, { version: a.version }), { method: "DELETE" });
  await refreshSpan();
  show("note deleted", false);
}

async function showHistory(a, item) {
  const changes = await api(treeApi(`annotations/${a.id}/history`));
  const list = el("ol", null, "history-list");
  for (const c of changes) {
    list.append(el("li", `${c.action} v${c.version} by ${c.actor} at ${c.at}: ${c.note ?? ""}`));
  }
  item.querySelector(".history-list")?.remove();
  item.append(list);
}

// After a change of notes: the span shown and the tree's count of notes.
async function refreshSpan() {
  showSpan(await api(treeApi("span", { level: state.span.level, index: state.span.index })));
  summarize(await api(treeApi("overview")));
}

// -- search and answers ---------------------------------------------------------------------

async function search(query) {
  const found = await api(treeApi("search", { q: query }));
  const items = found.items.map((hit) => {
    const item = el("li");
    item.append(link(`block #${hit.index} (tokens ${hit.start}–${hit.stop})`,
      () => openNode(1, hit.index)), el("span", ` ${oneLine(hit.preview)}…`, "preview"));
    return item;
  });
  $("search-results").replaceChildren(...items);
  if (!items.length) $("search-results").append(el("li", "no block holds these words", "muted"));
}

async function ask(question) {
  $("answer-text").textContent = "thinking…";
  $("answer").hidden = false;
  $("citations").replaceChildren();
  const answer = await api(`/v1/trees/${encodeURIComponent(state.tree)}/ask`, {
    method: "POST",
    body: { question },
  });
  $("answer-text").textContent = answer.answer || "(an empty answer)";
  const items = answer.citations.map((c) => {
    const item = el("li", null, "citation");
    item.dataset.start = c.tokens[0];
    item.dataset.stop = c.tokens[1];
    item.append(link(c.label, () => reveal(c.tokens[0])),
      el("span", ` score ${c.score.toFixed(3)} · “${oneLine(c.text).slice(0, 80)}”`, "muted"));
    return item;
  });
  $("citations").replaceChildren(...items);
  if (!items.length) $("citations").append(el("li", "the answer cites nothing", "muted"));
}

// -- focus playback -------------------------------------------------------------------------

async function loadTraces(params) {
  const listed = await api(`/v1/trees/${encodeURIComponent(state.tree)}/traces`);
  const select = $("trace-select");
  select.replaceChildren(...listed.traces.map((t) => {
    const option = el("option", `${t.name} (${t.steps} steps)`);
    option.value = t.name;
    return option;
  }));
  const wanted = params && params.get("trace");
  const name = listed.traces.some((t) => t.name === wanted)
    ? wanted
    : listed.traces.length ? listed.traces[listed.traces.length - 1].name : null;
  if (!name) {
    state.trace = null;
    $("timeline").replaceChildren();
    return;
  }
  select.value = name;
  await openTrace(name, params ? Number(params.get("step") || 0) : 0);
}

async function openTrace(name, step = 0) {
  state.trace = { name, total: 0, first: 0, steps: [] };
  await loadSteps(step);
  $("step-slider").max = String(Math.max(0, state.trace.total - 1));
  await goToStep(Math.min(step, state.trace.total - 1));
}

// Traces are read a page of steps at a time: a long session's holds thousands.
async function loadSteps(step) {
  const first = Math.max(0, Math.floor(step / PAGE) * PAGE);
  const page = await api(treeApi(`traces/${encodeURIComponent(state.trace.name)}`,
    { first, limit: PAGE }));
  Object.assign(state.trace, { total: page.total, first: page.first, steps: page.steps });
}

// The step shown (its index in the whole trace).
const shownStep = () => state.trace.steps[state.step - state.trace.first];

async function goToStep(step) {
  if (!state.trace || !state.trace.total) return;
  step = Math.max(0, Math.min(step, state.trace.total - 1));
  const { first, steps } = state.trace;
  if (step < first || step >= first + steps.length) await loadSteps(step);
  state.step = step;
  $("step-slider").value = String(state.step);
  drawTimeline();
  drawEvidence();
  writeHash();
}

function drawTimeline() {
  const step = shownStep();
  const after = $("show-after").checked && step.after;
  const runs = after ? step.after : step.layout;
  const status = $("step-status");
  status.textContent =
    `step ${state.step + 1} of ${state.trace.total} (session step ${step.step}) · ` +
    `${step.tokens.toLocaleString()} tokens · ${step.entries} entries · ` +
    `${step.expands} expands, ${step.collapses} collapses · utilization ` +
    `${(step.utilization * 100).toFixed(1)}% · showing the context ${after ? "after" : "before"} ` +
    "the step's edits";
  const strip = $("timeline");
  strip.replaceChildren();
  if (!runs) {
    strip.append(el("span", "this trace predates recorded layouts", "muted"));
    return;
  }
  const changed = new Set(
    (step.edits || []).flatMap(([kind, level, index]) => {
      if (after && kind === "expand") {
        return Array.from({ length: state.K }, (_, k) => `${level - 1}.${index * state.K + k}`);
      }
      if (after) return [`${level}.${index}`];
      return kind === "expand" ? [`${level}.${index}`] : [];
    }),
  );
  const levels = new Set();
  for (const [level, first, count] of runs) {
    levels.add(level);
    for (let i = first; i < first + count; i++) {
      const cell = el("span", null, `cell lvl${Math.min(level, 4)}`);
      cell.dataset.level = level;
      cell.dataset.index = i;
      if (changed.has(`${level}.${i}`)) cell.classList.add("changed");
      cell.title = `${levelName(level)} #${i}`;
      strip.append(cell);
    }
  }
  $("legend").replaceChildren(...[...levels].sort().map((level) =>
    el("span", levelName(level), `key lvl${Math.min(level, 4)}`)));
  $("edits").replaceChildren(...(step.edits || []).map(([kind, level, index]) =>
    el("li", `${kind} ${levelName(level)} #${index}`)));
  markTimeline();
}

function markTimeline() {
  const span = state.span;
  document.querySelectorAll("#timeline .cell.selected").forEach((c) => c.classList.remove("selected"));
  if (!span) return;
  const cell = document.querySelector(
    `#timeline .cell[data-level="${span.level}"][data-index="${span.index}"]`);
  if (cell) cell.classList.add("selected");
}

function timelineClick(event) {
  const cell = event.target.closest(".cell");
  if (!cell) return;
  const level = Number(cell.dataset.level);
  const index = Number(cell.dataset.index);
  guarded(() => openNode(level, index));
}

function togglePlay() {
  if (state.playing) {
    clearInterval(state.playing);
    state.playing = null;
    $("play").textContent = "play";
    return;
  }
  if (!state.trace || !state.trace.total) return;
  if (state.step >= state.trace.total - 1) guarded(() => goToStep(0));
  $("play").textContent = "pause";
  state.playing = setInterval(() => {
    if (state.step >= state.trace.total - 1) return togglePlay();
    guarded(() => goToStep(state.step + 1));
  }, 700);
}

// -- start ----------------------------------------------------------------------------------

async function start() {
  const params = readHash();
  state.key = sessionStorage.getItem("megacontext-key");
  if (!state.key) {
    $("key-form").hidden = false;
    return;
  }
  const listed = await api("/v1/trees");
  if (!listed.trees.length) {
    show("this key's tenant has no tree yet: ingest one (megacontext ingest, or POST /v1/trees)");
    return;
  }
  const select = $("tree-select");
  select.replaceChildren(...listed.trees.map((t) => {
    const option = el("option", t.name);
    option.value = t.name;
    return option;
  }));
  const wanted = params.get("tree");
  const name = listed.trees.some((t) => t.name === wanted) ? wanted : listed.trees[0].name;
  if (wanted && wanted !== name) show(`no tree named ${wanted} for this key; showing ${name}`);
  select.value = name;
  $("key-form").hidden = true;
  $("explorer").hidden = false;
  await openTree(name, params);
  document.body.dataset.ready = "true"; // the first paint is done (tests and benchmarks wait)
}

function wire() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("megacontext-key", $("key-input").value.trim());
    guarded(start);
  });
  $("tree-select").addEventListener("change", (e) =>
    guarded(() => openTree(e.target.value, null)));
  $("sources-more").addEventListener("click", () => guarded(async () =>
    addSources(await api(treeApi("sources", { offset: state.sourcesShown, limit: PAGE })))));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(() => search($("search-input").value));
  });
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(() => ask($("ask-input").value));
  });
  $("annotation-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(saveAnnotation);
  });
  $("annotation-cancel").addEventListener("click", resetAnnotationForm);
  $("trace-select").addEventListener("change", (e) => guarded(() => openTrace(e.target.value)));
  $("step-back").addEventListener("click", () => guarded(() => goToStep(state.step - 1)));
  $("step-forward").addEventListener("click", () => guarded(() => goToStep(state.step + 1)));
  $("step-slider").addEventListener("input", (e) =>
    guarded(() => goToStep(Number(e.target.value))));
  $("show-after").addEventListener("change", () => state.trace && drawTimeline());
  $("play").addEventListener("click", togglePlay);
  $("timeline").addEventListener("click", timelineClick);
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select")) return;
    if (event.key === "[") guarded(() => goToStep(state.step - 1));
    if (event.key === "]") guarded(() => goToStep(state.step + 1));
  });
}

wire();
guarded(start);
