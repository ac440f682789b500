// The upload page: one POST /classify per chosen image, top-5 with probability bars, errors in plain words.
// No build step and no dependencies: the server serves this folder as it is.
"use strict";

const TOPK = 5;

// What an HTTP status means to someone who just dropped a photo (the server's own message is added below it).
const PLAIN_WORDS = {
  400: "This file could not be read as an image. It may be damaged or not really an image.",
  404: "This model is not loaded on the server (any more). Choose another one or reload the page.",
  401: "This server needs an API key. Enter it in the API key field and choose the image again.",
  413: "This image is too large for the server. Try a smaller one.",
  415: "This kind of file is not supported. Use a JPEG, PNG, GIF, BMP, WebP or TIFF image.",
  422: "The server did not accept the request settings.",
  503: "The server is busy right now. Please try again in a few seconds.",
  504: "The server took too long to answer. Please try again.",
};

const form = document.getElementById("upload-form");
const input = document.getElementById("file-input");
const dropZone = document.getElementById("drop-zone");
const tenCrop = document.getElementById("ten-crop");
const apiKeyRow = document.getElementById("api-key-row");
const apiKey = document.getElementById("api-key");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const template = document.getElementById("result-template");
const modelInfo = document.getElementById("model-info");
const modelRow = document.getElementById("model-row");
const modelSelect = document.getElementById("model-select");

function authHeaders() {
  const headers = {};
  if (apiKey.value.trim()) headers["Authorization"] = "Bearer " + apiKey.value.trim();
  return headers;
}

// The models the server has ready (the model repository's index); the chooser shows when there are several.
async function loadModels() {
  let rows;
  try {
    const response = await fetch("v2/repository/index", {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()),
      body: JSON.stringify({ ready: true }),
    });
    if (!response.ok) return;  // 401: asked again once a key is entered
    rows = await response.json();
  } catch (e) {
    return;
  }
  const names = Array.from(new Set((rows || []).map((r) => r.name))).sort();
  const chosen = modelSelect.value;
  modelSelect.replaceChildren();
  for (const name of names) {
    const versions = rows.filter((r) => r.name === name).map((r) => r.version);
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name + " (version " + versions.join(", ") + ")";
    modelSelect.appendChild(option);
  }
  if (names.includes(chosen)) modelSelect.value = chosen;
  modelRow.hidden = names.length < 2;
}

function percent(p) {
  if (p > 0 && p < 0.001) return "<0.1%";
  return (100 * p).toFixed(p >= 0.995 ? 0 : 1) + "%";
}

function plainError(status, body) {
  const base = PLAIN_WORDS[status] || (status >= 500
    ? "The server ran into a problem (HTTP " + status + ")."
    : "The server refused the request (HTTP " + status + ").");
  const detail = body && body.error && body.error.message ? body.error.message : "";
  return { text: base, detail: detail };
}

function topOf(body) {
  // DESIGN.md §4: one result per image, each with its top-k {index, label, probability}.
  const item = body && body.results && body.results[0];
  const top = item && (Array.isArray(item) ? item : item.topk || item.top);
  return Array.isArray(top) ? top : null;
}

function showTop(card, body) {
  const list = card.querySelector(".top");
  list.replaceChildren();
  for (const p of topOf(body)) {
    const li = document.createElement("li");
    li.className = "prediction";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = percent(p.probability);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", (100 * p.probability).toFixed(1));
    bar.setAttribute("aria-label", p.label + " probability");
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = Math.max(0, Math.min(100, 100 * p.probability)).toFixed(1) + "%";
    bar.appendChild(fill);
    li.append(label, bar, value);
    list.appendChild(li);
  }
  list.hidden = false;
  const state = card.querySelector(".state");
  const model = body.model && body.version ? body.model + " v" + body.version : body.model;
  const where = [model, body.backend].filter(Boolean).join(" · ");
  state.textContent = (body.crops === "center" ? "Centre crop" : "Ten-crop") + (where ? " · " + where : "");
  if (where) modelInfo.textContent = "Model: " + where;
  card.classList.add("done");
}

function showError(card, err) {
  const el = card.querySelector(".error");
  el.replaceChildren();
  el.append(document.createTextNode(err.text));
  if (err.detail) {
    const small = document.createElement("span");
    small.className = "detail";
    small.textContent = " (" + err.detail + ")";
    el.appendChild(small);
  }
  el.hidden = false;
  card.querySelector(".state").textContent = "Not classified";
  card.classList.add("failed");
}

async function classify(file, card) {
  const data = new FormData();
  data.append("file", file, file.name);
  const params = new URLSearchParams({ topk: String(TOPK), crops: tenCrop.checked ? "ten" : "center" });
  if (!modelRow.hidden && modelSelect.value) params.set("model", modelSelect.value);
  const headers = authHeaders();
  let response;
  try {
    response = await fetch("classify?" + params, { method: "POST", body: data, headers: headers });
  } catch (e) {
    showError(card, { text: "Could not reach the server. Check that it is running and try again.", detail: "" });
    return false;
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (response.ok && topOf(body)) {
    showTop(card, body);
    return true;
  }
  if (response.status === 401) {
    apiKeyRow.hidden = false;
    apiKey.focus();
  }
  showError(card, response.ok
    ? { text: "The server's answer did not contain a result.", detail: "" }
    : plainError(response.status, body));
  return false;
}

function addCard(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".file-name").textContent = file.name;
  const img = card.querySelector(".preview");
  img.alt = "Preview of " + file.name;
  const url = URL.createObjectURL(file);
  img.src = url;
  img.addEventListener("error", () => {
    const none = document.createElement("div");
    none.className = "preview none";
    none.textContent = "No preview";
    img.replaceWith(none);
  });
  return card;
}

async function handleFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  statusLine.textContent = "Classifying " + files.length + (files.length === 1 ? " image…" : " images…");
  const cards = files.map(addCard);
  const batch = document.createDocumentFragment();
  batch.append(...cards);
  results.prepend(batch);  // the newest images on top, in the order they were chosen
  let ok = 0;
  for (let i = 0; i < files.length; i++) {
    if (await classify(files[i], cards[i])) ok++;
  }
  const failed = files.length - ok;
  statusLine.textContent = "Done: " + ok + " classified" + (failed ? ", " + failed + " could not be classified." : ".");
}

input.addEventListener("change", () => {
  handleFiles(input.files);
  input.value = "";  // choosing the same file again fires change again
});

form.addEventListener("submit", (e) => e.preventDefault());

for (const name of ["dragenter", "dragover"]) {
  dropZone.addEventListener(name, (e) => {
    e.preventDefault();
    dropZone.classList.add("over");
  });
}
for (const name of ["dragleave", "drop"]) {
  dropZone.addEventListener(name, (e) => {
    e.preventDefault();
    dropZone.classList.remove("over");
  });
}
dropZone.addEventListener("drop", (e) => handleFiles(e.dataTransfer && e.dataTransfer.files));
// Dropping an image outside the zone should not navigate away from the page.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());
apiKey.addEventListener("change", loadModels);
loadModels();
