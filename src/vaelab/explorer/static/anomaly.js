// vaelab explorer, anomaly panel: scores an uploaded image with POST /api/anomaly and shows its
// scores, their percentiles among the normal training images, and its anomaly maps. Its own
// module (the rest of the page is app.js): it only reads the shared #upload, #drop, #invert and
// #status elements, and never changes the page's state.

const $ = (sel) => document.querySelector(sel);
const anomaly = {last: null, requests: 0};

function status(message, isError = false) {
  const el = $("#status");
  el.textContent = message;
  el.classList.toggle("error", isError);
}

async function scoreFile(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("invert", $("#invert").checked ? "true" : "false");
  const response = await fetch("/api/anomaly", {method: "POST", body: form});
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return response.json();
}

const fmt = (v) => (v === null ? "–" : Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0)
  ? v.toExponential(3) : v.toFixed(3));

function show(result) {
  $("#anomaly-input").src = result.input;
  $("#anomaly-recon").src = result.reconstruction;
  $("#anomaly-map").src = result.residual_map;
  $("#anomaly-map-caption").textContent = `residual (0–${result.residual_scale.toPrecision(3)})`;
  const weighted = result.weighted_map !== null;
  $("#anomaly-weighted-figure").hidden = !weighted;
  if (weighted) {
    $("#anomaly-weighted").src = result.weighted_map;
    $("#anomaly-weighted-caption").textContent = `residual / σ (0–${result.weighted_scale.toPrecision(3)})`;
  }
  const body = $("#anomaly-table tbody");
  body.replaceChildren(...result.scores.map((s) => {
    const row = document.createElement("tr");
    row.dataset.score = s.name;
    row.title = s.definition;
    const pct = s.percentile === null ? "–" : `${s.percentile.toFixed(1)}th`;
    if (s.percentile !== null && s.percentile >= 95) row.classList.add("unusual");
    for (const text of [s.name, fmt(s.value), pct]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
  const ref = result.reference;
  $("#anomaly-reference").textContent = `compared with ${ref.source}: ${ref.images} images, ${ref.scored} of them ` +
    `scored; nll = -L_${result.iw_samples}. Highlighted: above the 95th percentile.`;
  $("#anomaly-result").hidden = false;
}

async function run(file) {
  anomaly.requests += 1;
  try {
    const result = await scoreFile(file);
    anomaly.last = result;
    show(result);
  } catch (err) {
    status(`anomaly: ${err.message}`, true);
  }
}

async function setup() {
  const meta = await (await fetch("/api/meta")).json();
  if (meta.conditional) {  // scores need an unconditional model
    $("#anomaly-panel").hidden = true;
    return;
  }
  $("#anomaly-upload").addEventListener("change", (event) => { if (event.target.files[0]) run(event.target.files[0]); });
  $("#upload").addEventListener("change", (event) => { if (event.target.files[0]) run(event.target.files[0]); });
  $("#drop").addEventListener("drop", (event) => { if (event.dataTransfer.files[0]) run(event.dataTransfer.files[0]); });
}

window.vaelabAnomaly = anomaly;
setup().catch((err) => status(`anomaly panel: ${err.message}`, true));
