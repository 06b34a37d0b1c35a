// Chromify's page: send the chosen photo to POST colorize, show the answer over the original with a slider.
"use strict";

const $ = (id) => document.getElementById(id);
const fileInput = $("file"), drop = $("drop"), statusLine = $("status"), viewer = $("viewer");
const compare = $("compare"), after = $("after"), original = $("original"), result = $("result");
const handle = $("handle"), slider = $("slider"), download = $("download"), format = $("format"), side = $("side");
let limits = { max_upload_bytes: Infinity, max_pixels: Infinity };
let urls = [];
let current = 0;  // only the latest photo's answer is shown
let pending = null;  // the request for the photo shown now: a newer photo cancels it

function say(text, kind) {
  statusLine.textContent = text;
  statusLine.className = "status" + (kind ? " " + kind : "");
}

// Three significant digits in the units the server's messages use (20 MiB, not "20 MB" for 20,971,520 bytes).
function size(bytes) {
  const mib = bytes >= 1048576;
  return Number((bytes / (mib ? 1048576 : 1024)).toPrecision(3)) + (mib ? " MiB" : " KiB");
}
function megapixels(pixels) { return Number((pixels / 1e6).toPrecision(3)) + " megapixels"; }

function setSplit(percent) {
  // The colorized layer shows to the right of the handle, the original to its left.
  after.style.clipPath = "inset(0 0 0 " + percent + "%)";
  handle.style.left = percent + "%";
}

async function loadLimits() {
  try {
    const res = await fetch("healthz");
    if (res.ok) {
      limits = await res.json();
      $("limits").textContent = "JPEG, PNG, WebP, TIFF or BMP; up to " + size(limits.max_upload_bytes) +
        " and " + megapixels(limits.max_pixels);
    }
  } catch (err) { /* the page still works; the server checks the limits anyway */ }
}

async function colorize(file) {
  if (!file) return;
  if (file.size > limits.max_upload_bytes) {
    say(file.name + " is " + size(file.size) + ", over the limit of " + size(limits.max_upload_bytes) + ".", "error");
    return;
  }
  const mine = ++current;
  if (pending) pending.abort();  // the server stops waiting on a photo nobody will see
  pending = new AbortController();
  urls.forEach((u) => URL.revokeObjectURL(u));
  urls = [URL.createObjectURL(file)];
  viewer.hidden = true;
  result.removeAttribute("src");
  original.classList.remove("original-gray");
  originalFailed = false;
  original.src = urls[0];
  say("Colorizing " + file.name + " …", "busy");
  const body = new FormData();
  body.append("file", file);
  body.append("format", format.value);
  const t0 = performance.now();
  let res;
  try {
    res = await fetch("colorize", { method: "POST", body, signal: pending.signal });
  } catch (err) {
    if (mine !== current) return;
    say("The server could not be reached: " + err.message, "error");
    return;
  }
  if (mine !== current) return;
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (err) { /* not JSON */ }
    say("Not colorized (" + res.status + "): " + detail, "error");
    return;
  }
  let blob;
  try {
    blob = await res.blob();
  } catch (err) {  // cancelled by a newer photo while the answer came in, or the connection dropped
    if (mine === current) say("The answer did not arrive whole: " + err.message, "error");
    return;
  }
  if (mine !== current) return;
  const url = URL.createObjectURL(blob);
  urls.push(url);
  result.src = url;
  const stem = file.name.replace(/\.[^.]*$/, "") || "photo";
  download.href = url;
  download.download = stem + "-colorized." + (blob.type === "image/jpeg" ? "jpg" : "png");
  await result.decode().catch(() => {});
  if (mine !== current) return;  // another photo was chosen meanwhile: its own answer will be shown
  showGrayBefore();
  viewer.hidden = false;
  say("Done in " + ((performance.now() - t0) / 1000).toFixed(1) + " s: " + result.naturalWidth + " × " +
      result.naturalHeight + " px. Drag the slider to compare.");
}

// A format the browser cannot show (TIFF, say): the colorized photo in gray is the same picture's "before".
let originalFailed = false;
original.addEventListener("error", () => { originalFailed = true; showGrayBefore(); });
function showGrayBefore() {
  if (originalFailed && result.src && original.src !== result.src) {
    original.src = result.src;
    original.classList.add("original-gray");
  }
}

fileInput.addEventListener("change", () => {
  colorize(fileInput.files[0]);
  fileInput.value = "";  // choosing the same file again still counts
});
slider.addEventListener("input", () => setSplit(slider.value));
side.addEventListener("change", () => compare.classList.toggle("side", side.checked));
["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
// Drops anywhere on the page count, and never make the browser navigate away to the file.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) colorize(event.dataTransfer.files[0]);
});

setSplit(slider.value);
loadLimits();
