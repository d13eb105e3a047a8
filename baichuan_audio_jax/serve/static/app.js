// Voice chat with the speech server: record, send, show the transcript and the answer's text as
// it streams, play the answer's audio as it arrives, keep the conversation. Plain JS, no build.
"use strict";

const $ = (id) => document.getElementById(id);
const statusEl = $("status"), logEl = $("log"), recordBtn = $("record"), sendBtn = $("send");
const resetBtn = $("reset"), speakBox = $("speak"), form = $("typed"), input = $("message");

let ws = null, sampleRate = 24000, busy = false;
let recorder = null;          // {ctx, stream, node, sink, chunks}
let player = null, playAt = 0; // AudioContext for the answer's audio, next start time
let current = null;           // the assistant entry being written

function setStatus(text) { statusEl.textContent = text; }

function entry(role, label) {
  const li = document.createElement("li");
  li.className = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = label;
  const text = document.createElement("span");
  text.className = "text";
  li.append(who, text);
  logEl.append(li);
  li.scrollIntoView({block: "end"});
  return li;
}

function enable(on) {
  recordBtn.disabled = !on && !recorder;
  sendBtn.disabled = !on;
  resetBtn.disabled = !on;
}

function wavBlob(samples, rate) {            // Float32Array -> 16-bit mono WAV
  const buf = new ArrayBuffer(44 + samples.length * 2), v = new DataView(buf);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + samples.length * 2, true); str(8, "WAVEfmt ");
  v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true);
  v.setUint16(34, 16, true); str(36, "data"); v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buf], {type: "audio/wav"});
}

function concat(chunks) {
  const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) { out.set(c, o); o += c.length; }
  return out;
}

function addAudio(li, blob) {
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.src = URL.createObjectURL(blob);
  li.append(audio);
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${proto}://${location.host}/v1/audio/chat`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => setStatus("Connected");
  ws.onclose = () => { setStatus("Disconnected: reload the page to reconnect"); enable(false); };
  ws.onmessage = (ev) => {
    if (ev.data instanceof ArrayBuffer) { onAudio(ev.data); return; }
    const msg = JSON.parse(ev.data);
    if (msg.type === "ready") {
      sampleRate = msg.sample_rate;
      speakBox.checked = msg.speech_output;
      speakBox.disabled = !msg.speech_output;
      recordBtn.hidden = !msg.speech_input;
      enable(true);
      setStatus("Ready: press Record and speak, or type a message");
    } else if (msg.type === "transcript") {
      const pending = logEl.querySelector("li.user[data-pending='true']");
      if (pending) {
        pending.querySelector(".text").textContent = msg.text || "(nothing recognised)";
        pending.dataset.pending = "false";
      }
    } else if (msg.type === "text") {
      answer().querySelector(".text").textContent += msg.delta;
    } else if (msg.type === "done") {
      const li = answer();
      li.querySelector(".text").textContent = msg.text;
      if (li._chunks.length) addAudio(li, wavBlob(concat(li._chunks), sampleRate));
      li.dataset.done = "true";
      li.dataset.audioSeconds = String(msg.audio_seconds);
      current = null; busy = false; enable(true);
      setStatus(`Answered (${msg.finish_reason}); ${msg.audio_seconds.toFixed(2)} s of speech`);
    } else if (msg.type === "error") {
      entry("error", "Error").querySelector(".text").textContent = msg.message;
      current = null; busy = false; enable(true);
      setStatus("Ready");
    } else if (msg.type === "reset") {
      logEl.replaceChildren();
      setStatus("New conversation");
    }
  };
}

function answer() {
  if (!current) {
    current = entry("assistant", "Assistant");
    current._chunks = [];
    current.dataset.done = "false";
    current.dataset.audioChunks = "0";
  }
  return current;
}

function onAudio(data) {
  const pcm = new Int16Array(data), f = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
  const li = answer();
  li._chunks.push(f);
  li.dataset.audioChunks = String(li._chunks.length);
  ensurePlayer();
  const buf = player.createBuffer(1, f.length, sampleRate);
  buf.copyToChannel(f, 0);
  const src = player.createBufferSource();
  src.buffer = buf;
  src.connect(player.destination);
  playAt = Math.max(playAt, player.currentTime);
  src.start(playAt);
  playAt += buf.duration;
}

function ensurePlayer() {   // created (or resumed) in a click, so browsers let it play
  if (!player) player = new AudioContext({sampleRate});
  if (player.state === "suspended") player.resume();
}

function sendTurn(label, text) {
  busy = true; enable(false);
  const li = entry("user", label);
  li.querySelector(".text").textContent = text;
  return li;
}

async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const sink = ctx.createGain();
  sink.gain.value = 0;
  const chunks = [];
  node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  source.connect(node); node.connect(sink); sink.connect(ctx.destination);
  recorder = {ctx, stream, node, source, chunks};
  recordBtn.textContent = "Stop";
  recordBtn.setAttribute("aria-pressed", "true");
  setStatus("Recording… press Stop when done");
}

async function stopRecording() {
  const r = recorder;
  recorder = null;
  r.source.disconnect(); r.node.disconnect();
  r.stream.getTracks().forEach((t) => t.stop());
  const samples = concat(r.chunks), rate = r.ctx.sampleRate;
  await r.ctx.close();
  recordBtn.textContent = "Record";
  recordBtn.setAttribute("aria-pressed", "false");
  if (samples.length < rate / 10) { setStatus("Too short: hold Record a little longer"); enable(true); return; }
  const blob = wavBlob(samples, rate);
  const li = sendTurn("You (spoken)", "…");
  li.dataset.pending = "true";
  addAudio(li, blob);
  ws.send(await blob.arrayBuffer());
  setStatus(`Sent ${(samples.length / rate).toFixed(1)} s of speech; answering…`);
}

recordBtn.addEventListener("click", async () => {
  ensurePlayer();
  try {
    if (recorder) await stopRecording();
    else if (!busy) await startRecording();
  } catch (e) {
    recorder = null;
    setStatus(`Microphone unavailable: ${e.message}`);
  }
});

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || busy) return;
  ensurePlayer();
  sendTurn("You", text);
  ws.send(JSON.stringify({type: "text", text}));
  input.value = "";
  setStatus("Answering…");
});

speakBox.addEventListener("change", () => ws.send(JSON.stringify({type: "config", speech_output: speakBox.checked})));
resetBtn.addEventListener("click", () => ws.send(JSON.stringify({type: "reset"})));

connect();
