// unclip web page: builds a request from the form, submits it as a job
// (?wait=false), polls /api/jobs/{id} for progress and shows the result.
// Self-contained: no libraries, no external assets.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { op: "generate", info: null, job: null, timer: null };

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    const message = (body && (body.error || body.detail)) || `HTTP ${response.status}`;
    throw new Error(response.status === 429 ? `Server busy: ${message}` : message);
  }
  return body;
}

// --- model info, limits and per-stage settings ---------------------------
async function loadInfo() {
  try {
    const info = await api("/api/info");
    state.info = info;
    $("model-info").textContent = `model: ${info.model} (${info.kind}, stages: ${info.stages.join(" → ")})`;
    const limits = info.limits;
    $("prompt").maxLength = limits.max_prompt_chars;
    $("num_images").max = $("num_variations").max = $("img2img_count").max = $("inpaint_count").max = limits.max_images;
    const edits = info.edit_defaults || {};
    if (edits.strength !== undefined) { $("strength").value = edits.strength; showStrength(); }
    $("interp_frames").max = $("diff_frames").max = limits.max_frames;
    buildStageTable(info.stages, info.defaults || {}, limits);
    for (const button of document.querySelectorAll(".tabs button")) {
      button.disabled = !info.operations.includes(button.dataset.op);
      if (button.disabled) button.title = "this model does not support it";
    }
    showQueue(info.queue);
  } catch (error) {
    showError(`cannot read model info: ${error.message}`);
  }
}

function buildStageTable(stages, defaults, limits) {
  const body = document.querySelector("#stages tbody");
  body.innerHTML = "";
  for (const stage of stages) {
    const row = document.createElement("tr");
    const steps = defaults[`${stage}_steps`];
    const guidance = defaults[`${stage}_guidance`];
    row.innerHTML = `<td>${stage}</td>
      <td><input type="number" id="${stage}_steps" min="1" max="${limits.max_steps}" placeholder="${steps ?? "default"}"></td>
      <td></td>`;
    if (stage === "prior" || stage === "decoder") {
      row.lastElementChild.innerHTML = `<input type="number" id="${stage}_guidance" step="0.5"
        min="${limits.min_guidance}" max="${limits.max_guidance}" placeholder="${guidance ?? "default"}">`;
    }
    body.appendChild(row);
  }
}

function showQueue(queue) {
  if (queue) $("queue-info").textContent = `queue: ${queue.waiting}/${queue.max_queue} waiting`;
}

// --- tabs and previews ----------------------------------------------------
for (const button of document.querySelectorAll(".tabs button")) {
  button.addEventListener("click", () => {
    state.op = button.dataset.op;
    for (const other of document.querySelectorAll(".tabs button")) other.classList.toggle("active", other === button);
    for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== state.op;
  });
}

for (const preview of document.querySelectorAll("[data-preview-for]")) {
  $(preview.dataset.previewFor).addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) preview.src = URL.createObjectURL(file); else preview.removeAttribute("src");
  });
}

$("prompt").addEventListener("keydown", (event) => {  // Ctrl/Cmd+Enter generates
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("form").requestSubmit();
});

$("seed-random").addEventListener("click", () => { $("seed").value = "random"; });

$("strength").addEventListener("input", showStrength);

function showStrength() { $("strength_value").textContent = Number($("strength").value).toFixed(2); }

// --- inpainting: a brush on a canvas paints the mask (white = regenerate) ---------
const brush = { image: null, mask: null, drawing: false, painted: false };

$("inpaint_image").addEventListener("change", (event) => {
  const file = event.target.files[0];
  brush.image = null;
  brush.mask = null;
  $("inpaint_canvas").hidden = true;
  if (!file) return;
  const image = new Image();
  image.onload = () => { brush.image = image; resetMask(); };
  image.src = URL.createObjectURL(file);
});

function resetMask() {  // a black mask of the image's own size, so the server can match the two
  if (!brush.image) return;
  const view = $("inpaint_canvas");
  const width = brush.image.naturalWidth, height = brush.image.naturalHeight;
  brush.mask = document.createElement("canvas");
  brush.mask.width = view.width = width;
  brush.mask.height = view.height = height;
  const ctx = brush.mask.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  brush.painted = false;
  view.hidden = false;
  drawView();
}

function drawView() {  // the image with the painted region lightened on top
  const ctx = $("inpaint_canvas").getContext("2d");
  ctx.globalCompositeOperation = "source-over";
  ctx.globalAlpha = 1;
  ctx.drawImage(brush.image, 0, 0);
  ctx.globalCompositeOperation = "screen";
  ctx.globalAlpha = 0.65;
  ctx.drawImage(brush.mask, 0, 0);
  ctx.globalCompositeOperation = "source-over";
  ctx.globalAlpha = 1;
}

function paintAt(event) {
  const view = $("inpaint_canvas");
  const rect = view.getBoundingClientRect();
  const x = (event.clientX - rect.left) * view.width / rect.width;
  const y = (event.clientY - rect.top) * view.height / rect.height;
  const radius = Math.max(0.5, Number($("brush_size").value) / 100 * view.width);
  const ctx = brush.mask.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  ctx.arc(x, y, radius, 0, 2 * Math.PI);
  ctx.fill();
  brush.painted = true;
  drawView();
}

$("inpaint_canvas").addEventListener("pointerdown", (event) => {
  if (!brush.mask) return;
  brush.drawing = true;
  $("inpaint_canvas").setPointerCapture(event.pointerId);
  paintAt(event);
});
$("inpaint_canvas").addEventListener("pointermove", (event) => { if (brush.drawing) paintAt(event); });
for (const name of ["pointerup", "pointercancel"]) {
  $("inpaint_canvas").addEventListener(name, () => { brush.drawing = false; });
}
$("mask_clear").addEventListener("click", resetMask);

async function maskBlob() {
  if (!brush.mask) throw new Error("choose an image first");
  if (!brush.painted) throw new Error("paint the region to regenerate on the image first");
  return new Promise((resolve) => brush.mask.toBlob(resolve, "image/png"));
}

// --- building a request -----------------------------------------------------
function samplingFields() {
  const fields = {};
  const seed = $("seed").value.trim();
  if (seed && seed !== "random") {
    if (!/^\d+$/.test(seed)) throw new Error(`seed must be a whole number or "random", not "${seed}"`);
    fields.seed = seed;
  }
  for (const input of document.querySelectorAll("#stages input")) {
    if (input.value !== "") fields[input.id] = input.value;
  }
  return fields;
}

function requireFile(id, what) {
  const file = $(id).files[0];
  if (!file) throw new Error(`choose ${what} first`);
  return file;
}

async function buildRequest() {
  const sampling = samplingFields();
  if (state.op === "generate") {
    const body = { prompt: $("prompt").value, negative_prompt: $("negative_prompt").value,
                   num_images: Number($("num_images").value || 1) };
    for (const [key, value] of Object.entries(sampling)) body[key] = Number(value);
    if (!body.prompt.trim()) throw new Error("type a prompt first");
    return { path: "/api/generate", options: { method: "POST", headers: { "Content-Type": "application/json" },
                                               body: JSON.stringify(body) } };
  }
  const form = new FormData();
  for (const [key, value] of Object.entries(sampling)) form.append(key, value);
  if (state.op === "variations") {
    form.append("image", requireFile("variation_image", "an image"));
    form.append("num_images", $("num_variations").value || "1");
  } else if (state.op === "interpolate") {
    form.append("image_a", requireFile("image_a", "the first image"));
    form.append("image_b", requireFile("image_b", "the second image"));
    form.append("num_frames", $("interp_frames").value || "5");
  } else if (state.op === "text-diff") {
    form.append("image", requireFile("diff_image", "an image"));
    form.append("from_caption", $("from_caption").value);
    form.append("to_caption", $("to_caption").value);
    form.append("num_frames", $("diff_frames").value || "5");
  } else if (state.op === "img2img") {
    form.append("image", requireFile("img2img_image", "an image"));
    form.append("prompt", $("img2img_prompt").value);
    form.append("strength", $("strength").value);
    form.append("num_images", $("img2img_count").value || "1");
  } else {
    form.append("image", requireFile("inpaint_image", "an image"));
    form.append("mask", await maskBlob(), "mask.png");
    form.append("prompt", $("inpaint_prompt").value);
    form.append("num_images", $("inpaint_count").value || "1");
  }
  return { path: `/api/${state.op}`, options: { method: "POST", body: form } };
}

// --- running a job ------------------------------------------------------------
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (state.job) return;
  clearOutput();
  let request;
  try { request = await buildRequest(); } catch (error) { showError(error.message); return; }
  setBusy(true);
  try {
    const job = await api(`${request.path}?wait=false`, request.options);
    state.job = job.job_id;
    track(job);
  } catch (error) {
    showError(error.message);
    setBusy(false);
  }
});

$("cancel").addEventListener("click", async () => {
  if (state.job) { try { await api(`/api/jobs/${state.job}`, { method: "DELETE" }); } catch (e) { /* gone */ } }
});

function track(job) {
  showProgress(job);
  if (job.status === "queued" || job.status === "running") {
    state.timer = setTimeout(async () => {
      try { track(await api(job.status_url)); } catch (error) { finish(); showError(error.message); }
    }, 200);
    return;
  }
  finish();
  if (job.status === "done") showResult(job.result); else showError(`${job.status}: ${job.error || ""}`);
}

function showProgress(job) {
  const bar = $("progress");
  bar.hidden = false;
  const p = job.progress;
  if (job.status === "queued") {
    $("status").textContent = `job ${job.job_id}: waiting, ${job.position} ahead`;
    bar.removeAttribute("value");
  } else if (job.status === "running") {
    $("status").textContent = p.total ? `job ${job.job_id}: ${p.stage} step ${p.step}/${p.total}`
                                      : `job ${job.job_id}: starting`;
    bar.value = p.total ? p.step / p.total : 0;
  } else {
    $("status").textContent = `job ${job.job_id}: ${job.status}`;
    bar.value = 1;
  }
}

function finish() {
  clearTimeout(state.timer);
  state.job = null;
  setBusy(false);
  loadQueue();
}

async function loadQueue() {
  try { showQueue((await api("/api/health")).queue); } catch (e) { /* ignore */ }
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("generate").textContent = busy ? "Working…" : "Generate";
  $("cancel").hidden = !busy;
}

// --- results --------------------------------------------------------------------
function showResult(result) {
  const gallery = $("gallery");
  for (const image of result.images) {
    const figure = document.createElement("figure");
    const src = `data:image/png;base64,${image.png_base64}`;
    const img = document.createElement("img");
    img.src = src;
    img.alt = image.label;
    const link = document.createElement("a");
    link.href = src;
    link.download = `unclip-seed${image.seed}-${image.index}.png`;
    link.textContent = "download";
    const caption = document.createElement("figcaption");
    caption.textContent = `${image.label} · seed ${image.seed} · `;
    caption.appendChild(link);
    figure.append(img, caption, reuseButtons(src, `unclip-seed${image.seed}-${image.index}.png`));
    gallery.appendChild(figure);
  }
  if (result.gif_base64) {
    const box = $("animation");
    box.hidden = false;
    box.innerHTML = "";
    const gif = document.createElement("img");
    gif.className = "gif";
    gif.src = `data:image/gif;base64,${result.gif_base64}`;
    gif.alt = "animation";
    const strip = document.createElement("img");
    strip.className = "strip";
    strip.src = `data:image/png;base64,${result.strip_png_base64}`;
    strip.alt = "frames";
    box.append(gif, strip);
  }
  $("command").textContent = result.command;
  $("command-box").hidden = false;
  $("status").textContent += ` in ${result.elapsed_s.toFixed(2)} s (seed ${result.seed})`;
}

// "use as": send a gallery image to an upload field (variations, interpolation A/B, text diff, edits)
const REUSE = [["vary", "variation_image", "variations"], ["A", "image_a", "interpolate"],
               ["B", "image_b", "interpolate"], ["edit", "diff_image", "text-diff"],
               ["img2img", "img2img_image", "img2img"], ["inpaint", "inpaint_image", "inpaint"]];

function reuseButtons(src, name) {
  const box = document.createElement("div");
  box.className = "reuse";
  box.append("use as: ");
  for (const [label, inputId, op] of REUSE) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.reuse = inputId;
    button.title = `use this image as the ${label === "A" || label === "B" ? "interpolation's " + label : op} input`;
    button.addEventListener("click", () => useImage(src, name, inputId, op));
    box.appendChild(button);
  }
  return box;
}

async function useImage(src, name, inputId, op) {
  const blob = await (await fetch(src)).blob();
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], name, { type: "image/png" }));
  const input = $(inputId);
  input.files = transfer.files;
  input.dispatchEvent(new Event("change"));
  document.querySelector(`.tabs button[data-op="${op}"]`).click();
}

$("copy-command").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("command").textContent));

function clearOutput() {
  $("gallery").innerHTML = "";
  $("animation").hidden = true;
  $("command-box").hidden = true;
  $("error").hidden = true;
  $("status").textContent = "";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

loadInfo();
