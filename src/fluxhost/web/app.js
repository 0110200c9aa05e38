// The playground: a form rendered from Tool/Detail, Generate followed live on the socket, and a
// gallery of the project's tasks from Task/List. Every call goes through api.js, as any client's.

import { Api, ApiError, follow, forgetCredentials, saveCredentials, savedCredentials } from "./api.js";

const $ = (selector) => document.querySelector(selector);
const STATUS_WORDS = {
  task_queue: "Queued",
  task_accept: "Preparing",
  task_preprocess_start: "Preparing",
  task_preprocess_end: "Preparing",
  task_assign: "Starting",
  task_start: "Generating",
  task_output: "Generating",
  task_end: "Saving",
  task_postprocess_start: "Saving",
  task_postprocess_end: "Done",
  task_cancel: "Stopped",
  task_error: "Failed",
};
const RUNNING = new Set(["task_accept", "task_preprocess_start", "task_preprocess_end", "task_assign", "task_start",
  "task_output", "task_end", "task_postprocess_start"]);
// Frames that carry a log, not a step of the lifecycle: the progress line keeps what it says.
const EVENT_ONLY = new Set(["task_output", "task_output_full", "task_error_full"]);

let api = null;
let tools = [];
let current = null; // the task being generated: { taskid, token, socket, status }

function say(text, kind = "info") {
  const message = $("#message");
  message.textContent = text;
  message.dataset.kind = kind;
}

function failed(error) {
  say(error instanceof ApiError ? error.message : `Something went wrong: ${error}`, "error");
}

function capitalized(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function statusWord(task) {
  if (task.status === "task_postprocess_end" && task.pexit !== "0") return "Failed";
  if (/moderated/i.test(task.debugerror || "")) return "Moderated";
  return STATUS_WORDS[task.status] || task.status;
}

// --- credentials ---------------------------------------------------------------------------

function useCredentials(credentials) {
  api = credentials?.apiKey ? new Api(credentials) : null;
  $("#workspace").hidden = !api;
  if (api) loadTools().then(refreshGallery);
}

$("#credentials").addEventListener("submit", async (event) => {
  event.preventDefault();
  const credentials = { apiKey: $("#api-key").value.trim(), apiSecret: $("#api-secret").value.trim() };
  try {
    await new Api(credentials).tools();  // a refused key or secret is neither kept nor used
  } catch (error) {
    failed(error);
    return;
  }
  saveCredentials(credentials.apiKey, credentials.apiSecret);
  say("Key saved in this browser.");
  useCredentials(credentials);
});

$("#forget").addEventListener("click", () => {
  forgetCredentials();
  $("#api-key").value = "";
  $("#api-secret").value = "";
  $("#gallery").replaceChildren();
  say("Key and secret forgotten by this browser.");
  useCredentials(null);
});

// --- the form, from Tool/Detail ------------------------------------------------------------

async function loadTools() {
  try {
    tools = await api.tools();
  } catch (error) {
    failed(error);
    return;
  }
  const picker = $("#model");
  picker.replaceChildren(...tools.map((tool) => element("option", {
    value: `${tool.slugowner}/${tool.slugproject}`, text: `${tool.title} (${tool.slugowner}/${tool.slugproject})`,
  })));
  await renderInputs();
}

function inputControl(item) {
  const id = `input-${item.id}`;
  const described = item.description ? `${id}-about` : null;
  const common = { id, name: item.id, "aria-describedby": described, required: item.required === true };
  let control;
  if (item.type === "textarea") {
    control = element("textarea", { ...common, rows: 3 });
    control.value = "";
    control.placeholder = item.example || item.default || "";
  } else if (item.type === "select") {
    control = element("select", common, ...(item.options || []).map((option) => element("option", {
      value: option.value,
      text: option.width ? `${option.label} (${option.width}×${option.height})` : option.label,
    })));
    control.value = item.default ?? "";
  } else if (item.type === "range") {
    control = element("input", { ...common, type: "range", min: item.min, max: item.max, step: item.step });
    control.value = item.default;
  } else if (item.type === "fileinput") {
    control = element("input", { ...common, type: "file", accept: "image/png,image/jpeg,image/webp", required: false });
  } else if (item.id === "seed") {  // empty: a new random seed each time (the server's), shown with the picture
    control = element("input", { ...common, type: "text", inputmode: "numeric", placeholder: "random" });
  } else {
    control = element("input", { ...common, type: "text" });
    control.value = item.default ?? "";
  }
  const label = element("label", { for: id, text: capitalized(item.label || item.id) });
  const shown = item.type === "range" ? element("output", { for: id, text: control.value }) : null;
  if (shown) control.addEventListener("input", () => { shown.textContent = control.value; });
  const about = described ? element("small", { id: described, text: item.description }) : null;
  return element("div", { class: `field field-${item.type}` }, label, shown, control, about);
}

async function renderInputs() {
  const [owner, project] = $("#model").value.split("/");
  try {
    const tool = await api.tool(owner, project);
    const items = tool.parameters.flatMap((group) => group.items).filter((item) => item.available !== false);
    $("#inputs").replaceChildren(...items.map(inputControl));
  } catch (error) {
    failed(error);
  }
}

$("#model").addEventListener("change", renderInputs);

function formInputs() {
  const fields = [...$("#inputs").querySelectorAll("[name]")];
  const file = fields.find((field) => field.type === "file" && field.files.length);
  const inputs = file ? new FormData() : {};
  for (const field of fields) {
    if (field.type === "file") {
      if (field.files.length) inputs.append(field.name, field.files[0]);
    } else if (field.value !== "") {
      if (file) inputs.append(field.name, field.value);
      else inputs[field.name] = field.value;
    }
  }
  return inputs;
}

// --- Generate, followed on the socket ------------------------------------------------------

function showProgress(text, percentage = null) {
  $("#progress-area").hidden = false;
  const bar = $("#progress");
  if (percentage === null) bar.removeAttribute("value");
  else bar.value = percentage;
  $("#progress-text").textContent = text;
}

async function generate(slug, inputs) {
  if (current) return;
  say("");
  $("#result").hidden = true;
  $("#generate").disabled = true;
  try {
    const run = await api.run(slug, inputs);
    current = { taskid: run.taskid, token: run.socketaccesstoken, status: "task_queue" };
    $("#stop").hidden = false;
    showProgress("Queued", 0);
    current.socket = follow(run.socketaccesstoken, onFrame);
    current.socket.addEventListener("close", () => { if (current?.taskid === run.taskid) finish(run.taskid); });
  } catch (error) {
    failed(error);
    $("#generate").disabled = false;
  }
}

function onFrame(frame) {
  if (!current || frame.result === false) return;
  current.status = frame.type;
  const progress = frame.message;
  if (frame.type === "task_output" && progress?.type === "progressGenerate") {
    showProgress(`Step ${progress.stepCurrent} of ${progress.stepTotal} · ${progress.speed} ${progress.speedType} · ` +
      `${progress.remainingTime} left`, Number(progress.percentage));
    if (frame.preview) showImage(frame.preview, "The image so far", "Preview");
  } else if (!EVENT_ONLY.has(frame.type)) {
    showProgress(STATUS_WORDS[frame.type] || frame.type, frame.type === "task_postprocess_end" ? 100 : null);
  }
  if (frame.type === "task_postprocess_end" || frame.type === "task_cancel") {
    current.socket.close();
  }
}

function showImage(url, alt, caption) {
  const image = $("#result-image");
  image.src = url;
  image.alt = alt;
  $("#result-caption").textContent = caption;
  $("#result").hidden = false;
}

async function finish(taskid) {
  const ended = current;
  current = null;
  $("#stop").hidden = true;
  $("#generate").disabled = false;
  try {
    const task = await api.task(taskid);
    if (task.status === "task_cancel") {
      showProgress("Stopped", 0);
      say(`Task ${task.id} was stopped.`);
    } else if (task.pexit === "0" && task.outputs.length) {
      showProgress("Done", 100);
      const image = $("#result-image");
      image.onload = () => {
        $("#result-caption").textContent =
          `Seed ${task.parameters.seed} · ${image.naturalWidth}×${image.naturalHeight} · task ${task.id}`;
      };
      showImage(task.outputs[0].url, task.parameters.prompt, `Seed ${task.parameters.seed} · task ${task.id}`);
      const notes = (task.debugoutput || "").split("\n").filter((line) => line.startsWith("Note: "));
      if (notes.length) say(notes.join(" "));
    } else if (ended && RUNNING.has(task.status)) {
      say("The connection to the server was lost; the task goes on: see the gallery.", "error");
    } else {
      showProgress(statusWord(task), 0);
      say(`Task ${task.id} failed: ${task.debugerror || "no reason given"}`, "error");
    }
  } catch (error) {
    failed(error);
  }
  refreshGallery();
}

$("#run-form").addEventListener("submit", (event) => {
  event.preventDefault();
  generate($("#model").value, formInputs());
});

$("#stop").addEventListener("click", async () => {
  if (!current) return;
  try {
    await (current.status === "task_queue" ? api.cancel(current.taskid) : api.kill(current.taskid));
  } catch (error) {
    failed(error);
  }
});

// --- the gallery, from Task/List -----------------------------------------------------------

async function refreshGallery() {
  if (!api) return;
  try {
    const tasks = await api.tasks();
    $("#gallery").replaceChildren(...tasks.map(galleryItem));
  } catch (error) {
    failed(error);
  }
}

function galleryItem(task) {
  const prompt = task.parameters?.prompt || "";
  const output = task.outputs?.[0];
  const picture = output && /^image\//.test(output.contenttype)
    ? element("img", { src: output.url, alt: prompt, loading: "lazy" })
    : element("span", { class: "placeholder", "aria-hidden": "true", text: statusWord(task) });
  const open = element("button", { type: "button", class: "tile", "aria-label": `Task ${task.id}: ${prompt}` },
    picture,
    element("span", { class: "prompt", text: prompt }),
    element("span", { class: `status status-${statusWord(task).toLowerCase()}`, text: statusWord(task) }));
  open.addEventListener("click", () => openTask(task.id));
  return element("li", { "data-taskid": task.id, "data-status": task.status }, open);
}

async function openTask(taskid) {
  let task;
  try {
    task = await api.task(taskid);
  } catch (error) {
    failed(error);
    return;
  }
  const dialog = $("#task-dialog");
  const parameters = task.parameters || {};
  const output = task.outputs?.[0];
  const facts = [
    ["Model", `${task.modelslugowner}/${task.modelslugproject}`],
    ["Status", statusWord(task)],
    ...Object.entries(parameters).filter(([name]) => name !== "prompt").map(([name, value]) => [name, String(value)]),
  ];
  if (task.debugerror) facts.push(["Reason", task.debugerror]);
  for (const line of (task.debugoutput || "").split("\n")) {
    if (line.startsWith("Note: ")) facts.push(["Note", line.slice(6)]);
  }
  const actions = [];
  const act = (label, work) => {
    const button = element("button", { type: "button", text: label });
    button.addEventListener("click", async () => {
      try {
        await work();
        dialog.close();
        refreshGallery();
      } catch (error) {
        failed(error);
        dialog.close();
      }
    });
    actions.push(button);
  };
  act("Re-run with the same seed", () => generate(`${task.modelslugowner}/${task.modelslugproject}`, parameters));
  if (output) {
    actions.push(element("a", { href: output.url, download: `fluxhost-${task.id}-${output.name}`, class: "button",
      text: "Download" }));
  }
  if (task.status === "task_queue") act("Cancel", () => api.cancel(task.id));
  if (RUNNING.has(task.status)) act("Kill", () => api.kill(task.id));
  if (!RUNNING.has(task.status) && task.status !== "task_queue" && task.outputs?.length) {
    act("Delete files", () => confirm(`Delete the files of task ${task.id}? Its record stays.`)
      && api.deleteFiles(task.id));
  }
  const close = element("button", { type: "button", text: "Close" });
  close.addEventListener("click", () => dialog.close());
  dialog.replaceChildren(
    element("h2", { text: `Task ${task.id}` }),
    output ? element("img", { src: output.url, alt: parameters.prompt || "" }) : null,
    element("p", { class: "dialog-prompt", text: parameters.prompt || "" }),
    element("dl", {}, ...facts.flatMap(([name, value]) => [element("dt", { text: name }), element("dd", { text: value })])),
    element("div", { class: "actions" }, ...actions, close),
  );
  dialog.showModal();
}

$("#refresh").addEventListener("click", refreshGallery);

// --- start ---------------------------------------------------------------------------------

const saved = savedCredentials();
if (saved) {
  $("#api-key").value = saved.apiKey;
  $("#api-secret").value = saved.apiSecret || "";
}
useCredentials(saved);
