// vaelab explorer: the page's logic. Plain ES module, no build step, no dependencies; every
// request goes to the server that served this file (the CSP forbids anything else).
//
// State: `z` is the pinned latent vector (length D). Hovering the map previews another z;
// clicking pins it. For D > 2 a map position (u, v) maps back to the plane through the pinned z:
//   z' = z + (u, v)·C − ((z − center)·Cᵀ)·C        (C: the 2×D projection, orthonormal rows)
// which is `vaelab.latent.Projection.inverse(coords, base=z)`.

import {latestWins} from "/static/latest.js";

const $ = (sel, root = document) => root.querySelector(sel);

const state = {
  meta: null,
  map: null,
  z: [],            // pinned latent vector (D)
  label: null,      // class label for conditional runs
  dims: [],         // dimensions that have a slider
  hover: null,      // [u, v] map position under the mouse, or null
  upload: null,     // {coords} of the last upload
  slots: {a: null, b: null},  // {z, coords, image}
  t: 0.5,
};

// ---- small helpers -------------------------------------------------------------------------------

function status(message, isError = false) {
  const el = $("#status");
  el.textContent = message;
  el.classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

const postJSON = (path, body) => api(path, {
  method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
});

const fmt = (v) => (v >= 0 ? " " : "") + v.toFixed(2);
const clampZ = (v) => Math.max(-state.meta.z_limit, Math.min(state.meta.z_limit, v));

async function drawPng(canvas, response) {
  const bitmap = await createImageBitmap(await response.blob());
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;  // show the model's pixels, not a blur of them
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  canvas.dataset.draws = String(Number(canvas.dataset.draws || 0) + 1);
}

function decodeBody(z) {
  const body = {z: z.map(clampZ)};
  if (state.meta.conditional) body.label = state.label;
  return body;
}

const decodeMain = latestWins(async (z) => {
  await drawPng($("#decoded"), await postJSON("/api/decode", decodeBody(z)));
  $("#z-readout").textContent = "z = [" + z.slice(0, 8).map(fmt).join(",") + (z.length > 8 ? ", …" : "") + "]";
}, status);

const decodeInterp = latestWins(async (z) => {
  await drawPng($("#interp-out"), await postJSON("/api/decode", decodeBody(z)));
}, status);

// ---- projection ----------------------------------------------------------------------------------

function project(z) {
  const {center, components} = state.map;
  return components.map((row) => row.reduce((s, c, d) => s + c * (z[d] - center[d]), 0));
}

function unproject(uv, base) {
  const {components} = state.map;
  const offset = project(base);  // the base's own map position, replaced by uv
  return base.map((b, d) => b + components[0][d] * (uv[0] - offset[0]) + components[1][d] * (uv[1] - offset[1]));
}

// ---- the map -------------------------------------------------------------------------------------

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
  "#c7c7c7", "#dbdb8d", "#9edae5"];
const colour = (label) => (label < PALETTE.length ? PALETTE[label] : `hsl(${(label * 137.5) % 360} 60% 50%)`);

const view = {x0: -1, x1: 1, y0: -1, y1: 1, size: 560, dpr: 1, points: null};

function setupMap() {
  const {x, y} = state.map;
  // A loop, not Math.min(...x): spreading 100k+ arguments overflows the call stack.
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < x.length; i++) {
    x0 = Math.min(x0, x[i]); x1 = Math.max(x1, x[i]); y0 = Math.min(y0, y[i]); y1 = Math.max(y1, y[i]);
  }
  // Equal scales on both axes (as in the run's latent figure), 6% margin, never past the z bound.
  const half = Math.max(x1 - x0, y1 - y0, 1e-3) * 0.53;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const lim = state.meta.z_limit;
  Object.assign(view, {
    x0: Math.max(cx - half, -lim), x1: Math.min(cx + half, lim),
    y0: Math.max(cy - half, -lim), y1: Math.min(cy + half, lim),
  });
  const canvas = $("#map");
  view.dpr = window.devicePixelRatio || 1;
  view.size = canvas.clientWidth || 560;
  canvas.width = canvas.height = Math.round(view.size * view.dpr);
  // Points are drawn once into an offscreen canvas; every redraw copies it and adds the markers.
  const off = document.createElement("canvas");
  off.width = off.height = canvas.width;
  const ctx = off.getContext("2d");
  ctx.scale(view.dpr, view.dpr);
  drawGrid(ctx);
  const labels = state.map.labels;
  ctx.globalAlpha = 0.55;
  const r = x.length > 3000 ? 1.6 : 2.4;
  for (let i = 0; i < x.length; i++) {
    ctx.fillStyle = labels ? colour(labels[i]) : "#1f77b4";
    const [px, py] = toPixel(x[i], y[i]);
    ctx.fillRect(px - r / 2, py - r / 2, r, r);
  }
  view.points = off;
  const xLabel = state.meta.projection === "pca" ? "PC 1" : "z[0]";
  const yLabel = state.meta.projection === "pca" ? "PC 2" : "z[1]";
  $("#map-panel").dataset.axes = `${xLabel} → · ${yLabel} ↑`;
  drawLegend();
}

function drawGrid(ctx) {
  ctx.strokeStyle = "#e4e4e4";
  ctx.fillStyle = "#999";
  ctx.lineWidth = 1;
  ctx.font = "10px system-ui, sans-serif";
  const step = view.x1 - view.x0 > 12 ? 2 : 1;
  for (let v = Math.ceil(view.x0); v <= view.x1; v += step) {
    const [px] = toPixel(v, 0);
    ctx.beginPath(); ctx.moveTo(px, 0); ctx.lineTo(px, view.size); ctx.stroke();
    ctx.fillText(String(v), px + 2, view.size - 3);
  }
  for (let v = Math.ceil(view.y0); v <= view.y1; v += step) {
    const [, py] = toPixel(0, v);
    ctx.beginPath(); ctx.moveTo(0, py); ctx.lineTo(view.size, py); ctx.stroke();
    ctx.fillText(String(v), 2, py - 2);
  }
}

function toPixel(u, v) {
  return [(u - view.x0) / (view.x1 - view.x0) * view.size, (view.y1 - v) / (view.y1 - view.y0) * view.size];
}

function fromPixel(px, py) {
  return [view.x0 + px / view.size * (view.x1 - view.x0), view.y1 - py / view.size * (view.y1 - view.y0)];
}

function marker(ctx, uv, style, text) {
  const [px, py] = toPixel(uv[0], uv[1]);
  ctx.save();
  ctx.strokeStyle = "#111";
  ctx.lineWidth = 1.5;
  ctx.fillStyle = style;
  ctx.beginPath(); ctx.arc(px, py, 6, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
  if (text) {
    ctx.fillStyle = "#111";
    ctx.font = "bold 13px system-ui, sans-serif";
    ctx.fillText(text, px + 8, py - 8);
  }
  ctx.restore();
}

function redrawMap() {
  if (!view.points) return;
  const canvas = $("#map");
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(view.points, 0, 0);
  ctx.scale(view.dpr, view.dpr);
  const {a, b} = state.slots;
  if (a && b) {  // the interpolation path: a straight line in z is a straight line on the map
    const [ax, ay] = toPixel(...a.coords), [bx, by] = toPixel(...b.coords);
    ctx.strokeStyle = "#333"; ctx.lineWidth = 2; ctx.setLineDash([5, 4]);
    ctx.beginPath(); ctx.moveTo(ax, ay); ctx.lineTo(bx, by); ctx.stroke();
    ctx.setLineDash([]);
    marker(ctx, project(interpZ()), "#fff", "");
  }
  if (a) marker(ctx, a.coords, "#ffe14d", "A");
  if (b) marker(ctx, b.coords, "#ffe14d", "B");
  if (state.upload) marker(ctx, state.upload.coords, "#ff4df0", "upload");
  // The pinned z as a crosshair, the hovered position as a ring.
  const [zx, zy] = toPixel(...project(state.z));
  ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(zx - 10, zy); ctx.lineTo(zx + 10, zy); ctx.moveTo(zx, zy - 10); ctx.lineTo(zx, zy + 10);
  ctx.stroke();
  if (state.hover) {
    const [hx, hy] = toPixel(...state.hover);
    ctx.beginPath(); ctx.arc(hx, hy, 8, 0, 2 * Math.PI); ctx.stroke();
  }
}

function drawLegend() {
  const legend = $("#legend");
  legend.replaceChildren();
  if (!state.map.labels) return;
  const names = state.meta.class_names;
  const present = [...new Set(state.map.labels)].sort((p, q) => p - q);
  for (const label of present) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour(label);
    item.append(swatch, names[label] ?? String(label));
    legend.append(item);
  }
}

function mapPosition(event) {
  const rect = $("#map").getBoundingClientRect();
  return fromPixel((event.clientX - rect.left) * view.size / rect.width,
    (event.clientY - rect.top) * view.size / rect.height);
}

function zAt(uv) {
  return state.meta.latent_dim === 2 ? uv.slice() : unproject(uv, state.z).map(clampZ);
}

function setupMapEvents() {
  const canvas = $("#map");
  canvas.addEventListener("mousemove", (event) => {
    state.hover = mapPosition(event);
    $("#map-readout").textContent = `(${state.hover.map(fmt).join(",")})`;
    redrawMap();
    decodeMain(zAt(state.hover));
  });
  canvas.addEventListener("mouseleave", () => {
    state.hover = null;
    redrawMap();
    decodeMain(state.z);
  });
  canvas.addEventListener("click", (event) => {
    setZ(zAt(mapPosition(event)));
  });
}

// ---- sliders -------------------------------------------------------------------------------------

const SLIDER_RANGE = 5;

function buildSliders() {
  const box = $("#sliders");
  box.replaceChildren();
  const kl = state.meta.kl_per_dim;
  for (const d of state.dims) {
    const row = document.createElement("div");
    row.className = "slider-row";
    const name = document.createElement("span");
    name.className = "dim-name";
    name.textContent = `z[${d}]`;
    name.title = `average KL to the prior: ${kl[d].toFixed(3)} nats`;
    const input = document.createElement("input");
    Object.assign(input, {type: "range", min: -SLIDER_RANGE, max: SLIDER_RANGE, step: 0.01});
    input.value = state.z[d];
    input.dataset.dim = d;
    input.setAttribute("aria-label", `latent dimension ${d}`);
    const value = document.createElement("output");
    value.textContent = fmt(state.z[d]);
    input.addEventListener("input", () => {
      state.z[d] = Number(input.value);
      value.textContent = fmt(state.z[d]);
      redrawMap();
      decodeMain(state.z);
    });
    row.append(name, input, value);
    if (state.dims.length > 1 && state.meta.latent_dim > state.meta.slider_dims.length) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.title = "hide this slider";
      remove.addEventListener("click", () => {
        state.dims = state.dims.filter((k) => k !== d);
        buildSliders();
      });
      row.append(remove);
    }
    box.append(row);
  }
  buildDimChooser();
}

function buildDimChooser() {
  const hidden = state.meta.dims_by_kl.filter((d) => !state.dims.includes(d));
  $("#add-dim-row").hidden = hidden.length === 0;
  const select = $("#add-dim");
  select.replaceChildren(new Option("choose…", ""));
  for (const d of hidden) select.append(new Option(`z[${d}]  KL ${state.meta.kl_per_dim[d].toFixed(3)}`, d));
}

function syncSliders() {
  for (const input of document.querySelectorAll("#sliders input[type=range]")) {
    const d = Number(input.dataset.dim);
    input.value = state.z[d];
    input.nextElementSibling.textContent = fmt(state.z[d]);
  }
}

function setZ(z) {
  state.z = z.map(clampZ);
  syncSliders();
  redrawMap();
  decodeMain(state.z);
}

// ---- interpolation -------------------------------------------------------------------------------

function interpZ() {
  const {a, b} = state.slots;
  return a.z.map((za, d) => (1 - state.t) * za + state.t * b.z[d]);
}

async function setSlot(which, item) {
  state.slots[which] = item;
  const slot = $(`#slot-${which}`);
  $("img", slot).src = item.image;
  redrawMap();
  await refreshInterpolation();
}

async function refreshInterpolation() {
  const {a, b} = state.slots;
  if (!a || !b) return;
  decodeInterp(interpZ());
  const steps = 9;
  const zs = [];
  for (let i = 0; i < steps; i++) {
    const t = i / (steps - 1);
    zs.push(a.z.map((za, d) => clampZ((1 - t) * za + t * b.z[d])));
  }
  const body = {z: zs};
  if (state.meta.conditional) body.label = state.label;
  const {images} = await (await postJSON("/api/decode/batch", body)).json();
  const strip = $("#strip");
  strip.replaceChildren(...images.map((src, i) => {
    const img = new Image();
    img.src = src;
    img.className = "pixels frame";
    img.alt = `t = ${(i / (steps - 1)).toFixed(2)}`;
    img.title = img.alt;
    img.addEventListener("click", () => setT(i / (steps - 1)));
    return img;
  }));
}

function setT(t) {
  state.t = t;
  $("#interp-t").value = t;
  $("#interp-t-out").textContent = `t = ${t.toFixed(2)}`;
  if (state.slots.a && state.slots.b) {
    redrawMap();
    decodeInterp(interpZ());
  }
}

async function loadIndex(which, index) {
  const item = await (await api(`/api/data/${encodeURIComponent(index)}`)).json();
  await setSlot(which, {z: item.z, coords: item.coords, image: item.image});
}

async function encodeFile(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("invert", $("#invert").checked ? "true" : "false");
  if (state.meta.conditional) form.append("label", String(state.label));
  return (await api("/api/encode", {method: "POST", body: form})).json();
}

function setupInterpolation() {
  for (const which of ["a", "b"]) {
    const slot = $(`#slot-${which}`);
    const index = $(".index", slot);
    index.max = state.meta.split_size - 1;
    const load = () => loadIndex(which, index.value).catch((err) => status(err.message, true));
    $(".load", slot).addEventListener("click", load);
    index.addEventListener("keydown", (event) => { if (event.key === "Enter") load(); });
    $(".upload", slot).addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (!file) return;
      try {
        const result = await encodeFile(file);
        await setSlot(which, {z: result.z, coords: result.coords, image: result.input});
      } catch (err) { status(err.message, true); }
    });
  }
  $("#interp-t").addEventListener("input", (event) => setT(Number(event.target.value)));
  $("#interp-to-sliders").addEventListener("click", () => { if (state.slots.a && state.slots.b) setZ(interpZ()); });
}

// ---- uploads -------------------------------------------------------------------------------------

async function handleUpload(file) {
  try {
    status(`encoding ${file.name}…`);
    const result = await encodeFile(file);
    $("#upload-input").src = result.input;
    $("#upload-recon").src = result.reconstruction;
    $("#upload-result").hidden = false;
    $("#upload-readout").textContent = `map position (${result.coords.map(fmt).join(",")})`;
    state.upload = {coords: result.coords};
    setZ(result.z);
    status("");
  } catch (err) { status(err.message, true); }
}

function setupUpload() {
  $("#upload").addEventListener("change", (event) => { if (event.target.files[0]) handleUpload(event.target.files[0]); });
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) handleUpload(event.dataTransfer.files[0]);
  });
}

// ---- start ---------------------------------------------------------------------------------------

async function start() {
  const meta = await (await api("/api/meta")).json();
  if (meta.task === "translate") {  // an image-to-image run: its own page section (translate.js)
    const {startTranslate} = await import("/static/translate.js");
    return startTranslate(meta, {api, status});
  }
  const map = await (await api("/api/map")).json();
  state.meta = meta;
  state.map = map;
  state.z = meta.latent_dim === 2 ? [0, 0] : map.center.slice();  // the prior mean / the map's centre
  state.dims = meta.slider_dims.slice();
  const parts = [meta.name, meta.dataset, meta.arch, `latent ${meta.latent_dim}`, meta.likelihood,
    meta.conditional ? "conditional" : null, `${meta.map_points} test images on the map`];
  $("#run-info").textContent = parts.filter(Boolean).join(" · ");
  $("#dims-hint").textContent = meta.latent_dim > meta.slider_dims.length
    ? `the ${meta.slider_dims.length} most used of ${meta.latent_dim} (by KL)` : "";
  if (meta.projection === "pca") $("#map-hint").textContent = "PCA of the codes · hover to decode, click to pin";

  if (meta.conditional) {
    const select = $("#label");
    meta.class_names.forEach((name, k) => select.append(new Option(name, k)));
    state.label = 0;
    $("#label-row").hidden = false;
    select.addEventListener("change", () => {
      state.label = Number(select.value);
      decodeMain(state.z);
      refreshInterpolation().catch((err) => status(err.message, true));
    });
  }
  $("#add-dim").addEventListener("change", (event) => {
    if (event.target.value === "") return;
    state.dims.push(Number(event.target.value));
    buildSliders();
  });
  $("#sample").addEventListener("click", async () => {
    // A draw from the model's own prior (N(0, I), a learned mixture, a VampPrior, a hierarchy).
    const seed = Math.floor(Math.random() * 2 ** 31);
    try {
      const {z} = await (await api(`/api/sample?seed=${seed}`)).json();
      setZ(z.map(clampZ));
    } catch (err) { status(err.message, true); }
  });
  $("#center").addEventListener("click", () => setZ(meta.latent_dim === 2 ? [0, 0] : map.center.slice()));

  setupMap();
  setupMapEvents();
  buildSliders();
  setupInterpolation();
  setupUpload();
  redrawMap();
  decodeMain(state.z);
  const lastIndex = meta.split_size - 1;
  await Promise.all([loadIndex("a", 0), loadIndex("b", Math.min(1, lastIndex))]);
  document.body.dataset.ready = "1";
}

window.vaelabExplorer = {state, project, unproject};
start().catch((err) => status(`could not start: ${err.message}`, true));
