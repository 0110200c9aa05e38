// One task opened from the gallery: its picture (fit, or at full size), its facts, and what can be
// done with it: run it again, vary it, edit it, take or copy its parameters, download, stop, delete.

import { $, element, failed, say } from "./dom.js";
import { RUNNING, statusWord } from "./statuses.js";

// A word for a POSIX shell: as it is when it needs no quoting, else in single quotes.
function shellWord(text) {
  const word = String(text);
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}

// The `fluxhost run` (or `fluxhost edit`, for a task with an input image) line that asks for the same.
export function commandLine(task) {
  const { prompt = "", seed, inputImage, inputImageUrl, ...rest } = task.parameters || {};
  const image = inputImage || inputImageUrl;
  const words = ["fluxhost", image ? "edit" : "run", ...(image ? [image] : []), prompt,
    "--model", `${task.modelslugowner}/${task.modelslugproject}`];
  if (seed !== undefined && seed !== "") words.push("--seed", seed);
  for (const [name, value] of Object.entries(rest)) words.push("-i", `${name}=${value}`);
  return words.map(shellWord).join(" ");
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    say("Copied: " + text);
  } catch {
    say("This browser would not copy; here it is to copy by hand: " + text);
  }
}

// A picture that shows whole in the dialog, or at its own size (scrolled) when pressed.
function zoomable(output, prompt) {
  const image = element("img", { src: output.url, alt: prompt });
  const zoom = element("button", { type: "button", class: "zoom", "aria-pressed": "false",
    title: "Full size (click again to fit)" }, image);
  zoom.setAttribute("aria-label", "Full size");
  zoom.addEventListener("click", () => {
    const zoomed = zoom.getAttribute("aria-pressed") !== "true";
    zoom.setAttribute("aria-pressed", String(zoomed));
    zoom.parentElement.classList.toggle("zoomed", zoomed);
  });
  return element("div", { class: "picture" }, zoom);
}

// Open task ``taskid``; ``handlers``: rerun(task), vary(task, output), edit(task, output),
// useParameters(task), changed() after a stop or a deletion.
export async function openTask(api, taskid, handlers) {
  let task;
  try {
    task = await api.task(taskid);
  } catch (error) {
    failed(error);
    return;
  }
  const dialog = $("#task-dialog");
  const parameters = task.parameters || {};
  const output = task.outputs?.find((file) => /^image\//.test(file.contenttype));
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
  const act = (label, work, title) => {
    const button = element("button", { type: "button", text: label, title });
    button.addEventListener("click", async () => {
      dialog.close();
      try {
        await work();
      } catch (error) {
        failed(error);
      }
    });
    actions.push(button);
  };
  act("Re-run with the same seed", () => handlers.rerun(task));
  act("Vary", () => handlers.vary(task, output), "The same prompt and inputs with new seeds");
  if (output && handlers.canEdit()) act("Edit this", () => handlers.edit(task, output), "Put it in as the input image");
  act("Use these parameters", () => handlers.useParameters(task), "Fill the form with them");
  act("Copy parameters", () => copy(commandLine(task)), "As a fluxhost command line");
  if (output) {
    actions.push(element("a", { href: output.url, download: `fluxhost-${task.id}-${output.name}`, class: "button",
      text: "Download" }));
  }
  const changing = (label, work) => act(label, async () => {
    if (await work()) handlers.changed();
  });
  if (task.status === "task_queue") changing("Cancel", () => api.cancel(task.id));
  if (RUNNING.has(task.status)) changing("Kill", () => api.kill(task.id));
  if (!RUNNING.has(task.status) && task.status !== "task_queue" && task.outputs?.length) {
    changing("Delete files", () => confirm(`Delete the files of task ${task.id}? Its record stays.`)
      && api.deleteFiles(task.id));
  }
  const close = element("button", { type: "button", text: "Close" });
  close.addEventListener("click", () => dialog.close());
  dialog.replaceChildren(
    element("h2", { text: `Task ${task.id}` }),
    output ? zoomable(output, parameters.prompt || "") : null,
    element("p", { class: "dialog-prompt", text: parameters.prompt || "" }),
    element("dl", {}, ...facts.flatMap(([name, value]) => [element("dt", { text: name }), element("dd", { text: value })])),
    element("div", { class: "actions" }, ...actions, close),
  );
  dialog.showModal();
}
