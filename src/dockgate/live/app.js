// The live view: decisions arrive as server-sent events from /live/events.
// Everything shown came from a client's request: it is inserted with textContent
// (never innerHTML), so "<script>" in a target is shown as text.
"use strict";

const MAX_ROWS = 500;
const rows = [];          // decisions shown, newest first
const counts = new Map(); // client key -> {allow, deny}

function el(name, text, className) {
  const node = document.createElement(name);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function filters() {
  return {
    client: document.getElementById("filter-client").value,
    op: document.getElementById("filter-op").value.trim(),
    decision: document.getElementById("filter-decision").value,
  };
}

function visible(record, f) {
  return (!f.client || record.key === f.client) &&
         (!f.op || (record.operation || "").includes(f.op)) &&
         (!f.decision || record.decision === f.decision);
}

function addClientOption(key) {
  for (const id of ["filter-client", "suggest-client"]) {
    const select = document.getElementById(id);
    if ([...select.options].some((o) => o.value === key)) continue;
    const option = el("option", key);
    option.value = key;
    select.appendChild(option);
  }
  updateDownload();
}

function row(record) {
  const tr = el("tr", undefined, record.decision);
  tr.dataset.id = String(record.id);
  tr.dataset.decision = record.decision;
  tr.appendChild(el("td", new Date(record.time * 1000).toLocaleTimeString()));
  tr.appendChild(el("td", record.key));
  tr.appendChild(el("td", `${record.method} ${record.path}`));
  tr.appendChild(el("td", record.operation || "(no route)"));
  tr.appendChild(el("td", record.decision, `decision-${record.decision}`));
  if (record.decision === "deny") tr.addEventListener("click", () => openDenial(record, tr));
  return tr;
}

function render() {
  const f = filters();
  const body = document.querySelector("#decisions tbody");
  body.replaceChildren(...rows.filter((r) => visible(r, f)).map(row));
  const countBody = document.querySelector("#counts tbody");
  countBody.replaceChildren(...[...counts.entries()].sort().map(([key, c]) => {
    const tr = el("tr");
    tr.dataset.client = key;
    tr.append(el("td", key), el("td", String(c.allow)), el("td", String(c.deny)));
    return tr;
  }));
}

async function openDenial(record, tr) {
  document.querySelectorAll("tr.selected").forEach((node) => node.classList.remove("selected"));
  tr.classList.add("selected");
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-request").textContent = `${record.method} ${record.path}`;
  document.getElementById("detail-reason").textContent = record.reason || "";
  const grant = document.getElementById("detail-grant");
  grant.textContent = "…";
  const answer = await fetch(`/live/grant?id=${encodeURIComponent(record.id)}`);
  grant.textContent = await answer.text();
}

function suggestUrl() {
  const key = document.getElementById("suggest-client").value;
  return `/live/suggest?client=${encodeURIComponent(key)}`;
}

function updateDownload() {
  document.getElementById("suggest-download").href = suggestUrl();
}

async function showSuggestion() {
  const answer = await fetch(suggestUrl());
  document.getElementById("suggest-yaml").textContent = await answer.text();
}

function connect() {
  const status = document.getElementById("status");
  const events = new EventSource("/live/events");
  events.onopen = () => { status.textContent = "live"; };
  events.onerror = () => { status.textContent = "disconnected, retrying…"; };
  events.onmessage = (message) => {
    const record = JSON.parse(message.data);
    counts.set(record.key, record.counts);
    addClientOption(record.key);
    rows.unshift(record);
    rows.length = Math.min(rows.length, MAX_ROWS);
    render();
  };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["filter-client", "filter-decision"]) {
    document.getElementById(id).addEventListener("change", render);
  }
  document.getElementById("filter-op").addEventListener("input", render);
  document.getElementById("suggest-client").addEventListener("change", updateDownload);
  document.getElementById("suggest-show").addEventListener("click", showSuggestion);
  connect();
});
