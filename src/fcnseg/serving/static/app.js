// fcnseg page: upload an image, draw the returned index mask over it, list the classes present.
// Plain JavaScript, no libraries; every request goes to the server that served this page.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, photo: null, mask: null, maskUrl: null, photoUrl: null, busy: false };

function rgb(color) { return `rgb(${color[0]}, ${color[1]}, ${color[2]})`; }
function percent(share) { return share >= 0.001 ? `${(share * 100).toFixed(1)}%` : "<0.1%"; }
function megabytes(bytes) { return `${(bytes / 1048576).toFixed(0)} MB`; }

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function swatch(color) {
  const span = document.createElement("span");
  span.className = "swatch";
  span.style.background = rgb(color);
  return span;
}

async function loadModel() {
  try {
    const response = await fetch("model");
    const model = await response.json();
    if (!response.ok) throw new Error(model.error || response.statusText);
    state.model = model;
    const norm = model.normalization;
    $("model-name").textContent = model.model;
    $("model-summary").textContent =
      `${model.num_classes} classes · ${norm.kind === "caffe" ? "Caffe" : "ImageNet"} normalisation`;
    const kwargs = Object.entries(model.model_kwargs).filter(([, v]) => v !== null).map(([k, v]) => `${k}=${v}`).join(", ");
    $("model-detail").textContent = `${model.model}${model.source ? ` from ${model.source}` : ""}${kwargs ? ` (${kwargs})` : ""}`;
    $("model-runtime").textContent = model.description;
    $("model-norm").textContent = norm.description;
    $("model-trained").textContent = trainedOn(model.trained_on);
    $("model-limits").textContent =
      `uploads up to ${megabytes(model.limits.max_upload_bytes)}, images up to ` +
      `${(model.limits.max_pixels / 1e6).toFixed(0)} megapixels; ${model.limits.threads} inference ` +
      `thread(s), ${model.limits.waiting} waiting`;
    $("class-count").textContent = `Classes (${model.num_classes})`;
    const list = $("classes");
    list.replaceChildren();
    for (const c of model.classes) {
      const li = document.createElement("li");
      const id = document.createElement("span");
      id.className = "id";
      id.textContent = c.id;
      li.append(swatch(c.color), id, document.createTextNode(c.name));
      list.append(li);
    }
    document.title = `fcnseg · ${model.model}`;
  } catch (err) {
    setStatus(`cannot read the model description: ${err.message}`, true);
  }
}

// What the model was trained on, as its file records it: a name, or an object whose "dataset" or
// "name" comes first, then its other fields.
function trainedOn(value) {
  if (!value) return "not recorded in this model file";
  if (typeof value === "string") return value;
  const head = value.dataset || value.name || "";
  const rest = Object.entries(value).filter(([k, v]) => k !== "dataset" && k !== "name" && v !== null && typeof v !== "object")
    .map(([k, v]) => `${k} ${v}`).join(", ");
  return [head, rest].filter(Boolean).join(" · ") || "not recorded in this model file";
}

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot display this image"));
    img.src = url;
  });
}

// The background class (class 0 when it is called "background") is left untinted unless asked,
// so the photo stays visible around the objects.
function backgroundColor() {
  const first = state.model && state.model.classes[0];
  return first && /^_?background_?$/i.test(first.name) ? first.color : null;
}

function maskLayer(mask, hide) {
  const layer = document.createElement("canvas");
  layer.width = mask.naturalWidth;
  layer.height = mask.naturalHeight;
  const ctx = layer.getContext("2d");
  ctx.drawImage(mask, 0, 0);
  if (hide) {
    const pixels = ctx.getImageData(0, 0, layer.width, layer.height);
    const d = pixels.data;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] === hide[0] && d[i + 1] === hide[1] && d[i + 2] === hide[2]) d[i + 3] = 0;
    }
    ctx.putImageData(pixels, 0, 0);
  }
  return layer;
}

function draw() {
  const canvas = $("overlay");
  const mask = state.mask;
  if (!mask) return;
  const opacity = Number($("opacity").value) / 100;
  $("opacity-value").textContent = `${Math.round(opacity * 100)}%`;
  canvas.width = mask.naturalWidth;
  canvas.height = mask.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  let hide = null;
  if (state.photo) {
    ctx.drawImage(state.photo, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = opacity;
    hide = $("tint-background").checked ? null : backgroundColor();
  }
  ctx.drawImage(maskLayer(mask, hide), 0, 0);
  ctx.globalAlpha = 1;
}

// Forget the previous result, so a failed upload never leaves another image's overlay, legend or
// download on the page next to its error.
const LEGEND_HINT = "Segment an image to see which classes it holds and their share of the pixels.";
function clearResult() {
  state.mask = null;
  if (state.maskUrl) URL.revokeObjectURL(state.maskUrl);
  state.maskUrl = null;
  const canvas = $("overlay");
  canvas.width = 0;
  canvas.height = 0;
  canvas.parentElement.classList.remove("filled");
  const hint = document.createElement("li");
  hint.className = "muted";
  hint.textContent = LEGEND_HINT;
  $("legend").replaceChildren(hint);
  $("timing").textContent = "";
  const link = $("download");
  link.removeAttribute("href");
  link.classList.add("disabled");
  link.setAttribute("aria-disabled", "true");
}

function showLegend(result) {
  const list = $("legend");
  list.replaceChildren();
  for (const c of result.classes) {
    const li = document.createElement("li");
    li.dataset.classId = c.id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(0.5, c.share * 100)}%`;
    fill.style.background = rgb(c.color);
    bar.append(fill);
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = percent(c.share);
    share.title = `${c.pixels.toLocaleString()} pixels`;
    li.append(swatch(c.color), name, bar, share);
    list.append(li);
  }
}

async function segment(file) {
  if (!file || state.busy) return;
  const limits = state.model ? state.model.limits : null;
  if (limits && file.size > limits.max_upload_bytes) {
    setStatus(`${file.name} is ${megabytes(file.size)}; this server takes up to ${megabytes(limits.max_upload_bytes)}`, true);
    return;
  }
  state.busy = true;
  document.body.dataset.state = "busy";
  $("overlay").dataset.ready = "false";
  clearResult();
  setStatus(`segmenting ${file.name}…`);
  const stem = (file.name || "image").replace(/\.[^.]+$/, "") || "image";
  const small = (w) => w < 480;
  try {
    if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
    state.photoUrl = URL.createObjectURL(file);
    const photoFrame = $("photo").parentElement;
    try {
      state.photo = await loadImage(state.photoUrl);
      $("photo").src = state.photoUrl;
      photoFrame.classList.add("filled");
      photoFrame.classList.toggle("small", small(state.photo.naturalWidth));
      $("photo-size").textContent = `${state.photo.naturalWidth} × ${state.photo.naturalHeight}`;
    } catch (err) {
      state.photo = null;  // e.g. TIFF: the server reads it, this browser cannot show it
      photoFrame.classList.remove("filled");
      $("photo-size").textContent = "(this browser cannot display the format)";
    }
    const started = performance.now();
    const response = await fetch("predict?format=json&mask=png", {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    const result = await response.json();
    if (!response.ok) throw new Error(result.error || `${response.status} ${response.statusText}`);
    const roundTrip = performance.now() - started;
    state.maskUrl = URL.createObjectURL(new Blob([base64Bytes(result.mask_png)], { type: "image/png" }));
    state.mask = await loadImage(state.maskUrl);
    const frame = $("overlay").parentElement;
    frame.classList.add("filled");
    frame.classList.toggle("small", small(result.width));
    draw();
    showLegend(result);
    $("timing").textContent = `model ${result.inference_ms.toFixed(0)} ms · round trip ${roundTrip.toFixed(0)} ms`;
    const link = $("download");
    link.href = state.maskUrl;
    link.download = `${stem}_mask.png`;
    link.classList.remove("disabled");
    link.removeAttribute("aria-disabled");
    setStatus(`${file.name}: ${result.width} × ${result.height} pixels, ${result.classes.length} of ` +
              `${state.model ? state.model.num_classes : "?"} classes present`);
    $("overlay").dataset.ready = "true";
    document.body.dataset.state = "done";
  } catch (err) {
    setStatus(err.message, true);
    document.body.dataset.state = "error";
  } finally {
    state.busy = false;
  }
}

function setup() {
  loadModel();
  $("file").addEventListener("change", (e) => segment(e.target.files[0]));
  $("opacity").addEventListener("input", draw);
  $("tint-background").addEventListener("change", draw);
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    window.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    window.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  window.addEventListener("drop", (e) => segment(e.dataTransfer.files[0]));
  window.addEventListener("paste", (e) => {
    const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) segment(file);
  });
}

document.addEventListener("DOMContentLoaded", setup);
