// lcmvideo live's page: the camera's frames to the server over a WebSocket, the stylized ones
// back onto the canvas. At most `window` frames are in flight: the next is grabbed (the camera's
// newest picture) only when one is answered, so nothing queues and latency cannot grow. Where the
// network's part of a round trip is small against the model's, one is (protocol.in_flight).
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token") || "";
const state = {  // the page's counters; the tests read them
  connected: false, hello: null, params: null, sent: 0, frames: 0, dropped: 0, skipped: 0, errors: 0,
  last: null, latencies: [], shown: [], messages: [], recording: false, paused: false,
  transit: [], work: [], inFlight: 2,
};
window.lcmvideo = state;

const inflight = new Map();  // id -> performance.now() when its picture was grabbed
const grab = document.createElement("canvas");
const out = $("output");
let ws = null, nextId = 1, credit = 2, size = [64, 64], watching = false, retry = null;

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  state.messages.push(text);
  if (state.messages.length > 50) state.messages.shift();
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : ""));
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { state.connected = true; status("connected"); };
  ws.onclose = (e) => { state.connected = false; status(`disconnected (${e.code}${e.reason ? ": " + e.reason : ""})`, true); };
  ws.onmessage = (e) => (typeof e.data === "string" ? onText(JSON.parse(e.data)) : onFrame(e.data));
}

function answered(id) {
  if (id !== undefined && id !== null) inflight.delete(id);
  pump();
}

function onText(m) {
  switch (m.type) {
    case "hello":
      state.hello = m; size = m.size; credit = m.window; watching = m.watch;
      grab.width = size[0]; grab.height = size[1];
      fill(m.params, m.prompts);
      if (watching) { $("camera-box").hidden = true; status("watching the server's source"); } else startCamera();
      break;
    case "settings": if (m.window) credit = m.window; fill(m.params); status("settings applied"); break;
    case "dropped": state.dropped++; answered(m.id); break;
    case "skipped": state.skipped++; answered(m.id); break;
    case "error": state.errors++; status(m.message, true); answered(m.id); break;
    case "recording": setRecording(true); status(`recording to ${m.path}`); break;
    case "recorded": setRecording(false); status(m.path ? `recorded ${m.path}` : "nothing recorded"); break;
    case "snapshot": status(`snapshot ${m.path}`); break;
    default: break;
  }
}

async function onFrame(buf) {
  const n = new DataView(buf).getUint32(0);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const t0 = head.id !== null ? inflight.get(head.id) : undefined;
  answered(head.id);  // the next frame goes out while this one is drawn
  const bitmap = await createImageBitmap(new Blob([new Uint8Array(buf, 4 + n)], { type: "image/jpeg" }));
  out.width = bitmap.width; out.height = bitmap.height;
  out.getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  const now = performance.now();
  state.frames++; state.last = head;
  state.shown.push(now);
  state.latencies.push(t0 !== undefined ? now - t0 : head.latency_ms);
  if (t0 !== undefined) { state.transit.push(now - t0 - head.latency_ms); state.work.push(head.work_ms); }
  for (const a of [state.shown, state.latencies, state.transit, state.work]) if (a.length > 300) a.shift();
  showStats(now);
}

function percentile(values, p) {
  if (!values.length) return 0;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}

function showStats(now) {
  const recent = state.shown.filter((t) => now - t < 2000);
  const fps = recent.length > 1 ? (recent.length - 1) / ((recent[recent.length - 1] - recent[0]) / 1000) : 0;
  const lat = state.latencies.slice(-100);
  $("stats").textContent = `${fps.toFixed(1)} fps · latency ${percentile(lat, 0.5).toFixed(0)} ms ` +
    `(p95 ${percentile(lat, 0.95).toFixed(0)}) · dropped ${state.dropped}` +
    (state.last ? ` · ${state.last.prompt.slice(0, 40)}` : "");
}

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    status("This browser gives the camera only to https:// or localhost pages: reach the server through an SSH " +
           "tunnel (ssh -L PORT:127.0.0.1:PORT host) or start it with --tls-cert/--tls-key.", true);
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    $("camera").srcObject = stream;
    await $("camera").play();
  } catch (e) {
    status(`camera: ${e.name}: ${e.message}`, true);
    return;
  }
  setInterval(expire, 1000);
  pump();
}

function expire() {  // a frame never answered (a lost message) must not hold its place for ever
  const now = performance.now();
  for (const [id, t] of inflight) if (now - t > 10000) inflight.delete(id);
  pump();
}

function median(values) { return percentile(values, 0.5); }

function inFlight() {  // protocol.in_flight's rule
  if (credit <= 2 && state.transit.length >= 10 && state.work.length >= 10) {
    return median(state.transit.slice(-20)) <= 0.25 * median(state.work.slice(-20)) ? 1 : credit;
  }
  return credit;
}

function pump() {
  if (watching || !ws || ws.readyState !== WebSocket.OPEN || state.paused) return;
  state.inFlight = inFlight();
  while (inflight.size < state.inFlight) if (!send()) break;
}

function send() {
  const v = $("camera");
  if (!v.videoWidth) {  // no picture yet: look again soon
    if (!retry) retry = setTimeout(() => { retry = null; pump(); }, 50);
    return false;
  }
  const [w, h] = size;  // the middle of the picture at the model's aspect ratio, as --fit crop
  const s = Math.min(v.videoWidth / w, v.videoHeight / h);
  grab.getContext("2d").drawImage(v, (v.videoWidth - w * s) / 2, (v.videoHeight - h * s) / 2, w * s, h * s, 0, 0, w, h);
  const id = nextId;
  nextId = nextId >= 0xffffffff ? 1 : nextId + 1;
  inflight.set(id, performance.now());
  grab.toBlob(async (blob) => {
    if (!blob || ws.readyState !== WebSocket.OPEN) { inflight.delete(id); return; }
    const body = new Uint8Array(await blob.arrayBuffer());
    const msg = new Uint8Array(4 + body.length);
    new DataView(msg.buffer).setUint32(0, id);
    msg.set(body, 4);
    ws.send(msg);
    state.sent++;
  }, "image/jpeg", 0.9);
  return true;
}

function fill(params, prompts) {
  state.params = params;
  if (prompts) {
    const list = $("prompt-list"), sel = $("keyframes");
    list.replaceChildren(...prompts.map((p) => Object.assign(document.createElement("option"), { value: p })));
    sel.replaceChildren(...prompts.map((p) => Object.assign(document.createElement("option"), { value: p, textContent: p.slice(0, 60) })));
    $("keyframes-box").hidden = prompts.length < 2;
  }
  if (document.activeElement !== $("prompt")) $("prompt").value = params.prompt;
  $("keyframes").value = params.prompt;
  $("strength").value = params.strength;
  $("strength-shown").textContent = Number(params.strength).toFixed(2);
  $("steps").value = params.steps;
  $("seed").value = params.seed;
  $("similarity").value = params.similarity === null ? "" : params.similarity;
  state.paused = params.paused;
  $("pause").textContent = params.paused ? "Resume" : "Pause";
  setRecording(params.recording);
}

function setRecording(on) {
  state.recording = on;
  $("record").textContent = on ? "Stop recording" : "Record";
  $("record").classList.toggle("on", on);
}

function message(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function settings(changes) { message({ type: "settings", ...changes }); }

$("controls").addEventListener("submit", (e) => {
  e.preventDefault();
  const sim = $("similarity").value.trim();
  settings({
    prompt: $("prompt").value, strength: Number($("strength").value), steps: Number($("steps").value),
    seed: Number($("seed").value), similarity: sim === "" ? null : Number(sim),
  });
});
$("keyframes").addEventListener("change", () => settings({ prompt: $("keyframes").value }));
$("strength").addEventListener("input", () => { $("strength-shown").textContent = Number($("strength").value).toFixed(2); });
$("strength").addEventListener("change", () => settings({ strength: Number($("strength").value) }));
$("pause").addEventListener("click", () => { message({ type: "pause", on: !state.paused }); state.paused = !state.paused; $("pause").textContent = state.paused ? "Resume" : "Pause"; pump(); });
$("record").addEventListener("click", () => message({ type: "record", on: !state.recording }));
$("snapshot").addEventListener("click", () => message({ type: "snapshot" }));
document.addEventListener("keydown", (e) => {
  if (e.target.closest && e.target.closest("input, select, textarea, button")) return;
  if (e.key === "p" && state.hello) {
    const prompts = state.hello.prompts, i = prompts.indexOf(state.params.prompt);
    settings({ prompt: prompts[(i + 1) % prompts.length] });
  } else if (e.key === " ") { e.preventDefault(); $("pause").click(); }
  else if (e.key === "s") $("snapshot").click();
});

connect();
