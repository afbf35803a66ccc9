// Webcam: the camera publishes each JPEG frame, retained, to webcam/<cam>/frame over
// MQTT. It is binary, so a WebSocket subscriber gets it as {"$base64": …} (a third
// bigger than the JPEG) and shows it as a data: URL. Frames that arrive while one is
// still being decoded replace each other: a slow screen skips frames, it never queues them.

import { connect } from "./connect.js";

const sb = connect();
const img = document.getElementById("frame");
const status = document.getElementById("status");
let sub = null;
let frames = 0;
let latest = null;
let decoding = false;

function watch(cam) {
  sub?.unsubscribe().catch(() => {});
  frames = 0;
  sub = sb.subscribe(`webcam/${cam}/frame`);
  sub.on("message", (m) => {
    if (typeof m.data?.$base64 !== "string") return;
    latest = m.data.$base64;
    frames += 1;
    show();
  });
}

async function show() {
  if (decoding || !latest) return;
  decoding = true;
  const b64 = latest;
  latest = null;
  img.src = `data:image/jpeg;base64,${b64}`;
  await img.decode().catch(() => {});
  status.textContent = `${frames} frames · ${Math.round((b64.length * 3) / 4 / 1024)} KB each`;
  img.dataset.frames = String(frames);
  decoding = false;
  show();
}

document.getElementById("pick").addEventListener("submit", (e) => {
  e.preventDefault();
  watch(document.getElementById("cam").value.trim());
});
watch("cam1");
