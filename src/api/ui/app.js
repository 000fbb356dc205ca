// hearth's page: the shell. Views (chat, models, live) switch by the URL's hash; every call to
// the API goes through `api`, which adds the API key when the server asked for one (kept in
// this tab's sessionStorage only) and turns an error answer into an Error with the API's own
// message. Nothing here is fetched from anywhere but this server.
import { initChat } from "./chat.js";
import { initModels } from "./models.js";
import { initLive } from "./live.js";

const KEY = "hearth-api-key";

/** The page's element with this id. */
export const $ = (id) => document.getElementById(id);

/** An answer the API refused: its status and its own message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let asking = null;

/** Asks for the API key once; concurrent callers share the one dialog. */
function askKey(message) {
  if (asking) return asking;
  const dialog = $("key-dialog");
  const input = $("key-input");
  $("key-error").textContent = message || "";
  input.value = "";
  asking = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const key = input.value.trim();
      if (key) sessionStorage.setItem(KEY, key);
      asking = null;
      $("forget-key").hidden = !sessionStorage.getItem(KEY);
      resolve(Boolean(key));
    }, { once: true });
  });
  dialog.showModal();
  return asking;
}

/** The error text of a refused answer, in any of the shapes the API uses. */
async function errorText(resp) {
  const text = await resp.text();
  try {
    const body = JSON.parse(text);
    const e = body.error;
    if (typeof e === "string") return e;
    if (e && typeof e.message === "string") return e.message;
  } catch (_) { /* not JSON */ }
  return text || `${resp.status} ${resp.statusText}`;
}

/** Calls the API: JSON body in, the Response out (ok), or an ApiError. */
export async function api(path, { method = "GET", body, signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    const key = sessionStorage.getItem(KEY);
    if (key) headers.authorization = `Bearer ${key}`;
    const resp = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
    if (resp.status === 401 && attempt < 3) {
      const message = await errorText(resp);
      if (await askKey(key ? message : "")) continue;
    }
    if (!resp.ok) throw new ApiError(resp.status, await errorText(resp));
    return resp;
  }
}

/** The API's JSON answer. */
export async function getJson(path, options) {
  return (await api(path, options)).json();
}

/** Each line of a streamed (NDJSON) answer as an object; an error line becomes an ApiError. */
export async function* ndjson(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const parse = (line) => {
    const value = JSON.parse(line);
    if (typeof value.error === "string") throw new ApiError(resp.status, value.error);
    return value;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (line) yield parse(line);
    }
  }
  if (buffer.trim()) yield parse(buffer.trim());
}

/** Bytes as people read them. */
export function bytes(n) {
  if (n == null || Number.isNaN(n)) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/** An element with attributes and children (strings become text, never HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c);
  return node;
}

const views = { chat: null, models: null, live: null };

function show(name) {
  if (!(name in views)) name = "chat";
  for (const v of Object.keys(views)) {
    $(`view-${v}`).hidden = v !== name;
    const button = document.querySelector(`nav button[data-view="${v}"]`);
    if (v === name) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  views[name]?.shown?.();
}

async function start() {
  views.chat = initChat();
  views.models = initModels();
  views.live = initLive();
  for (const b of document.querySelectorAll("nav button")) {
    b.addEventListener("click", () => { location.hash = b.dataset.view; });
  }
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  const forget = $("forget-key");
  forget.hidden = !sessionStorage.getItem(KEY);
  forget.addEventListener("click", () => { sessionStorage.removeItem(KEY); forget.hidden = true; });
  show(location.hash.slice(1) || "chat");
  try {
    const v = await getJson("/api/version");
    $("server").textContent = `hearth ${v.version}${v.cpu?.variant ? ` · CPU kernels: ${v.cpu.variant}` : ""}`;
  } catch (e) {
    $("server").textContent = e.message;
  }
}

start();
