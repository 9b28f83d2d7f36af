// vaelab explorer, image-to-image runs (--task translate): loaded by app.js when /api/meta says
// task "translate". The page's VAE panels are hidden and #translate-main is shown: an uploaded (or
// test) input's mean prediction, a strip of samples z ~ p(z | input), the uncertainty map, and one
// slider per latent dimension over z = μ + σ·ε of the prior net (the sliders set ε).

import {latestWins} from "/static/latest.js";

const $ = (sel, root = document) => root.querySelector(sel);

const state = {meta: null, token: null, prior: null, eps: [], result: null};

const fmt = (v) => (v >= 0 ? " " : "") + v.toFixed(2);
const gaussian = () => Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());

export async function startTranslate(meta, {api, status}) {
  state.meta = meta;
  for (const main of document.querySelectorAll("main:not(#translate-main)")) main.hidden = true;
  $("#translate-main").hidden = false;
  const [c, h, w] = meta.image_shape;
  const parts = [meta.name, meta.dataset, "image to image", meta.arch, `latent ${meta.latent_dim}`, meta.likelihood,
    meta.degradation ? `inputs: ${meta.degradation}` : null, `${meta.input_shape[0]}→${c} × ${h}×${w}`];
  $("#run-info").textContent = parts.filter(Boolean).join(" · ");
  $("#translate-samples").max = meta.max_samples;
  if (meta.examples > 0) {
    $("#translate-index").max = meta.examples - 1;
    $("#translate-hint").textContent = `upload an image or translate one of ${meta.examples} test inputs`;
  } else {
    $("#translate-example-row").hidden = true;
    $("#translate-hint").textContent = meta.examples_note || "upload an image";
  }

  const samples = () => Math.max(1, Math.min(meta.max_samples, Number($("#translate-samples").value) || 1));

  const decode = latestWins(async (eps) => {
    if (!state.token) return;
    const response = await api("/api/translate/decode", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token: state.token, eps: eps.map((v) => Math.max(-meta.eps_limit, Math.min(meta.eps_limit, v)))}),
    });
    const bitmap = await createImageBitmap(await response.blob());
    const canvas = $("#translate-decoded");
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    canvas.dataset.draws = String(Number(canvas.dataset.draws || 0) + 1);
    const z = eps.map((e, d) => state.prior.mean[d] + state.prior.std[d] * e);
    $("#translate-z-readout").textContent = "z = [" + z.slice(0, 8).map(fmt).join(",") + (z.length > 8 ? ", …" : "") + "]";
  }, status);

  function buildSliders() {
    const box = $("#translate-sliders");
    box.replaceChildren();
    state.eps.forEach((value, d) => {
      const row = document.createElement("div");
      row.className = "slider-row";
      const name = document.createElement("span");
      name.className = "dim-name";
      name.textContent = `ε[${d}]`;
      name.title = `z[${d}] = ${state.prior.mean[d].toFixed(3)} + ${state.prior.std[d].toFixed(3)} · ε[${d}]`;
      const input = document.createElement("input");
      Object.assign(input, {type: "range", min: -3, max: 3, step: 0.01});
      input.value = value;
      input.dataset.dim = d;
      input.setAttribute("aria-label", `prior standard deviations along latent dimension ${d}`);
      const out = document.createElement("output");
      out.textContent = fmt(value);
      input.addEventListener("input", () => {
        state.eps[d] = Number(input.value);
        out.textContent = fmt(state.eps[d]);
        decode(state.eps);
      });
      row.append(name, input, out);
      box.append(row);
    });
  }

  function setEps(eps) {
    state.eps = eps;
    for (const input of document.querySelectorAll("#translate-sliders input[type=range]")) {
      const d = Number(input.dataset.dim);
      input.value = eps[d];
      input.nextElementSibling.textContent = fmt(eps[d]);
    }
    decode(state.eps);
  }

  function show(result) {
    state.result = result;
    state.token = result.token;
    state.prior = {mean: result.prior_mean, std: result.prior_std};
    $("#translate-input").src = result.input;
    $("#translate-mean").src = result.mean;
    $("#translate-std").src = result.std;
    $("#translate-std-scale").textContent = `(0 … ${result.std_max.toFixed(3)})`;
    $("#translate-target-figure").hidden = !result.target;
    if (result.target) $("#translate-target").src = result.target;
    $("#translate-result").hidden = false;
    $("#translate-strip").replaceChildren(...result.samples.map((src, k) => {
      const img = new Image();
      img.src = src;
      img.className = "pixels";
      img.alt = img.title = `sample ${k + 1}`;
      return img;
    }));
    if (state.eps.length !== meta.latent_dim) {
      state.eps = new Array(meta.latent_dim).fill(0);
      buildSliders();
    }
    setEps(state.eps.slice());
  }

  async function translateFile(file) {
    try {
      status(`translating ${file.name}…`);
      const form = new FormData();
      form.append("file", file);
      form.append("samples", String(samples()));
      form.append("invert", $("#translate-invert").checked ? "true" : "false");
      show(await (await api("/api/translate", {method: "POST", body: form})).json());
      status("");
    } catch (err) { status(err.message, true); }
  }

  async function translateExample(index) {
    try {
      status(`translating test input #${index}…`);
      show(await (await api(`/api/translate/example/${encodeURIComponent(index)}?samples=${samples()}`)).json());
      status("");
    } catch (err) { status(err.message, true); }
  }

  $("#translate-upload").addEventListener("change", (event) => {
    if (event.target.files[0]) translateFile(event.target.files[0]);
  });
  const drop = $("#translate-drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) translateFile(event.dataTransfer.files[0]);
  });
  $("#translate-load").addEventListener("click", () => translateExample($("#translate-index").value));
  $("#translate-index").addEventListener("keydown", (event) => {
    if (event.key === "Enter") translateExample($("#translate-index").value);
  });
  $("#translate-sample").addEventListener("click", () => setEps(state.eps.map(gaussian)));
  $("#translate-reset").addEventListener("click", () => setEps(state.eps.map(() => 0)));

  window.vaelabTranslate = {state};
  if (meta.examples > 0) await translateExample(0);
  document.body.dataset.ready = "1";
}
