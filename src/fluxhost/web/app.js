// The playground: a form rendered from Tool/Detail, Generate (one image or a batch) followed live
// on the socket, and a gallery of the project's tasks from Task/List, searched and paged. Every call
// goes through api.js, as any client's.

import { Api, follow, forgetCredentials, saveCredentials, savedCredentials } from "./api.js";
import { $, element, failed, say } from "./dom.js";
import { batchSize, fillForm, formInputs, putImage, renderForm, takesImage, withInput } from "./form.js";
import { RUNNING, STATUS_WORDS, statusWord } from "./statuses.js";
import { openTask } from "./task-dialog.js";

// Frames that carry a log, not a step of the lifecycle: the progress line keeps what it says.
const EVENT_ONLY = new Set(["task_output", "task_output_full", "task_error_full"]);
const PAGE = 24;

let api = null;
let tools = [];
// The Runs being generated: { runs: [{ taskid, socket, status, percentage, slot, ended, settled, batch }], submitting }
let batch = null;

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
  $("#model").replaceChildren(...tools.map((tool) => element("option", {
    value: `${tool.slugowner}/${tool.slugproject}`, text: `${tool.title} (${tool.slugowner}/${tool.slugproject})`,
  })));
  await renderInputs();
}

function toolOf(slug) {
  return tools.find((tool) => `${tool.slugowner}/${tool.slugproject}` === slug);
}

async function renderInputs() {
  const [owner, project] = $("#model").value.split("/");
  try {
    renderForm(await api.tool(owner, project));
  } catch (error) {
    failed(error);
  }
}

$("#model").addEventListener("change", renderInputs);

// Show ``slug`` in the form (false when this server does not serve it).
async function chooseModel(slug) {
  if (!toolOf(slug)) return false;
  $("#model").value = slug;
  await renderInputs();
  return true;
}

// --- Generate, followed on the socket ------------------------------------------------------

function showProgress(text, percentage = null) {
  $("#progress-area").hidden = false;
  const bar = $("#progress");
  if (percentage === null) bar.removeAttribute("value");
  else bar.value = percentage;
  $("#progress-text").textContent = text;
}

function given(inputs, name) {
  return inputs instanceof FormData ? inputs.get(name) : inputs[name];
}

// ``count`` Runs of ``slug``: new random seeds, or seed, seed+1... when ``inputs`` give one.
async function generate(slug, inputs, count = 1) {
  if (batch) return;
  say("");
  $("#generate").disabled = true;
  $("#results").replaceChildren();
  const own = { runs: [], submitting: true };
  batch = own;
  const seed = given(inputs, "seed");
  try {
    for (let number = 0; number < count; number++) {
      const seedOf = seed === null || seed === undefined || seed === "" ? undefined : String(Number(seed) + number);
      const answer = await api.run(slug, count > 1 ? withInput(inputs, "seed", seedOf) : inputs);
      startFollowing(own, answer);
    }
  } catch (error) {
    failed(error);
  }
  own.submitting = false;
  if (!own.runs.length) {
    batch = null;
    $("#generate").disabled = false;
    return;
  }
  endIfSettled(own);
}

function startFollowing(own, answer) {
  const slot = element("li", { class: "result", "data-taskid": answer.taskid },
    element("span", { class: "placeholder", text: "Queued" }));
  $("#results").append(slot);
  const run = { taskid: answer.taskid, status: "task_queue", percentage: 0, slot, ended: false, settled: false,
    batch: own };
  own.runs.push(run);
  $("#stop").hidden = false;
  showBatchProgress(run, "Queued");
  run.socket = follow(answer.socketaccesstoken, (frame) => onFrame(run, frame));
  run.socket.addEventListener("close", () => finish(run));
}

// The progress line: the run's own news, with which image of how many when there are several.
function showBatchProgress(run, text) {
  const { runs } = run.batch;
  const percentage = runs.reduce((sum, each) => sum + (each.ended ? 100 : each.percentage), 0) / runs.length;
  const which = runs.length > 1 ? ` · image ${runs.indexOf(run) + 1} of ${runs.length}` : "";
  showProgress(text + which, text === "Preparing" || text === "Starting" ? null : percentage);
}

function onFrame(run, frame) {
  if (run.ended || frame.result === false) return;
  run.status = frame.type;
  const progress = frame.message;
  if (frame.type === "task_output" && progress?.type === "progressGenerate") {
    run.percentage = Number(progress.percentage);
    showBatchProgress(run, `Step ${progress.stepCurrent} of ${progress.stepTotal} · ${progress.speed} ` +
      `${progress.speedType} · ${progress.remainingTime} left`);
    if (frame.preview) showPicture(run.slot, frame.preview, "The image so far", "Preview");
  } else if (!EVENT_ONLY.has(frame.type)) {
    if (frame.type === "task_postprocess_end") run.percentage = 100;
    showBatchProgress(run, STATUS_WORDS[frame.type] || frame.type);
  }
  if (frame.type === "task_postprocess_end" || frame.type === "task_cancel") run.socket.close();
}

function showPicture(slot, url, alt, caption, taskid = null) {
  const image = element("img", { src: url, alt });
  const figure = element("figure", {},
    taskid ? element("button", { type: "button", class: "open", "aria-label": `Open task ${taskid}` }, image) : image,
    element("figcaption", { text: caption }));
  if (taskid) figure.querySelector("button").addEventListener("click", () => openTask(api, taskid, handlers));
  slot.replaceChildren(figure);
  return image;
}

async function finish(run) {
  if (run.ended) return;
  run.ended = true;
  let task;
  try {
    task = await api.task(run.taskid);
  } catch (error) {
    failed(error);
  }
  run.task = task;
  if (task?.pexit === "0" && task.outputs.length) {
    for (const [index, output] of task.outputs.entries()) {
      const slot = index ? element("li", { class: "result" }) : run.slot;
      if (index) run.slot.after(slot);
      const image = showPicture(slot, output.url, task.parameters.prompt, `Seed ${task.parameters.seed} · task ${task.id}`,
        task.id);
      image.addEventListener("load", () => {
        slot.querySelector("figcaption").textContent =
          `Seed ${task.parameters.seed} · ${image.naturalWidth}×${image.naturalHeight} · task ${task.id}`;
      });
    }
  } else if (task) {
    run.slot.replaceChildren(element("span", { class: "placeholder", text: statusWord(task) }));
  }
  run.settled = true;
  endIfSettled(run.batch);
}

// The batch is over once every Run is sent and each one's end is read (Task/Detail answered or failed).
function endIfSettled(own) {
  if (!own.submitting && own.runs.every((each) => each.settled)) ended(own.runs);
}

// Every Run of the batch has ended: what became of them, and the gallery brought up to date.
function ended(runs) {
  batch = null;
  $("#stop").hidden = true;
  $("#generate").disabled = false;
  const tasks = runs.map((run) => run.task).filter(Boolean);
  const done = tasks.filter((task) => task.pexit === "0" && task.outputs.length);
  const words = [];
  let trouble = false;
  for (const task of tasks) {
    if (task.status === "task_cancel") {
      words.push(`Task ${task.id} was stopped.`);
    } else if (done.includes(task)) {
      words.push(...(task.debugoutput || "").split("\n").filter((line) => line.startsWith("Note: ")));
    } else if (RUNNING.has(task.status) || task.status === "task_queue") {
      words.push(`The connection to the server was lost; task ${task.id} goes on: see the gallery.`);
      trouble = true;
    } else {
      words.push(`Task ${task.id} failed: ${task.debugerror || "no reason given"}`);
      trouble = true;
    }
  }
  if (done.length) showProgress("Done", 100);
  else showProgress(tasks.length ? statusWord(tasks[0]) : "Failed", 0);
  if (words.length) say([...new Set(words)].join(" "), trouble ? "error" : "info");
  refreshGallery();
}

$("#run-form").addEventListener("submit", (event) => {
  event.preventDefault();
  generate($("#model").value, formInputs(), batchSize());
});

$("#stop").addEventListener("click", async () => {
  for (const run of batch?.runs || []) {
    if (run.ended) continue;
    try {
      await (run.status === "task_queue" ? api.cancel(run.taskid) : api.kill(run.taskid));
    } catch (error) {
      failed(error);
    }
  }
});

// --- what an opened task offers (task-dialog.js) -------------------------------------------

function slugOf(task) {
  return `${task.modelslugowner}/${task.modelslugproject}`;
}

const handlers = {
  rerun: (task) => generate(slugOf(task), task.parameters || {}),
  // The same prompt and inputs with new seeds; an editing model's picture becomes the input image.
  vary(task, output) {
    let inputs = withInput(task.parameters || {}, "seed", undefined);
    if (output && takesImage(toolOf(slugOf(task)))) {
      inputs = withInput(withInput(inputs, "inputImageUrl", undefined), "inputImage", output.url);
    }
    return generate(slugOf(task), inputs, batchSize());
  },
  canEdit: () => tools.some(takesImage),
  async edit(task, output) {
    const current = toolOf($("#model").value);
    const editor = takesImage(current) ? current : tools.find(takesImage);
    await chooseModel(`${editor.slugowner}/${editor.slugproject}`);
    await putImage(output.url, `fluxhost-${task.id}-${output.name}`);
    $("#inputs [name='prompt']")?.focus();
    say(`Task ${task.id}'s picture is the input image: say what to change and press Generate.`);
  },
  async useParameters(task) {
    if (!(await chooseModel(slugOf(task)))) {
      say(`This server no longer serves ${slugOf(task)}.`, "error");
      return;
    }
    const parameters = task.parameters || {};
    fillForm(parameters);
    const image = parameters.inputImage || parameters.inputImageUrl;
    if (typeof image === "string" && image) await putImage(image, `fluxhost-${task.id}-input`);
    $("#inputs [name='prompt']")?.focus();
    say(`The form holds task ${task.id}'s parameters.`);
  },
  changed: () => refreshGallery(),
};

// --- the gallery, from Task/List: searched by prompt, a page at a time ---------------------

let shown = 0; // how many tasks the gallery shows
let searching = null;

async function loadGallery(start, limit) {
  if (!api) return;
  const search = $("#search").value.trim();
  try {
    const page = await api.tasks({ start, limit, search });
    const items = page.tasks.map(galleryItem);
    if (start) $("#gallery").append(...items);
    else $("#gallery").replaceChildren(...items);
    shown = start + items.length;
    $("#more").hidden = shown >= page.total;
    $("#gallery-empty").hidden = page.total > 0;
    $("#gallery-empty").textContent = search ? `No prompt holds "${search}".` : "No task yet.";
  } catch (error) {
    failed(error);
  }
}

// The first page again (as many as were shown, so that More's are kept).
function refreshGallery() {
  return loadGallery(0, Math.max(PAGE, shown));
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
  open.addEventListener("click", () => openTask(api, task.id, handlers));
  return element("li", { "data-taskid": task.id, "data-status": task.status }, open);
}

$("#refresh").addEventListener("click", refreshGallery);
$("#more").addEventListener("click", () => loadGallery(shown, PAGE));
$("#search").addEventListener("input", () => {
  clearTimeout(searching);
  searching = setTimeout(() => {
    shown = 0;
    loadGallery(0, PAGE);
  }, 250);
});

// --- start ---------------------------------------------------------------------------------

const saved = savedCredentials();
if (saved) {
  $("#api-key").value = saved.apiKey;
  $("#api-secret").value = saved.apiSecret || "";
}
useCredentials(saved);
