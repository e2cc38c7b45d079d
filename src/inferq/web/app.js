// The inferq web page: draw a digit for mnist, submit to any model, list recent jobs.
// Plain JS with no build step; no inline handlers, so a strict CSP can be used.
"use strict";

const KEY_STORE = "inferq.apiKey"; // sessionStorage: the key dies with the tab
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const $ = (id) => document.getElementById(id);

// ---- HTTP and problems

class Problem extends Error {
  // An RFC 9457 problem (or something shaped like one for network failures).
  constructor(status, body) {
    super(body.detail || body.title || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

// Every /v1 call goes through here, so the key header and the 401 handling live in one place.
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new Problem(0, { title: "Network error", detail: String(err.message || err) });
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : { detail: await response.text() };
  if (response.status === 401) showLogin(body);
  if (!response.ok) {
    throw new Problem(response.status, { title: response.statusText, ...body });
  }
  return body;
}

// Title, detail and the field errors, as text nodes (never innerHTML: details echo input).
function showProblem(el, err) {
  el.replaceChildren();
  el.hidden = !err;
  if (!err) return;
  const body = err instanceof Problem ? err.body : { title: "Error", detail: String(err) };
  const title = document.createElement("strong");
  title.textContent = body.title || "Error";
  el.append(title);
  // The detail of a 422 repeats the field errors listed below it.
  if (body.detail && !(body.errors && body.errors.length)) {
    el.append(document.createTextNode(`: ${body.detail}`));
  }
  if (body.errors && body.errors.length) {
    const list = document.createElement("ul");
    for (const e of body.errors) {
      const li = document.createElement("li");
      const field = document.createElement("code");
      field.textContent = e.field;
      li.append(field, document.createTextNode(` ${e.message}`));
      list.append(li);
    }
    el.append(list);
  }
}

// ---- API key ("login")

// Callbacks to run again once a key is entered (what failed with 401 on load).
let afterLogin = [];

function showLogin(problem) {
  const login = $("login");
  const hadKey = Boolean(apiKey());
  login.hidden = false;
  // A key that was sent and refused is worth saying so; a first visit is not an error.
  showProblem($("login-error"), hadKey ? new Problem(401, problem) : null);
  if (hadKey) sessionStorage.removeItem(KEY_STORE);
  $("signout").hidden = true;
  $("api-key").focus();
}

function initLogin() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    try {
      await api("/v1/models"); // check the key before hiding the form
    } catch (err) {
      if (!(err instanceof Problem && err.status === 401)) showProblem($("login-error"), err);
      return;
    }
    $("api-key").value = "";
    $("login").hidden = true;
    showProblem($("login-error"), null);
    $("signout").hidden = false;
    const pending = afterLogin;
    afterLogin = [];
    for (const fn of pending) fn();
  });
  $("signout").addEventListener("click", (event) => {
    event.preventDefault();
    sessionStorage.removeItem(KEY_STORE);
    location.reload(); // forget everything loaded with the key
  });
  $("signout").hidden = !apiKey();
}

// Run a loader now, and again after a sign-in if it failed for want of a key.
async function load(fn, errorEl) {
  try {
    await fn();
    showProblem(errorEl, null);
  } catch (err) {
    if (err instanceof Problem && err.status === 401) afterLogin.push(() => load(fn, errorEl));
    else showProblem(errorEl, err);
  }
}

// ---- following a job

// Resolve with the terminal job, calling onUpdate for each state seen on the way.
// SSE shows every transition, but EventSource cannot send an Authorization header, so
// with a key (or when the stream fails) we long-poll with fetch instead.
function follow(job, onUpdate) {
  onUpdate(job);
  if (TERMINAL.has(job.status)) return Promise.resolve(job);
  if (apiKey() || !window.EventSource) return longPoll(job, onUpdate);
  return new Promise((resolve) => {
    const source = new EventSource(`/v1/jobs/${encodeURIComponent(job.id)}/events`);
    let last = job;
    const onEvent = (event) => {
      last = JSON.parse(event.data);
      onUpdate(last);
      if (TERMINAL.has(last.status)) {
        source.close(); // else EventSource reconnects when the server ends the stream
        resolve(last);
      }
    };
    for (const status of ["queued", "running", ...TERMINAL]) {
      source.addEventListener(status, onEvent);
    }
    source.onerror = () => {
      source.close();
      resolve(longPoll(last, onUpdate));
    };
  });
}

async function longPoll(job, onUpdate) {
  while (!TERMINAL.has(job.status)) {
    job = await api(`/v1/jobs/${encodeURIComponent(job.id)}?wait=30`);
    onUpdate(job);
  }
  return job;
}

// Records each new status with the time since the job was created: "queued 0 ms" ...
function stepsRecorder(list) {
  list.replaceChildren();
  let last = null;
  return (job) => {
    if (job.status === last) return;
    last = job.status;
    const li = document.createElement("li");
    li.className = `status-${job.status}`;
    const stamp = { running: job.started_at, queued: job.created_at }[job.status]
      || job.finished_at;
    const ms = stamp ? Date.parse(stamp) - Date.parse(job.created_at) : NaN;
    li.textContent = Number.isFinite(ms) ? `${job.status} ${Math.max(0, ms)} ms` : job.status;
    list.append(li);
  };
}

function jobError(job) {
  const e = job.error || {};
  const detail = [e.type, e.message].filter(Boolean).join(": ");
  return new Problem(0, { title: `Job ${job.status}`, detail });
}

// ---- the drawing pad

const PEN_WIDTH = 20; // MNIST strokes are ~2 px of 28: about 20 px of 280
const AUTO_DELAY_MS = 700; // lets a second stroke (the bar of a 7) start before we submit

function initPad() {
  const canvas = $("pad");
  const ctx = canvas.getContext("2d");
  let drawing = false;
  let dirty = false;
  let autoTimer = null;
  let seq = 0; // only the latest recognition may update the display

  function clear() {
    ctx.fillStyle = "#fff"; // the PNG must be opaque: dark ink on white
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    dirty = false;
    $("digit").textContent = "–";
    $("draw-steps").replaceChildren();
    $("bars").replaceChildren();
    showProblem($("draw-error"), null);
  }

  // The canvas may be shown smaller than 280 px (phones): map CSS pixels to canvas pixels.
  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * (canvas.width / rect.width),
      (event.clientY - rect.top) * (canvas.height / rect.height)];
  }

  // Pointer events cover mouse, touch and pen alike.
  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return; // a right click opens the menu, it does not draw
    event.preventDefault();
    clearTimeout(autoTimer);
    canvas.setPointerCapture(event.pointerId);
    drawing = true;
    dirty = true;
    ctx.lineWidth = PEN_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = "#000";
    const [x, y] = point(event);
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.lineTo(x, y); // a tap leaves a dot
    ctx.stroke();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const [x, y] = point(event);
    ctx.lineTo(x, y);
    ctx.stroke();
  });
  const end = () => {
    if (!drawing) return;
    drawing = false;
    if ($("auto").checked) autoTimer = setTimeout(recognise, AUTO_DELAY_MS);
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  async function recognise() {
    clearTimeout(autoTimer);
    if (!dirty) {
      const nothing = { title: "Nothing drawn", detail: "draw a digit first" };
      showProblem($("draw-error"), new Problem(0, nothing));
      return;
    }
    const mine = ++seq;
    const current = () => mine === seq;
    showProblem($("draw-error"), null);
    $("digit").textContent = "…";
    const record = stepsRecorder($("draw-steps"));
    try {
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
      const form = new FormData();
      form.append("image", blob, "digit.png");
      const job = await api("/v1/models/mnist/jobs", { method: "POST", body: form });
      const done = await follow(job, (j) => current() && record(j));
      if (!current()) return;
      if (done.status !== "succeeded") throw jobError(done);
      $("digit").textContent = String(done.output.digit);
      drawBars(done.output.probabilities, done.output.digit);
      refreshJobs();
    } catch (err) {
      if (!current()) return;
      $("digit").textContent = "?";
      showProblem($("draw-error"), err);
    }
  }

  $("clear").addEventListener("click", clear);
  $("recognise").addEventListener("click", recognise);
  clear();
}

function drawBars(probabilities, best) {
  const bars = $("bars");
  bars.replaceChildren();
  probabilities.forEach((p, digit) => {
    const row = document.createElement("div");
    row.className = digit === best ? "bar best" : "bar";
    row.title = `${digit}: ${(p * 100).toFixed(1)} %`;
    const label = document.createElement("span");
    label.textContent = digit;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(p * 100).toFixed(1)}%`; // CSSOM, allowed by a strict CSP
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(p * 100).toFixed(1)}%`;
    row.append(label, track, value);
    bars.append(row);
  });
}

// ---- any model: a form from its schema

let models = [];

// A property's JSON type; Optional[X] is {"anyOf": [X, {"type": "null"}]}.
function propType(schema) {
  if (schema.type) return schema.type;
  const options = (schema.anyOf || []).filter((s) => s.type !== "null");
  return options.length === 1 ? propType(options[0]) : undefined;
}

function fieldFor(name, schema, required) {
  const wrap = document.createElement("div");
  wrap.className = "field";
  const id = `f-${name}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = `${schema.title || name}${required ? " *" : ""}`;
  const type = propType(schema);
  let input;
  if (schema["x-inferq-image"]) {
    input = document.createElement("input");
    input.type = "file";
    input.accept = "image/png,image/jpeg,image/webp,image/gif";
    input.dataset.kind = "file";
  } else if (type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = schema.default === true;
    input.dataset.kind = "boolean";
    label.className = "check";
  } else if (["string", "number", "integer"].includes(type)) {
    input = document.createElement("input");
    input.type = type === "string" ? "text" : "number";
    if (type === "integer") input.step = "1";
    if (type === "number") input.step = "any";
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
    if (schema.default !== undefined) input.placeholder = `default ${schema.default}`;
    input.dataset.kind = type;
  } else {
    // Objects, arrays, unions: the value as JSON.
    input = document.createElement("textarea");
    input.rows = 3;
    input.placeholder = "JSON";
    input.dataset.kind = "json";
  }
  input.id = id;
  input.name = name;
  input.required = required;
  // A checkbox sits inside its label, before the text; other inputs go below theirs.
  if (input.type === "checkbox") label.prepend(input);
  wrap.append(label);
  if (input.type !== "checkbox") wrap.append(input);
  if (schema.description) {
    const hint = document.createElement("small");
    hint.id = `${id}-hint`;
    hint.textContent = schema.description;
    input.setAttribute("aria-describedby", hint.id);
    wrap.append(hint);
  }
  return wrap;
}

function renderForm() {
  const model = models.find((m) => m.name === $("model").value);
  const fields = $("fields");
  fields.replaceChildren();
  if (!model) return;
  const online = model.workers_online ? "" : " (no worker online: jobs will wait)";
  $("model-description").textContent = (model.description || "") + online;
  const schema = model.input_schema || {};
  const required = new Set(schema.required || []);
  const props = Object.entries(schema.properties || {});
  if (props.length === 0) {
    // No properties to build a form from: the whole input as JSON.
    fields.append(fieldFor("__input__", { title: "Input (JSON object)" }, true));
    return;
  }
  for (const [name, prop] of props) fields.append(fieldFor(name, prop, required.has(name)));
}

// Multipart when there is a file to send (no base64 inflation); JSON otherwise, so
// numbers and booleans keep their types.
function buildBody() {
  const inputs = [...$("fields").querySelectorAll("[data-kind]")];
  const input = {};
  const form = new FormData();
  const hasFile = inputs.some((el) => el.dataset.kind === "file");
  for (const el of inputs) {
    const kind = el.dataset.kind;
    if (kind === "file") {
      if (el.files.length) form.append(el.name, el.files[0], el.files[0].name);
      continue;
    }
    if (kind === "boolean") {
      input[el.name] = el.checked;
      continue;
    }
    if (el.value.trim() === "") continue; // let the model's default apply
    let value = el.value;
    if (kind === "number" || kind === "integer") value = Number(value);
    if (kind === "json") {
      try {
        value = JSON.parse(value);
      } catch (err) {
        const field = el.name === "__input__" ? "input" : `input.${el.name}`;
        const errors = [{ field, message: `not JSON: ${err.message}` }];
        throw new Problem(0, { title: "Invalid input", errors });
      }
    }
    if (el.name === "__input__") return jsonBody(value);
    input[el.name] = value;
  }
  if (!hasFile) return jsonBody(input);
  for (const [name, value] of Object.entries(input)) {
    // Form parts are text; the server parses objects and arrays from JSON text.
    form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
  }
  return { method: "POST", body: form };
}

function jsonBody(input) {
  return {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ input }),
  };
}

function initUpload() {
  $("model").addEventListener("change", renderForm);
  $("job-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const output = $("output");
    const button = $("submit-job");
    output.hidden = true;
    showProblem($("upload-error"), null);
    const record = stepsRecorder($("upload-steps"));
    button.disabled = true;
    try {
      const model = encodeURIComponent($("model").value);
      const job = await api(`/v1/models/${model}/jobs`, buildBody());
      const done = await follow(job, record);
      if (done.status !== "succeeded") throw jobError(done);
      output.textContent = JSON.stringify(done.output, null, 2);
      output.hidden = false;
      refreshJobs();
    } catch (err) {
      showProblem($("upload-error"), err);
    } finally {
      button.disabled = false;
    }
  });
}

async function loadModels() {
  const body = await api("/v1/models");
  models = body.models;
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  if (models.some((m) => m.name === previous)) select.value = previous;
  renderForm();
}

// ---- recent jobs

// One line per job: the digit for mnist, else the start of the output or the error.
function summary(job) {
  const out = job.output;
  if (out && typeof out === "object" && "digit" in out) return `digit ${out.digit}`;
  if (out !== null && out !== undefined) {
    const text = JSON.stringify(out);
    return text.length > 60 ? `${text.slice(0, 60)}…` : text;
  }
  if (job.error) return `${job.error.type}: ${job.error.message}`;
  return "";
}

async function loadJobs() {
  const page = await api("/v1/jobs?limit=10");
  const list = $("jobs");
  list.replaceChildren();
  if (!page.jobs.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "No jobs yet.";
    list.append(li);
  }
  for (const job of page.jobs) {
    const li = document.createElement("li");
    const details = document.createElement("details");
    const head = document.createElement("summary");
    const status = document.createElement("span");
    status.className = `badge status-${job.status}`;
    status.textContent = job.status;
    const when = new Date(job.created_at).toLocaleTimeString();
    const parts = [job.model, when, summary(job)].filter(Boolean);
    head.append(status, document.createTextNode(` ${parts.join(" · ")}`));
    const pre = document.createElement("pre");
    pre.className = "output";
    pre.textContent = JSON.stringify(job, null, 2);
    details.append(head, pre);
    li.append(details);
    list.append(li);
  }
}

function refreshJobs() {
  return load(loadJobs, $("recent-error"));
}

// ---- start

document.addEventListener("DOMContentLoaded", () => {
  initLogin();
  initPad();
  initUpload();
  $("refresh").addEventListener("click", refreshJobs);
  load(loadModels, $("upload-error"));
  refreshJobs();
});
