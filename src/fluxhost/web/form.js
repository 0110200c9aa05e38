// The Create form, built from a tool's Tool/Detail: its inputs, an input image picked, dropped or
// put in from the gallery, and how many images to make; read back as a Run's inputs.

import { $, capitalized, element } from "./dom.js";

export const MAX_BATCH = 4;
const IMAGE_TYPES = "image/png,image/jpeg,image/webp";

// Whether a tool (a Tool/List or Tool/Detail entry) takes an uploaded input image.
export function takesImage(tool) {
  return (tool?.parameters || []).some((group) => group.items.some((item) => item.type === "fileinput"
    && item.available !== false));
}

function fileControl(common) {
  const control = element("input", { ...common, type: "file", accept: IMAGE_TYPES, required: false });
  const chosen = element("img", { class: "chosen", alt: "The input image", hidden: true });
  const clear = element("button", { type: "button", class: "clear", text: "Remove image", hidden: true });
  const show = () => {
    const file = control.files[0];
    if (chosen.src) URL.revokeObjectURL(chosen.src);
    chosen.hidden = clear.hidden = !file;
    if (file) chosen.src = URL.createObjectURL(file);
    else chosen.removeAttribute("src");
  };
  control.addEventListener("change", show);
  clear.addEventListener("click", () => {
    control.value = "";
    show();
  });
  const zone = element("div", { class: "drop" }, control, element("span", { class: "hint", text: "or drop a picture here" }),
    chosen, clear);
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = [...event.dataTransfer.files].find((dropped) => IMAGE_TYPES.includes(dropped.type));
    if (file) chooseFile(control, file);
  });
  return zone;
}

function chooseFile(control, file) {
  const transfer = new DataTransfer();
  transfer.items.add(file);
  control.files = transfer.files;
  control.dispatchEvent(new Event("change"));
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
    control = fileControl(common);
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

// How many Runs a Generate makes, for tools without their own "samples" input.
function batchControl() {
  const control = element("input", { id: "batch", type: "number", min: 1, max: MAX_BATCH, value: 1,
    inputmode: "numeric", "aria-describedby": "batch-about" });
  return element("div", { class: "field field-batch" },
    element("label", { for: "batch", text: "Images" }), control,
    element("small", { id: "batch-about", text: `1 to ${MAX_BATCH}: each its own task, with a new random seed ` +
      "(or seed, seed+1... when a seed is given)." }));
}

export function renderForm(tool) {
  const items = tool.parameters.flatMap((group) => group.items).filter((item) => item.available !== false);
  const controls = items.map(inputControl);
  if (!items.some((item) => item.id === "samples")) controls.push(batchControl());
  $("#inputs").replaceChildren(...controls);
}

export function batchSize() {
  const value = Number($("#batch")?.value || 1);
  return Number.isInteger(value) ? Math.min(Math.max(value, 1), MAX_BATCH) : 1;
}

// The form's inputs: a FormData (multipart) when a file is chosen, else a plain object (JSON).
export function formInputs() {
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

// A copy of ``inputs`` (object or FormData) with ``name`` set to ``value`` (undefined: left out).
export function withInput(inputs, name, value) {
  if (inputs instanceof FormData) {
    const copy = new FormData();
    for (const [key, entry] of inputs) if (key !== name) copy.append(key, entry);
    if (value !== undefined) copy.append(name, value);
    return copy;
  }
  const copy = { ...inputs };
  delete copy[name];
  if (value !== undefined) copy[name] = value;
  return copy;
}

// Fill the form's fields from a task's parameters (the input image apart: see putImage).
export function fillForm(parameters) {
  for (const field of $("#inputs").querySelectorAll("[name]")) {
    if (field.type === "file" || !(field.name in parameters)) continue;
    field.value = String(parameters[field.name]);
    field.dispatchEvent(new Event("input"));
  }
}

// Put a picture of this server (a URL) into the form's input image; false when the form has none.
export async function putImage(url, name) {
  const control = $("#inputs input[type='file']");
  if (!control) return false;
  const response = await fetch(url);
  if (!response.ok) throw new Error(`the picture could not be read (HTTP ${response.status})`);
  const blob = await response.blob();
  chooseFile(control, new File([blob], name, { type: blob.type }));
  return true;
}
