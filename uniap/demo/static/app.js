// uniap-demo's page: upload an image, show one layer (a level or a contour cut) at a time,
// look up the record under a click, download the --format sam document.
"use strict";

const $ = (id) => document.getElementById(id);
const ALPHA = 0.5;           // opacity of a region's colour over the image
const ALPHA_SELECTED = 0.8;  // ... of the clicked region
const state = { config: null, payload: null, labels: [], colours: [], base: null, point: null, byId: new Map() };

function setState(name) { document.body.dataset.state = name; }

function showMessage(text) {
  $("message").textContent = text || "";
  $("message").hidden = !text;
}

function showStatus(text) {
  $("status").textContent = text || "";
  $("status").hidden = !text;
}

function fail(text) {
  showStatus("");
  showMessage(text);
  setState("error");
}

const megabytes = (n) => (n / 1048576).toFixed(1);

async function loadConfig() {
  try {
    const response = await fetch("config");
    state.config = await response.json();
    const pixels = state.config.max_pixels ? `${(state.config.max_pixels / 1e6).toFixed(1)} million pixels` : "any size";
    $("limits").textContent = `PNG, JPEG, WebP, TIFF or BMP; up to ${megabytes(state.config.max_bytes)} MB and ${pixels}.`;
  } catch (err) {
    $("limits").textContent = "";
  }
}

async function upload(file) {
  showMessage("");
  if (!file) return;
  $("result").hidden = true;  // the previous image's masks go: what is shown is this file's
  state.payload = null;
  if (file.size === 0) return fail(`${file.name} is empty`);
  if (state.config && file.size > state.config.max_bytes) {
    return fail(`${file.name} is ${megabytes(file.size)} MB; this demo takes at most ${megabytes(state.config.max_bytes)} MB`);
  }
  setState("busy");
  showStatus(`Segmenting ${file.name} …`);
  let response;
  try {
    response = await fetch("segment?name=" + encodeURIComponent(file.name),
                           { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
  } catch (err) {
    return fail(`The server did not answer (${err.message}): is uniap-demo still running?`);
  }
  let body;
  try {
    body = await response.json();
  } catch (err) {
    return fail(`The server answered ${response.status} ${response.statusText} without a result`);
  }
  if (!response.ok) return fail(body.error || `The server answered ${response.status}`);
  try {
    await show(body);
  } catch (err) {
    fail(`The result could not be shown: ${err.message}`);
  }
}

async function pixelsOf(url, width, height) {
  const image = new Image();
  image.src = url;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(image, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height).data;
}

// The server writes label + 1 into a PNG's red, green and blue bytes (uniap.demo.server.label_png).
async function decodeLabels(url, width, height) {
  const rgba = await pixelsOf(url, width, height);
  const labels = new Int32Array(width * height);
  for (let i = 0; i < labels.length; i++) {
    labels[i] = rgba[4 * i] + (rgba[4 * i + 1] << 8) + (rgba[4 * i + 2] << 16) - 1;
  }
  return labels;
}

async function show(payload) {
  const { width, height, image } = payload.display;
  state.payload = payload;
  state.base = await pixelsOf(image, width, height);
  state.labels = await Promise.all(payload.layers.map((layer) => decodeLabels(layer.labels, width, height)));
  state.colours = payload.layers.map((layer) => Uint8Array.from(layer.colours.flat()));
  state.byId = new Map(payload.document.annotations.map((record) => [record.id, record]));
  state.point = null;
  const view = $("view");
  view.width = width;
  view.height = height;
  const slider = $("level");
  slider.max = String(payload.layers.length - 1);
  slider.value = "0";
  $("result").hidden = false;
  showRecord(null);
  render();
  const masks = payload.document.annotations.length;
  showStatus(`${payload.file_name}: ${payload.width} × ${payload.height} pixels, ${masks} masks in ${payload.seconds} s`);
  setState("ready");
}

function currentLayer() { return Number($("level").value); }

function labelAtPoint(k) {
  if (!state.point) return -1;
  const [x, y] = state.point;
  return state.labels[k][y * state.payload.display.width + x];
}

function render() {
  const k = currentLayer();
  const layer = state.payload.layers[k];
  const labels = state.labels[k];
  const colours = state.colours[k];
  const { width, height } = state.payload.display;
  $("level-name").textContent = layer.name;
  $("level-caption").textContent = layer.caption;
  $("view").dataset.layer = String(k);
  const selected = labelAtPoint(k);
  const ctx = $("view").getContext("2d");
  const out = ctx.createImageData(width, height);
  const data = out.data;
  const base = state.base;
  for (let y = 0, i = 0; y < height; y++) {
    for (let x = 0; x < width; x++, i++) {
      const label = labels[i];
      const edge = (x + 1 < width && labels[i + 1] !== label) || (y + 1 < height && labels[i + width] !== label);
      const o = 4 * i;
      if (edge) {
        const mine = label === selected || (x + 1 < width && labels[i + 1] === selected) ||
                     (y + 1 < height && labels[i + width] === selected);
        data[o] = 255; data[o + 1] = mine ? 215 : 255; data[o + 2] = mine ? 0 : 255;
      } else {
        const a = label === selected ? ALPHA_SELECTED : ALPHA;
        data[o] = (1 - a) * base[o] + a * colours[3 * label];
        data[o + 1] = (1 - a) * base[o + 1] + a * colours[3 * label + 1];
        data[o + 2] = (1 - a) * base[o + 2] + a * colours[3 * label + 2];
      }
      data[o + 3] = 255;
    }
  }
  ctx.putImageData(out, 0, 0);
  if (state.point) showRecord(recordAtPoint(k));
}

function recordAtPoint(k) {
  const label = labelAtPoint(k);
  const id = label >= 0 ? state.payload.layers[k].records[label] : -1;
  return id >= 0 ? state.byId.get(id) : undefined;
}

function formatValue(key, value) {
  if (key === "segmentation") return `COCO RLE of ${value.size[0]} × ${value.size[1]} (${String(value.counts).length} characters)`;
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

function showRecord(record) {
  const table = $("record");
  const body = table.tBodies[0];
  body.replaceChildren();
  if (record === null) {
    table.hidden = true;
    $("record-hint").textContent = "Click a region to see its record.";
    return;
  }
  if (record === undefined) {
    table.hidden = true;
    $("record-hint").textContent = "No record here at this level: a cluster smaller than min_size.";
    return;
  }
  for (const [key, value] of Object.entries(record)) {  // whatever the record has, in its order
    const row = body.insertRow();
    row.dataset.key = key;
    const th = document.createElement("th");
    th.textContent = key;
    row.append(th);
    row.insertCell().textContent = formatValue(key, value);
  }
  table.hidden = false;
  $("record-hint").textContent = `Record ${record.id} (${state.payload.layers[currentLayer()].name}):`;
}

function pick(event) {
  if (!state.payload) return;
  const view = $("view");
  const box = view.getBoundingClientRect();
  const { width, height } = state.payload.display;
  const x = Math.min(width - 1, Math.max(0, Math.floor((event.clientX - box.left) * width / box.width)));
  const y = Math.min(height - 1, Math.max(0, Math.floor((event.clientY - box.top) * height / box.height)));
  state.point = [x, y];
  render();
}

function download() {
  if (!state.payload) return;
  const text = JSON.stringify(state.payload.document);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  link.download = state.payload.file_name.replace(/\.[^./\\]*$/, "") + ".json";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => upload(event.target.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
  $("level").addEventListener("input", render);
  $("view").addEventListener("click", pick);
  $("download").addEventListener("click", download);
  setState("idle");
  loadConfig();
}

setup();
