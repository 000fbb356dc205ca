// The models view: the store (size, quantization, parameters, the RAM estimate hearth would
// reserve to load it), which are loaded and until when, and load, unload, delete and pull
// (with its progress) through Ollama's own routes.
import { $, api, getJson, ndjson, el, bytes } from "./app.js";


/** A model of this server's store (not a provider's model or a route, listed beside them). */
function isLocal(m) {
  return m.origin !== "route" && m.origin !== "provider";
}

/** How often the table is read again while it is shown (loads and unloads finish later). */
const PERIOD_MS = 2000;

export function initModels() {
  let refreshing = false;
  // Models whose Delete was clicked once: the next click deletes.
  const armed = new Set();
  // `/api/show` answers by "name@digest".
  const shown = new Map();

  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    const tbody = $("model-table").querySelector("tbody");
    try {
      const [tags, ps] = await Promise.all([getJson("/api/tags"), getJson("/api/ps")]);
      const loaded = new Map((ps.models || []).map((m) => [m.name, m]));
      // A model's estimate changes only with its file: asked once per name and digest.
      const shows = await Promise.all((tags.models || []).map(async (m) => {
        const key = `${m.name}@${m.digest}`;
        if (!isLocal(m)) return null;
        if (!shown.has(key)) shown.set(key, await getJson("/api/show", { method: "POST", body: { model: m.name } }).catch(() => null));
        return shown.get(key);
      }));
      tbody.replaceChildren(...(tags.models || []).map((m, i) => row(m, loaded.get(m.name), shows[i])));
    } catch (e) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "error", text: e.message })));
    } finally {
      refreshing = false;
    }
  }

  function row(m, running, show) {
    const estimate = show?.ram_estimate?.total;
    const until = running?.expires_at ? new Date(running.expires_at) : null;
    const loadedText = running ? (until && until.getFullYear() < 9000 ? `until ${until.toLocaleTimeString()}` : "loaded") : "";
    const local = isLocal(m);
    const actions = el("td", {});
    if (local) {
      actions.append(
        running
          ? el("button", { type: "button", class: "unload", onclick: () => keep(m.name, 0), text: "Unload" })
          : el("button", { type: "button", class: "load", onclick: () => keep(m.name, "5m"), text: "Load" }),
        el("button", { type: "button", class: "delete", "data-armed": String(armed.has(m.name)), onclick: () => remove(m.name), text: armed.has(m.name) ? "Sure? Delete" : "Delete" }));
    }
    return el("tr", { "data-model": m.name },
      el("td", { text: m.name }),
      el("td", { "data-bytes": m.size ?? "", text: m.size ? bytes(m.size) : "-" }),
      el("td", { text: m.details?.quantization_level || "-" }),
      el("td", { text: m.details?.parameter_size || "-" }),
      el("td", { class: "estimate", "data-bytes": estimate ?? "", text: estimate ? bytes(estimate) : "-" }),
      el("td", { class: "loaded", "data-loaded": String(Boolean(running)), text: loadedText }),
      actions);
  }

  /** Loads (keep_alive "5m") or unloads (0) a model: a generate request with no prompt. */
  async function keep(name, keepAlive) {
    $("pull-status").textContent = keepAlive === 0 ? `unloading ${name}…` : `loading ${name}…`;
    try {
      await api("/api/generate", { method: "POST", body: { model: name, keep_alive: keepAlive, stream: false } });
      $("pull-status").textContent = "";
    } catch (e) {
      $("pull-status").textContent = e.message;
    }
    refresh();
  }

  /** Deletes on the second click, so one slip can't delete a model. */
  async function remove(name) {
    if (!armed.has(name)) {
      armed.add(name);
      refresh();
      return;
    }
    armed.delete(name);
    try {
      await api("/api/delete", { method: "DELETE", body: { model: name } });
    } catch (e) {
      $("pull-status").textContent = e.message;
    }
    refresh();
  }

  $("pull-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const model = $("pull-name").value.trim();
    const as = $("pull-as").value.trim();
    const progress = $("pull-progress");
    const status = $("pull-status");
    $("pull").disabled = true;
    progress.hidden = false;
    progress.value = 0;
    status.textContent = "starting…";
    status.classList.remove("error");
    try {
      const resp = await api("/api/pull", { method: "POST", body: as ? { model, as, stream: true } : { model, stream: true } });
      for await (const line of ndjson(resp)) {
        if (line.total > 0 && line.completed != null) {
          progress.value = line.completed / line.total;
          status.textContent = `${line.status}: ${bytes(line.completed)} of ${bytes(line.total)}`;
        } else {
          status.textContent = line.status;
        }
      }
      if (status.textContent === "success") progress.value = 1;
    } catch (e) {
      status.textContent = e.message;
      status.classList.add("error");
    } finally {
      $("pull").disabled = false;
      refresh();
    }
  });

  setInterval(() => { if (!$("view-models").hidden && !document.hidden) refresh(); }, PERIOD_MS);
  return { shown: refresh };
}
