// The admin console: live state from /metrics and /ready, keys and tenants from /admin/*, the audit
// log with its chain verified by the server. Every call is checked server-side (admin role).

import { ApiError, get, request } from "./api.js";
import { t } from "./i18n.js";
import { copyText } from "./render.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;

let timer = null;
let generation = 0; // a poll of an earlier visit stops when the view was left or re-entered
let lastTokens = null; // [generated tokens total, time in ms] of the previous scrape

// Prometheus text format to {name: [{labels, value}]}; only what the console shows needs parsing.
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([^{\s]+)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = Object.fromEntries([...(match[2] || "").matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    (out[match[1]] ??= []).push({ labels, value: Number(match[3]) });
  }
  return out;
}

const sum = (metrics, name) => (metrics[name] || []).reduce((total, s) => total + s.value, 0);

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
  return td;
}

function button(label, onClick, ariaLabel) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (ariaLabel) b.setAttribute("aria-label", ariaLabel);
  b.addEventListener("click", onClick);
  return b;
}

function renderLive(metrics, ready) {
  const queued = sum(metrics, "seekd:num_requests_waiting") + (ready.admission?.queued ?? 0);
  $("m-running").textContent = String(sum(metrics, "seekd:num_requests_running"));
  $("m-queued").textContent = String(queued);
  $("m-kv").textContent = `${(100 * sum(metrics, "seekd:kv_cache_usage_perc")).toFixed(1)} %`;
  $("m-model").textContent = ready.model ?? "–";
  $("m-engine").textContent = ready.engine_state ?? ready.status ?? "–";
  const tokens = sum(metrics, "seekd:generation_tokens_total");
  const now = performance.now();
  if (lastTokens) {
    const rate = (tokens - lastTokens[0]) / ((now - lastTokens[1]) / 1000);
    $("m-tps").textContent = Math.max(0, rate).toFixed(1);
  }
  lastTokens = [tokens, now];
  renderGpus(metrics);
}

function renderGpus(metrics) {
  const box = $("gpus");
  const gpus = (metrics["seekd:gpu_memory_total_bytes"] || []).map((s) => s.labels.gpu);
  if (!gpus.length) {
    box.textContent = t("admin.gpu.none");
    return;
  }
  const value = (name, gpu) => metrics[name]?.find((s) => s.labels.gpu === gpu)?.value ?? 0;
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const id of ["admin.gpu.index", "admin.gpu.util", "admin.gpu.mem", "admin.gpu.temp", "admin.gpu.power"]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = t(id);
    head.append(th);
  }
  const body = table.createTBody();
  const gib = (bytes) => (bytes / 2 ** 30).toFixed(1);
  for (const gpu of gpus) {
    const row = body.insertRow();
    cell(row, gpu);
    cell(row, `${(100 * value("seekd:gpu_utilization_perc", gpu)).toFixed(0)} %`);
    cell(row, `${gib(value("seekd:gpu_memory_used_bytes", gpu))} / ${gib(value("seekd:gpu_memory_total_bytes", gpu))} GiB`);
    cell(row, `${value("seekd:gpu_temperature_celsius", gpu).toFixed(0)} °C`);
    cell(row, `${value("seekd:gpu_power_watts", gpu).toFixed(0)} W`);
  }
  box.replaceChildren(table);
}

function limitInput(value, label) {
  const input = document.createElement("input");
  input.type = "number";
  input.min = "0";
  input.value = String(value);
  input.setAttribute("aria-label", label);
  input.className = "limit";
  return input;
}

function renderKeys(keys) {
  const body = $("keys-table").tBodies[0];
  body.replaceChildren();
  for (const key of keys.data) {
    const row = body.insertRow();
    row.dataset.keyId = key.id;
    cell(row, key.id);
    cell(row, key.name);
    cell(row, key.tenant);
    cell(row, key.role);
    cell(row, key.models.length ? key.models.join(", ") : t("admin.keys.models.all"));
    const active = key.revoked === null;
    if (active) {
      const rpm = limitInput(key.rpm, `${t("admin.keys.rpm")} ${key.id}`);
      const tpm = limitInput(key.tpm, `${t("admin.keys.tpm")} ${key.id}`);
      cell(row, "").append(rpm);
      cell(row, "").append(tpm);
      cell(row, t("admin.keys.active"));
      const actions = cell(row, "");
      actions.className = "actions";
      actions.append(
        button(t("admin.keys.save"), () => act(() => request("PATCH", `/admin/keys/${key.id}`, { rpm: +rpm.value, tpm: +tpm.value })), `${t("admin.keys.save")} ${key.id}`),
        button(t("admin.keys.revoke"), () => confirm(t("admin.keys.confirm", { id: key.id })) && act(() => request("DELETE", `/admin/keys/${key.id}`)), `${t("admin.keys.revoke")} ${key.id}`),
      );
    } else {
      cell(row, String(key.rpm));
      cell(row, String(key.tpm));
      cell(row, t("admin.keys.revoked"));
      cell(row, "");
    }
  }
}

function renderTenants(tenants) {
  $("tenant-limits").textContent = t("admin.tenants.limits", {
    rpm: tenants.rate_limit_requests_per_min,
    tpm: tenants.rate_limit_tokens_per_min,
  });
  const body = $("tenants-table").tBodies[0];
  body.replaceChildren();
  for (const tenant of tenants.data) {
    const row = body.insertRow();
    cell(row, tenant.tenant);
    cell(row, `${tenant.keys} (${tenant.active_keys})`);
    cell(row, String(tenant.running));
    cell(row, String(tenant.queued));
    cell(row, String(tenant.weight));
    const actions = cell(row, "");
    if (tenant.active_keys) {
      const revoke = () =>
        confirm(t("admin.tenants.confirm", { tenant: tenant.tenant })) &&
        act(() => request("DELETE", `/admin/tenants/${encodeURIComponent(tenant.tenant)}`));
      actions.append(button(t("admin.tenants.revoke"), revoke, `${t("admin.tenants.revoke")}: ${tenant.tenant}`));
    }
  }
}

function renderAudit(audit) {
  const status = $("audit-status");
  status.classList.toggle("error", audit.enabled && !audit.verified);
  status.classList.toggle("ok", audit.enabled && audit.verified);
  if (!audit.enabled) status.textContent = t("admin.audit.off");
  else if (audit.verified) status.textContent = `✔ ${t("admin.audit.ok", { n: audit.num_records, head: (audit.head_hash || "").slice(0, 16) })}`;
  else status.textContent = `✘ ${t("admin.audit.bad", { line: audit.bad_line, reason: audit.reason })}`;
  const body = $("audit-table").tBodies[0];
  body.replaceChildren();
  for (const r of audit.data) {
    const row = body.insertRow();
    cell(row, String(r.seq ?? "?"));
    cell(row, r.time ? new Date(r.time * 1000).toLocaleString() : "");
    cell(row, r.key_id ?? "");
    cell(row, r.tenant ?? "");
    cell(row, `${r.method ?? ""} ${r.route ?? ""}`);
    cell(row, String(r.status ?? ""));
    cell(row, r.completion_tokens !== undefined ? `${r.prompt_tokens} + ${r.completion_tokens}` : "");
  }
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401) return; // the sign-in view says it
  const forbidden = e instanceof ApiError && e.status === 403;
  $("admin-body").hidden = forbidden;
  $("admin-error").textContent = forbidden ? t("error.admin") : t("error.generic", { status: e.status ?? "", message: e.message });
}

async function act(call) {
  try {
    await call();
    await refresh();
  } catch (e) {
    showError(e);
  }
}

async function refreshLive() {
  const [metrics, ready] = await Promise.all([get("/metrics"), get("/ready")]);
  renderLive(parseMetrics(metrics), ready);
}

// Keys, tenants and the audit log are read on opening, after each change and on Refresh, not on
// every tick: each /admin call is itself an audit record, and a console left open must not flood it.
async function refresh() {
  try {
    // the admin API first: a non-admin key is refused there (403) before anything is drawn
    const [keys, tenants, audit] = await Promise.all([
      get("/admin/keys"),
      get("/admin/tenants"),
      get("/admin/audit?limit=50"),
    ]);
    await refreshLive();
    $("admin-error").textContent = "";
    $("admin-body").hidden = false;
    renderKeys(keys);
    renderTenants(tenants);
    renderAudit(audit);
    return true;
  } catch (e) {
    showError(e);
    return false;
  }
}

async function poll(visit) {
  try {
    await refreshLive();
  } catch (e) {
    showError(e);
    return;
  }
  if (visit === generation) timer = setTimeout(() => poll(visit), POLL_MS);
}

async function createKey(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const created = await request("POST", "/admin/keys", {
      tenant: form.get("tenant"),
      name: form.get("name"),
      role: form.get("role"),
      models: String(form.get("models") || "")
        .split(",")
        .map((m) => m.trim())
        .filter(Boolean),
      rpm: Number(form.get("rpm") || 0),
      tpm: Number(form.get("tpm") || 0),
    });
    $("created-key-value").textContent = created.key;
    $("created-key").hidden = false;
    event.target.reset();
    await refresh();
  } catch (e) {
    showError(e);
  }
}

export function setupAdmin() {
  $("create-key").addEventListener("submit", createKey);
  $("admin-refresh").addEventListener("click", refresh);
  $("copy-created-key").addEventListener("click", () => copyText($("created-key-value").textContent));
}

export function showAdmin() {
  stopAdmin();
  $("admin-body").hidden = true;
  $("admin-error").textContent = "";
  const visit = generation;
  refresh().then((ok) => ok && visit === generation && (timer = setTimeout(() => poll(visit), POLL_MS)));
}

export function stopAdmin() {
  generation += 1;
  clearTimeout(timer);
  timer = null;
  lastTokens = null;
  $("created-key").hidden = true;
}
