// Small helpers the playground's modules share: finding and making elements, and the message line.

import { ApiError } from "./api.js";

export const $ = (selector) => document.querySelector(selector);

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function say(text, kind = "info") {
  const message = $("#message");
  message.textContent = text;
  message.dataset.kind = kind;
}

export function failed(error) {
  say(error instanceof ApiError ? error.message : `Something went wrong: ${error}`, "error");
}

export function capitalized(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}
