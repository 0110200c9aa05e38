// The hosted protocol from the browser, as any client speaks it: POST /v1/... signed with
// x-api-key, x-nonce and x-signature = hex(HMAC-SHA256(key = API key, message = secret + nonce)),
// computed here with WebCrypto so the secret never leaves the page; and the task socket at /v1.

const STORE_KEY = "fluxhost.credentials";
const encoder = new TextEncoder();

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export function savedCredentials() {
  try {
    return JSON.parse(localStorage.getItem(STORE_KEY)) || null;
  } catch {
    return null;
  }
}

export function saveCredentials(apiKey, apiSecret) {
  localStorage.setItem(STORE_KEY, JSON.stringify({ apiKey, apiSecret }));
}

export function forgetCredentials() {
  localStorage.removeItem(STORE_KEY);
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (byte) => byte.toString(16).padStart(2, "0")).join("");
}

export class Api {
  constructor({ apiKey, apiSecret }) {
    this.apiKey = apiKey;
    this.apiSecret = apiSecret || "";
    this.lastNonce = 0;
    this.signingKey = null;
  }

  // Millisecond nonces, strictly increasing: two calls in one millisecond still differ.
  nextNonce() {
    this.lastNonce = Math.max(Date.now(), this.lastNonce + 1);
    return String(this.lastNonce);
  }

  async headers() {
    const headers = { "x-api-key": this.apiKey };
    if (!this.apiSecret) return headers; // a key-only key
    if (!globalThis.crypto?.subtle) {
      throw new ApiError(
        "This page cannot sign requests here: browsers allow WebCrypto only on https or localhost. " +
          "Open it through https, or use a key-only key.",
      );
    }
    this.signingKey ??= await crypto.subtle.importKey(
      "raw", encoder.encode(this.apiKey), { name: "HMAC", hash: "SHA-256" }, false, ["sign"],
    );
    const nonce = this.nextNonce();
    const signature = await crypto.subtle.sign("HMAC", this.signingKey, encoder.encode(this.apiSecret + nonce));
    return { ...headers, "x-nonce": nonce, "x-signature": hex(signature) };
  }

  // One call: the answer when result is true, else an ApiError with the server's message.
  async call(path, body = {}) {
    const headers = await this.headers();
    let payload = body;
    if (!(body instanceof FormData)) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(`/v1/${path}`, { method: "POST", headers, body: payload });
    } catch {
      throw new ApiError("The server cannot be reached.");
    }
    let answer;
    try {
      answer = await response.json();
    } catch {
      throw new ApiError(`The server answered HTTP ${response.status}.`, response.status);
    }
    if (!answer.result) {
      const message = answer.errors?.[0]?.message || `HTTP ${response.status}`;
      if (response.status === 401) {
        throw new ApiError(`The API key or secret was refused: ${message}`, 401);
      }
      throw new ApiError(message, response.status);
    }
    return answer;
  }

  tools() {
    return this.call("Tool/List", { limit: 100 }).then((answer) => answer.tool);
  }

  tool(owner, project) {
    return this.call("Tool/Detail", { slugowner: owner, slugproject: project }).then((answer) => answer.tool[0]);
  }

  run(slug, inputs) {
    return this.call(`Run/${slug}`, inputs);
  }

  // A page of the project's tasks, newest first, those whose prompt holds ``search`` when given:
  // { tasks, total }.
  tasks({ start = 0, limit = 24, search = "" } = {}) {
    return this.call("Task/List", { start, limit, order: "desc", search })
      .then((answer) => ({ tasks: answer.tasklist, total: Number(answer.total) }));
  }

  task(taskid) {
    return this.call("Task/Detail", { taskid }).then((answer) => answer.tasklist[0]);
  }

  cancel(taskid) {
    return this.call("Task/Cancel", { taskid });
  }

  kill(taskid) {
    return this.call("Task/Kill", { taskid });
  }

  deleteFiles(taskid) {
    return this.call("Task/InputOutputDelete", { taskid });
  }
}

// Follow a task on the socket: onFrame(frame) for each frame until the terminal one.
export function follow(token, onFrame) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/v1`);
  socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "task_info", tasktoken: token })));
  socket.addEventListener("message", (event) => onFrame(JSON.parse(event.data)));
  return socket;
}
