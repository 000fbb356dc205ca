// The chat view: a model, route or persona to talk to; answers streamed from /api/chat with
// markdown; a stop button that aborts the request (the server drops the generation when its
// client leaves); server-side conversations (listed, resumed, deleted through
// /api/conversations), the current one remembered by this tab across reloads.
import { $, api, getJson, ndjson, el, ApiError } from "./app.js";
import { render } from "./markdown.js";

const CURRENT = "hearth-conversation";
const MODEL = "hearth-model";

function newId() {
  return `ui-${crypto.randomUUID()}`;
}

export function initChat() {
  let conversation = sessionStorage.getItem(CURRENT) || newId();
  let running = null;

  const showId = () => { $("conversation-id").textContent = conversation; };

  function bubble(role, text) {
    const body = el("div", { class: "body" });
    if (role === "assistant") body.append(render(text));
    else body.textContent = text;
    const node = el("div", { class: `msg ${role}`, "data-role": role }, el("div", { class: "role", text: role }), body);
    $("messages").append(node);
    node.scrollIntoView({ block: "end" });
    return node;
  }

  function errorBubble(message) {
    const node = el("div", { class: "msg error", "data-role": "error", text: message });
    $("messages").append(node);
    node.scrollIntoView({ block: "end" });
  }

  async function loadModels() {
    const select = $("model");
    const wanted = sessionStorage.getItem(MODEL) || select.value;
    select.replaceChildren();
    try {
      const [tags, personas] = await Promise.all([getJson("/api/tags"), getJson("/api/personas").catch(() => ({ personas: [] }))]);
      const models = el("optgroup", { label: "Models" });
      for (const m of tags.models || []) models.append(el("option", { value: m.name, text: m.name }));
      select.append(models);
      if (personas.personas?.length) {
        const group = el("optgroup", { label: "Personas and profiles" });
        for (const p of personas.personas) group.append(el("option", { value: p.name, text: `${p.name} (${p.model})` }));
        select.append(group);
      }
      if (wanted && [...select.options].some((o) => o.value === wanted)) select.value = wanted;
    } catch (e) {
      errorBubble(e.message);
    }
  }

  /** Lists the stored conversations; returns their ids. */
  async function loadList() {
    const list = $("conversation-list");
    try {
      const { conversations } = await getJson("/api/conversations");
      list.replaceChildren(...conversations.map((c) => el("li", { class: c.id === conversation ? "current" : "", "data-id": c.id },
        el("button", { type: "button", class: "open", title: c.id, onclick: () => open(c.id) }, `${c.model || "?"} `, el("small", { text: `${c.message_count} messages` })),
        el("button", { type: "button", class: "delete", title: "Delete this conversation", "aria-label": `Delete ${c.id}`, onclick: () => remove(c.id), text: "×" }))));
      return conversations.map((c) => c.id);
    } catch (e) {
      list.replaceChildren(el("li", { class: "error", text: e.message }));
      return [];
    }
  }

  async function open(id) {
    if (running) return;
    conversation = id;
    sessionStorage.setItem(CURRENT, id);
    showId();
    $("messages").replaceChildren();
    try {
      const c = await getJson(`/api/conversations/${encodeURIComponent(id)}`);
      for (const m of c.messages) bubble(m.role, m.content);
      if (c.model && [...$("model").options].some((o) => o.value === c.model)) $("model").value = c.model;
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) errorBubble(e.message);
    }
    loadList();
  }

  async function remove(id) {
    try {
      await api(`/api/conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
      if (id === conversation) fresh();
    } catch (e) {
      errorBubble(e.message);
    }
    loadList();
  }

  function fresh() {
    conversation = newId();
    sessionStorage.setItem(CURRENT, conversation);
    showId();
    $("messages").replaceChildren();
    loadList();
  }

  function options() {
    const o = {};
    const num = (id, key, parse) => {
      const v = $(id).value.trim();
      if (v !== "") o[key] = parse(v);
    };
    num("temperature", "temperature", parseFloat);
    num("num-predict", "num_predict", (v) => parseInt(v, 10));
    num("num-ctx", "num_ctx", (v) => parseInt(v, 10));
    return o;
  }

  async function send(text) {
    const model = $("model").value;
    if (!model || running) return;
    sessionStorage.setItem(MODEL, model);
    sessionStorage.setItem(CURRENT, conversation);
    bubble("user", text);
    const node = bubble("assistant", "");
    node.dataset.state = "streaming";
    const body = node.querySelector(".body");
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push({ role: "user", content: text });
    const controller = new AbortController();
    running = controller;
    $("stop").disabled = false;
    $("send").disabled = true;
    const started = performance.now();
    let first = null;
    let answer = "";
    let pending = false;
    const paint = () => {
      pending = false;
      body.replaceChildren(render(answer));
      node.scrollIntoView({ block: "end" });
    };
    try {
      const resp = await api("/api/chat", { method: "POST", signal: controller.signal, body: { model, conversation_id: conversation, messages, stream: true, options: options() } });
      for await (const chunk of ndjson(resp)) {
        const piece = chunk.message?.content || "";
        if (piece && first === null) first = performance.now() - started;
        answer += piece;
        if (!pending) { pending = true; requestAnimationFrame(paint); }
        if (chunk.done) {
          const tps = chunk.eval_duration > 0 ? chunk.eval_count / (chunk.eval_duration / 1e9) : 0;
          const stats = el("div", { class: "stats", "data-eval-count": chunk.eval_count ?? 0 },
            `${chunk.eval_count ?? 0} tokens · ${tps.toFixed(1)} tokens/s · first token ${first === null ? "-" : Math.round(first)} ms`);
          node.append(stats);
          node.dataset.state = "done";
        }
      }
      paint();
      if (node.dataset.state !== "done") node.dataset.state = "ended";
    } catch (e) {
      paint();
      if (controller.signal.aborted) {
        node.dataset.state = "stopped";
        node.append(el("div", { class: "stats", text: "stopped: this answer was not stored" }));
      } else {
        node.dataset.state = "error";
        errorBubble(e.message);
      }
    } finally {
      running = null;
      $("stop").disabled = true;
      $("send").disabled = false;
      loadList();
    }
  }

  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("prompt").value.trim();
    if (!text) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => running?.abort());
  $("new-chat").addEventListener("click", () => { if (!running) fresh(); });
  $("model").addEventListener("change", () => sessionStorage.setItem(MODEL, $("model").value));

  showId();
  // The tab's conversation is resumed if the server has it (a new one has no messages yet).
  loadModels().then(loadList).then((ids) => { if (ids.includes(conversation)) open(conversation); });
  return { shown: () => { if (!running) loadList(); } };
}
