// The dsvl chat page. A client of the public API and nothing else: GET v1/models for the model's
// name and family, POST v1/chat/completions with `stream: true` for answers (server-sent events),
// the API key (when the server has one) in this tab's sessionStorage only. No third-party code.

import { escapeHtml, renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"),
  settings: $("settings"),
  settingsToggle: $("settings-toggle"),
  newChat: $("new-chat"),
  system: $("system"),
  temperature: $("temperature"),
  maxTokens: $("max-tokens"),
  format: $("format"),
  schemaFields: $("schema-fields"),
  schema: $("schema"),
  schemaError: $("schema-error"),
  schemaName: $("schema-name"),
  keyForm: $("key-form"),
  apiKey: $("api-key"),
  log: $("log"),
  empty: $("empty"),
  status: $("status"),
  composer: $("composer"),
  pending: $("pending"),
  file: $("file"),
  attach: $("attach"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  drop: $("drop"),
};

const KEY_STORE = "dsvl.apiKey";
const state = {
  apiKey: sessionStorage.getItem(KEY_STORE) || "",
  modelId: null,
  history: [], // {role, text, images: [{url, name}]} as sent to the server
  pending: [], // images (and PDFs, pdf: true) attached to the next message: {url, name, pdf}
  controller: null, // AbortController of the running request
};

// ---------------------------------------------------------------- the server

function headers(extra = {}) {
  const h = { ...extra };
  if (state.apiKey) h.Authorization = `Bearer ${state.apiKey}`;
  return h;
}

/** An OpenAI error body's message, or a fallback naming the status. */
async function errorMessage(res) {
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) {
      const p = body.error.param ? ` (${body.error.param})` : "";
      return `${body.error.message}${p}`;
    }
  } catch (_) {
    // not JSON: fall through
  }
  return `HTTP ${res.status} ${res.statusText}`.trim();
}

/** What to tell the user about a failed response. */
async function describeFailure(res) {
  const msg = await errorMessage(res);
  switch (res.status) {
    case 401:
      showKeyForm();
      return "This server needs an API key: enter it above, then send again.";
    case 429:
      return `Busy (HTTP 429), send again shortly: ${msg}`;
    case 503:
      waitUntilLoaded();
      return `Not ready (HTTP 503), send again in a moment: ${msg}`;
    default:
      return `The server refused the request: ${msg}`;
  }
}

function showStatus(text, kind = "error") {
  ui.status.textContent = text;
  ui.status.className = `status ${kind}`;
  ui.status.hidden = !text;
}

function showKeyForm() {
  ui.keyForm.hidden = false;
  ui.apiKey.focus();
}

let loadingPoll = null;
function waitUntilLoaded() {
  if (loadingPoll) return;
  ui.model.textContent = "loading the model…";
  loadingPoll = setInterval(async () => {
    try {
      const res = await fetch("health");
      if (res.ok) {
        clearInterval(loadingPoll);
        loadingPoll = null;
        showStatus("");
        loadModel();
      }
    } catch (_) {
      // server not reachable yet: keep polling
    }
  }, 1000);
}

async function loadModel() {
  let res;
  try {
    res = await fetch("v1/models", { headers: headers() });
  } catch (_) {
    ui.model.textContent = "server not reachable";
    return;
  }
  if (res.status === 401) {
    ui.model.textContent = "API key needed";
    showKeyForm();
    return;
  }
  if (res.status === 503) {
    waitUntilLoaded();
    return;
  }
  if (!res.ok) {
    ui.model.textContent = `model unknown (${await errorMessage(res)})`;
    return;
  }
  const card = (await res.json()).data?.[0];
  if (!card) return;
  state.modelId = card.id;
  const family = card.meta?.family;
  ui.model.textContent = family ? `${card.id} · ${family}` : card.id;
  ui.model.title = `context ${card.meta?.context_length ?? "?"} tokens, up to ${card.meta?.max_images_per_request ?? "?"} images per request`;
}

// ---------------------------------------------------------------- images

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

const isPdf = (f) => f.type === "application/pdf";

async function attach(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/") || isPdf(f));
  if (images.length < [...files].length) showStatus("Only images and PDFs can be attached.");
  for (const f of images) {
    try {
      state.pending.push({ url: await readAsDataUrl(f), name: f.name || "pasted image", pdf: isPdf(f) });
    } catch (e) {
      showStatus(`Cannot read ${f.name}: ${e}`);
    }
  }
  renderPending();
}

/** A thumbnail: the image itself, or for a PDF a labelled tile (the server renders its pages). */
function thumbnail(img, alt) {
  if (img.pdf) {
    const tile = document.createElement("span");
    tile.className = "thumb pdf";
    tile.textContent = `PDF ${img.name}`;
    tile.title = alt;
    return tile;
  }
  const el = document.createElement("img");
  el.src = img.url;
  el.alt = alt;
  el.className = "thumb";
  return el;
}

function renderPending() {
  ui.pending.replaceChildren(
    ...state.pending.map((img, i) => {
      const li = document.createElement("li");
      const thumb = thumbnail(img, `Attached: ${img.name}`);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove ${img.name}`);
      remove.addEventListener("click", () => {
        state.pending.splice(i, 1);
        renderPending();
        ui.prompt.focus();
      });
      li.append(thumb, remove);
      return li;
    }),
  );
}

// ---------------------------------------------------------------- conversation view

function messageElement(role) {
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  const who = document.createElement("h2");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Model";
  li.append(who);
  ui.log.append(li);
  ui.empty.hidden = true;
  return li;
}

function addUserMessage(turn) {
  const li = messageElement("user");
  if (turn.images.length) {
    const imgs = document.createElement("div");
    imgs.className = "thumbs";
    for (const img of turn.images) imgs.append(thumbnail(img, `Attached ${img.pdf ? "PDF" : "image"}: ${img.name}`));
    li.append(imgs);
  }
  const text = document.createElement("p");
  text.className = "text";
  text.textContent = turn.text;
  li.append(text);
  scrollToEnd();
  return li;
}

/** Whether the reader is at the end of the conversation (then a growing answer is followed). */
function nearEnd() {
  return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 120;
}

/** The end of the page: the last message just above the (sticky) message box. */
function scrollToEnd() {
  window.scrollTo(0, document.documentElement.scrollHeight);
}

/**
 * An answer being streamed: its element, raw text and timings. `format`: the request's
 * `response_format` (null: free text, rendered as markdown; else JSON, pretty-printed at the end).
 */
class Answer {
  constructor(format = null) {
    this.format = format;
    this.el = messageElement("assistant");
    if (format) this.el.dataset.format = format.type;
    this.el.setAttribute("aria-busy", "true");
    this.body = document.createElement("div");
    this.body.className = "answer";
    this.meta = document.createElement("p");
    this.meta.className = "meta";
    this.el.append(this.body, this.meta);
    this.raw = "";
    this.started = performance.now();
    this.firstToken = null;
    this.pendingRender = false;
    this.ended = null; // {finish, stopped} once the stream is over
    this.pretty = null; // the pretty-printed JSON of a structured answer that parses
  }

  append(text) {
    if (!text) return;
    if (this.firstToken === null) this.firstToken = performance.now();
    this.raw += text;
    if (!this.pendingRender) {
      this.pendingRender = true;
      requestAnimationFrame(() => {
        this.pendingRender = false;
        this.render();
      });
    }
  }

  render() {
    const follow = nearEnd();
    if (this.format) this.renderJson();
    else this.body.innerHTML = renderMarkdown(this.raw);
    this.el.dataset.raw = this.raw;
    if (follow) scrollToEnd();
  }

  /**
   * A structured answer: the text as it streams, then, once it has ended, the JSON
   * pretty-printed, or (an answer cut by max tokens or stopped) the raw text with a note.
   */
  renderJson() {
    const pre = document.createElement("pre");
    pre.className = "json";
    const code = document.createElement("code");
    pre.append(code);
    this.body.replaceChildren(pre);
    code.textContent = this.raw;
    if (!this.ended) return;
    try {
      this.pretty = JSON.stringify(JSON.parse(this.raw), null, 2);
      code.textContent = this.pretty;
      this.el.dataset.json = "valid";
    } catch (_) {
      this.el.dataset.json = "invalid";
      const { finish, stopped } = this.ended;
      const note = document.createElement("p");
      note.className = "note";
      note.textContent = `${stopped ? "stopped" : finish === "length" ? "cut at max tokens" : "not complete"}: not valid JSON`;
      this.body.append(note);
    }
  }

  /** The stream ended (`finish`: the finish reason, `usage` when sent, `stopped` by the user). */
  finish({ finish, usage, stopped }) {
    const ended = performance.now();
    this.ended = { finish, stopped };
    this.render();
    this.el.removeAttribute("aria-busy");
    this.el.dataset.finish = stopped ? "stopped" : finish || "";
    const parts = [];
    if (this.format) parts.push(this.format.type === "json_object" ? "JSON object" : "JSON Schema");
    if (this.firstToken !== null) {
      const ttft = (this.firstToken - this.started) / 1000;
      parts.push(`first token ${ttft.toFixed(2)} s`);
      this.el.dataset.ttft = ttft.toFixed(3);
      const n = usage?.completion_tokens;
      const secs = (ended - this.firstToken) / 1000;
      if (n > 1 && secs > 0) {
        const rate = (n - 1) / secs;
        parts.push(`${rate.toFixed(1)} tokens/s`);
        this.el.dataset.tokensPerSecond = rate.toFixed(2);
      }
    }
    if (usage) parts.push(`${usage.completion_tokens} tokens`);
    if (stopped) parts.push("stopped");
    else if (finish === "length") parts.push("cut at max tokens");
    this.meta.textContent = parts.join(" · ");
    this.addCopyButton();
  }

  addCopyButton() {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy this answer");
    copy.addEventListener("click", async () => {
      copy.textContent = (await copyText(this.pretty ?? this.raw)) ? "Copied" : "Copy failed";
      setTimeout(() => (copy.textContent = "Copy"), 1500);
    });
    this.meta.append(" ", copy);
  }

  failed(message) {
    this.el.removeAttribute("aria-busy");
    this.el.classList.add("failed");
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = message;
    this.el.append(p);
  }
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_) {
    // no clipboard API (plain http to another machine): the selection fallback
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

// ---------------------------------------------------------------- grounding (DeepSeek-VL2)

/**
 * Draws `grounding` (the server's `delta.grounding`: objects with boxes whose `pixels` are
 * inclusive corners in the request's last image, of `image_size` [width, height]) over that
 * image, as absolutely placed boxes sized in percent, so they follow the image when it scales.
 * `follow`: the reader was at the end, so the page scrolls there once the image is laid out.
 */
function drawGrounding(answer, grounding, image, follow) {
  const size = grounding.image_size;
  const boxes = [];
  for (const obj of grounding.objects || []) {
    for (const b of obj.boxes || []) if (b.pixels) boxes.push({ label: obj.label, pixels: b.pixels });
  }
  const figure = document.createElement("figure");
  figure.className = "grounding";
  if (image && size && boxes.length) {
    const [w, h] = size;
    const frame = document.createElement("div");
    frame.className = "frame";
    const img = document.createElement("img");
    if (follow) img.addEventListener("load", scrollToEnd, { once: true });
    img.src = image.url;
    const labels = [...new Set(boxes.map((b) => b.label || "unlabelled"))];
    img.alt = `${image.name} with ${boxes.length} box${boxes.length > 1 ? "es" : ""}: ${labels.join(", ")}`;
    frame.append(img);
    boxes.forEach((b, i) => {
      const [x1, y1, x2, y2] = b.pixels;
      const box = document.createElement("div");
      box.className = `box c${i % 6}`;
      box.dataset.pixels = b.pixels.join(",");
      box.style.left = `${(100 * x1) / w}%`;
      box.style.top = `${(100 * y1) / h}%`;
      box.style.width = `${(100 * Math.max(x2 - x1, 1)) / w}%`;
      box.style.height = `${(100 * Math.max(y2 - y1, 1)) / h}%`;
      box.setAttribute("aria-hidden", "true");
      const label = document.createElement("span");
      label.className = "box-label";
      label.textContent = b.label || `box ${i + 1}`;
      box.append(label);
      frame.append(box);
    });
    figure.append(frame);
  }
  const caption = document.createElement("figcaption");
  const items = boxes.map((b) => `${b.label || "unlabelled"}: ${b.pixels[0]}, ${b.pixels[1]} to ${b.pixels[2]}, ${b.pixels[3]}`);
  caption.textContent = items.length ? `Boxes (pixels): ${items.join("; ")}` : "No complete boxes in this answer.";
  figure.append(caption);
  if (grounding.problems?.length) {
    const p = document.createElement("p");
    p.className = "problems";
    p.textContent = `Grounding problems: ${grounding.problems.map((x) => (typeof x === "string" ? x : JSON.stringify(x))).join("; ")}`;
    figure.append(p);
  }
  answer.el.insertBefore(figure, answer.meta);
}

// ---------------------------------------------------------------- structured output

/**
 * The `response_format` the settings ask for: `{format}` (null when off), or `{error}` when the
 * schema box does not hold a JSON object (then nothing is sent).
 */
function responseFormat() {
  const kind = ui.format.value;
  if (kind === "json_object") return { format: { type: "json_object" } };
  if (kind !== "json_schema") return { format: null };
  const text = ui.schema.value.trim();
  if (!text) return { error: "Enter a JSON Schema, or turn structured output off." };
  let schema;
  try {
    schema = JSON.parse(text);
  } catch (e) {
    return { error: `The schema is not valid JSON: ${e.message}` };
  }
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
    return { error: "The schema must be a JSON object ({…})." };
  }
  const name = ui.schemaName.value.trim();
  const jsonSchema = name ? { name, schema, strict: true } : { schema, strict: true };
  return { format: { type: "json_schema", json_schema: jsonSchema } };
}

function showSchemaError(message) {
  ui.schemaError.textContent = message;
  ui.schemaError.hidden = !message;
  if (message) ui.schema.setAttribute("aria-invalid", "true");
  else ui.schema.removeAttribute("aria-invalid");
}

// ---------------------------------------------------------------- sending

function requestBody(format) {
  const messages = [];
  const system = ui.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const t of state.history) {
    if (t.role === "user" && t.images.length) {
      const parts = t.images.map((i) =>
        i.pdf
          ? { type: "file", file: { filename: i.name, file_data: i.url } }
          : { type: "image_url", image_url: { url: i.url } },
      );
      parts.push({ type: "text", text: t.text });
      messages.push({ role: "user", content: parts });
    } else {
      messages.push({ role: t.role, content: t.text });
    }
  }
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  if (state.modelId) body.model = state.modelId;
  const temperature = Number.parseFloat(ui.temperature.value);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  const maxTokens = Number.parseInt(ui.maxTokens.value, 10);
  if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_tokens = maxTokens;
  if (format) body.response_format = format;
  return body;
}

/** The last image of the conversation: the one the server's grounding pixels refer to. */
function lastImage() {
  for (let i = state.history.length - 1; i >= 0; i--) {
    const imgs = state.history[i].images || [];
    // A PDF's last page is drawn by the server only: no boxes over it here.
    if (imgs.length) return imgs[imgs.length - 1].pdf ? null : imgs[imgs.length - 1];
  }
  return null;
}

function setBusy(busy) {
  const hadFocus = document.activeElement === (busy ? ui.send : ui.stop);
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.send.disabled = busy;
  // A keyboard user who pressed Send lands on Stop (the button in its place), and back.
  if (hadFocus) (busy ? ui.stop : ui.send).focus();
}

async function send() {
  if (state.controller) return;
  const text = ui.prompt.value;
  if (!text.trim() && !state.pending.length) {
    ui.prompt.focus();
    return;
  }
  const structured = responseFormat();
  if (structured.error) {
    // Nothing is sent: the message stays in the composer, the schema box says what is wrong.
    setSettingsOpen(true);
    showSchemaError(structured.error);
    ui.schema.focus();
    return;
  }
  showSchemaError("");
  showStatus("");
  const turn = { role: "user", text, images: state.pending };
  state.history.push(turn);
  const userEl = addUserMessage(turn);
  state.pending = [];
  renderPending();
  ui.prompt.value = "";

  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const answer = new Answer(structured.format);
  let res;
  try {
    res = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(requestBody(structured.format)),
      signal: controller.signal,
    });
  } catch (e) {
    restore(turn, userEl, answer);
    if (e.name !== "AbortError") showStatus(`Cannot reach the server: ${e.message}`);
    return done();
  }
  if (!res.ok) {
    const message = await describeFailure(res);
    restore(turn, userEl, answer);
    showStatus(message);
    return done();
  }
  const result = await readStream(res, answer, controller.signal);
  if (result.error) {
    answer.failed(result.error);
    showStatus(`The request failed: ${result.error}`);
  }
  const follow = nearEnd();
  if (result.grounding) drawGrounding(answer, result.grounding, lastImage(), follow);
  answer.finish(result);
  if (follow) scrollToEnd();
  state.history.push({ role: "assistant", text: answer.raw, images: [] });
  done();
}

/** A request refused before any answer: the message goes back into the composer. */
function restore(turn, userEl, answer) {
  state.history.pop();
  userEl.remove();
  answer.el.remove();
  ui.prompt.value = turn.text;
  state.pending = turn.images.concat(state.pending);
  renderPending();
  ui.empty.hidden = state.history.length > 0;
}

function done() {
  state.controller = null;
  setBusy(false);
  ui.prompt.focus();
}

/** Reads the SSE stream into `answer`; resolves with the finish reason, usage, grounding, error. */
async function readStream(res, answer, signal) {
  const out = { finish: null, usage: null, grounding: null, error: null, stopped: false };
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const handle = (event) => {
    const data = event
      .split("\n")
      .filter((l) => l.startsWith("data:"))
      .map((l) => l.slice(5).replace(/^ /, ""))
      .join("\n");
    if (!data || data === "[DONE]") return;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch (_) {
      out.error = "the server sent a malformed event";
      return;
    }
    if (chunk.error) {
      out.error = chunk.error.message || "unknown error";
      return;
    }
    if (chunk.usage) out.usage = chunk.usage;
    const choice = chunk.choices?.[0];
    if (!choice) return;
    if (choice.delta?.content) answer.append(choice.delta.content);
    if (choice.delta?.grounding) out.grounding = choice.delta.grounding;
    if (choice.finish_reason) out.finish = choice.finish_reason;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handle(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
    if (buffer.trim()) handle(buffer);
  } catch (e) {
    if (signal.aborted) out.stopped = true;
    else out.error = `the connection broke: ${e.message}`;
  }
  return out;
}

function stop() {
  if (state.controller) state.controller.abort();
}

function newChat() {
  stop();
  state.history = [];
  ui.log.replaceChildren();
  ui.empty.hidden = false;
  showStatus("");
  ui.prompt.focus();
}

// ---------------------------------------------------------------- wiring

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.controller) stop();
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", newChat);
ui.attach.addEventListener("click", () => ui.file.click());
ui.file.addEventListener("change", async () => {
  await attach(ui.file.files);
  ui.file.value = "";
  ui.prompt.focus();
});
function setSettingsOpen(open) {
  ui.settings.hidden = !open;
  ui.settingsToggle.setAttribute("aria-expanded", String(open));
}
ui.settingsToggle.addEventListener("click", () => {
  const open = ui.settings.hidden;
  setSettingsOpen(open);
  if (open) ui.system.focus();
});
const showSchemaFields = () => (ui.schemaFields.hidden = ui.format.value !== "json_schema");
showSchemaFields(); // a reload may keep the choice
ui.format.addEventListener("change", () => {
  showSchemaFields();
  showSchemaError("");
});
ui.schema.addEventListener("input", () => {
  // Once a problem is shown, it follows the edits (and goes when the schema parses).
  if (!ui.schemaError.hidden) showSchemaError(responseFormat().error || "");
});
ui.keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  state.apiKey = ui.apiKey.value.trim();
  sessionStorage.setItem(KEY_STORE, state.apiKey);
  ui.apiKey.value = "";
  ui.keyForm.hidden = true;
  showStatus("");
  loadModel();
  ui.prompt.focus();
});
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
  if (files.length) {
    e.preventDefault();
    attach(files);
  }
});
let dragDepth = 0;
const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
window.addEventListener("dragenter", (e) => {
  if (!hasFiles(e)) return;
  dragDepth += 1;
  ui.drop.hidden = false;
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) ui.drop.hidden = true;
});
window.addEventListener("dragover", (e) => {
  if (hasFiles(e)) e.preventDefault();
});
window.addEventListener("drop", (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  dragDepth = 0;
  ui.drop.hidden = true;
  attach(e.dataTransfer.files);
});

// For the tests and for anyone curious in the console: the renderer and the escaper.
window.dsvl = { renderMarkdown, escapeHtml };
loadModel();
