// The chat view: conversations kept in localStorage (per key id), answers streamed from
// /v1/chat/completions with the reasoning folded above the answer.

import { ApiError, apiKey, get, keyScope, streamChat } from "./api.js";
import { t } from "./i18n.js";
import { installCopyButtons, markdownToHtml } from "./render.js";

const $ = (id) => document.getElementById(id);
const TITLE_CHARS = 48;
const OPTIONS_KEY = "seekd.chat.options"; // the last model and thinking mode chosen in this browser

let conversations = [];
let current = null; // the open conversation
let running = null; // AbortController of the answer being streamed
let kbLoaded = false;
let loadedScope = null; // whose conversations are in memory

const storageKey = () => `seekd.conversations.${keyScope()}`;
const currentKey = () => `seekd.current.${keyScope()}`;

function load() {
  loadedScope = keyScope();
  try {
    conversations = JSON.parse(localStorage.getItem(storageKey()) || "[]");
  } catch {
    conversations = [];
  }
}

function save() {
  localStorage.setItem(storageKey(), JSON.stringify(conversations));
  if (current) sessionStorage.setItem(currentKey(), current.id);
}

function newConversation() {
  current = { id: crypto.randomUUID(), title: "", updated: Date.now(), messages: [] };
  renderList();
  renderMessages();
  $("prompt").focus();
}

function open(id) {
  current = conversations.find((c) => c.id === id) || null;
  if (!current) return newConversation();
  sessionStorage.setItem(currentKey(), id);
  renderList();
  renderMessages();
}

function remove(id) {
  conversations = conversations.filter((c) => c.id !== id);
  save();
  if (current?.id === id) newConversation();
  else renderList();
}

function renderList() {
  const list = $("conversation-list");
  list.replaceChildren();
  for (const c of [...conversations].sort((a, b) => b.updated - a.updated)) {
    const item = document.createElement("li");
    const link = document.createElement("button");
    link.type = "button";
    link.className = "conversation-link";
    link.textContent = c.title || t("chat.untitled");
    if (current?.id === c.id) link.setAttribute("aria-current", "true");
    link.addEventListener("click", () => open(c.id));
    const del = document.createElement("button");
    del.type = "button";
    del.className = "icon";
    del.textContent = "×";
    del.setAttribute("aria-label", `${t("chat.delete")}: ${link.textContent}`);
    del.addEventListener("click", () => remove(c.id));
    item.append(link, del);
    list.append(item);
  }
}

function messageElement(message) {
  const article = document.createElement("article");
  article.className = `message ${message.role}`;
  const who = document.createElement("h2");
  who.className = "who";
  who.textContent = message.role === "user" ? t("chat.you") : t("chat.assistant");
  article.append(who);
  if (message.role === "user") {
    const body = document.createElement("div");
    body.className = "user-text";
    body.textContent = message.content;
    article.append(body);
  } else {
    fillAssistant(article, message);
  }
  return article;
}

// Rebuild an assistant message in place; the reasoning's open/closed state survives re-renders.
function fillAssistant(article, message) {
  const wasOpen = article.querySelector("details.reasoning")?.open ?? false;
  article.querySelectorAll(":scope > :not(.who)").forEach((el) => el.remove());
  article.setAttribute("aria-busy", message.streaming ? "true" : "false"); // screen readers read it once, whole
  if (message.reasoning) {
    const details = document.createElement("details");
    details.className = "reasoning";
    details.open = wasOpen;
    const summary = document.createElement("summary");
    summary.textContent = message.streaming && !message.content ? t("chat.reasoning.live") : t("chat.reasoning");
    const body = document.createElement("div");
    body.className = "reasoning-body";
    body.textContent = message.reasoning;
    details.append(summary, body);
    article.append(details);
  }
  const answer = document.createElement("div");
  answer.className = "answer markdown";
  answer.innerHTML = markdownToHtml(message.content || "");
  if (!message.content && message.finish === "length" && message.reasoning && !message.tool_calls?.length) {
    answer.innerHTML = `<p class="note">${t("chat.noanswer")}</p>`;
  }
  article.append(answer);
  for (const call of message.tool_calls || []) article.append(toolCallElement(call));
  if (message.citations?.length) article.append(citationsElement(message.citations));
  if (!message.streaming) article.append(footerElement(message));
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

// A titled box under the answer: a tool call, the sources.
function panel(className, title, content) {
  const box = element("div", className);
  box.append(element("strong", "", title), content);
  return box;
}

function toolCallElement(call) {
  let text = call.function?.arguments || "";
  try {
    text = JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    // still streaming or not JSON: show as is
  }
  return panel("tool-call", `${t("chat.tool")}: ${call.function?.name || ""}`, element("pre", "", text));
}

function citationsElement(citations) {
  const list = element("ol");
  for (const c of citations) {
    const item = element("li", "", [c.knowledge_base, c.document].filter(Boolean).join(" / ") || c.url || "");
    item.value = c.index; // the answer cites passages by this number: [1], [2], ...
    list.append(item);
  }
  return panel("citations", t("chat.citations"), list);
}

function footerElement(message) {
  const footer = document.createElement("div");
  footer.className = "message-footer";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.dataset.copy = "message";
  copy.textContent = t("chat.copy");
  footer.append(copy);
  const note = { stop: "", length: t("chat.length"), stopped: t("chat.stopped") }[message.finish] ?? "";
  const tokens = message.usage ? t("chat.tokens", { n: message.usage.completion_tokens }) : "";
  const info = document.createElement("span");
  info.className = "note";
  info.textContent = [note, tokens].filter(Boolean).join(" · ");
  footer.append(info);
  return footer;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  if (!current?.messages.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = t("chat.empty");
    box.append(empty);
  }
  for (const m of current?.messages || []) box.append(messageElement(m));
  updateButtons();
  box.scrollTop = box.scrollHeight;
}

function updateButtons() {
  const busy = running !== null;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  const last = current?.messages.at(-1);
  $("regenerate").disabled = busy || last?.role !== "assistant";
}

function thinkingFields() {
  const mode = $("thinking").value;
  if (mode === "off") return { thinking: { type: "disabled" } };
  const effort = mode === "on" ? {} : { reasoning_effort: mode };
  return { thinking: { type: "enabled" }, ...effort };
}

function selectedKnowledgeBases() {
  return [...document.querySelectorAll("#kb-list input:checked")].map((box) => box.value);
}

function requestBody() {
  const history = current.messages.slice(0, -1).map((m) => ({ role: m.role, content: m.content || "" }));
  const kbs = selectedKnowledgeBases();
  return {
    model: $("model").value,
    messages: history,
    ...thinkingFields(),
    ...(kbs.length ? { knowledge_bases: kbs } : {}),
  };
}

function applyDelta(message, chunk) {
  if (chunk.citations) message.citations = chunk.citations;
  if (chunk.usage) message.usage = chunk.usage;
  for (const choice of chunk.choices || []) {
    const delta = choice.delta || {};
    if (delta.reasoning_content) message.reasoning = (message.reasoning || "") + delta.reasoning_content;
    if (delta.content) message.content = (message.content || "") + delta.content;
    for (const part of delta.tool_calls || []) {
      message.tool_calls ??= [];
      const call = (message.tool_calls[part.index] ??= { id: part.id, function: { name: "", arguments: "" } });
      if (part.function?.name) call.function.name += part.function.name;
      if (part.function?.arguments) call.function.arguments += part.function.arguments;
    }
    if (choice.finish_reason) message.finish = choice.finish_reason;
  }
}

// The streamed message is painted into whatever element shows it now: the list may have been redrawn
// (language switch) or another conversation opened meanwhile (then nothing is painted).
function articleOf(conversation, message) {
  if (current !== conversation) return null;
  return $("messages").querySelectorAll("article.message")[conversation.messages.indexOf(message)] ?? null;
}

async function answer() {
  const conversation = current;
  const scope = keyScope();
  const message = { role: "assistant", content: "", reasoning: "", streaming: true };
  conversation.messages.push(message);
  const box = $("messages");
  box.querySelector(".empty")?.remove();
  box.append(messageElement(message));
  running = new AbortController();
  updateButtons();
  $("chat-error").textContent = "";
  let frame = 0;
  const paint = () => {
    frame = 0;
    const article = articleOf(conversation, message);
    if (!article) return;
    fillAssistant(article, message);
    box.scrollTop = box.scrollHeight;
  };
  try {
    await streamChat(
      requestBody(),
      (chunk) => {
        applyDelta(message, chunk);
        frame ||= requestAnimationFrame(paint);
      },
      running.signal,
    );
  } catch (e) {
    if (e.name === "AbortError") message.finish = "stopped";
    else showError(e);
  } finally {
    cancelAnimationFrame(frame);
    running = null;
    delete message.streaming;
    conversation.updated = Date.now();
    if (apiKey() && keyScope() === scope) save(); // not after a sign-out, which aborts the stream
    paint();
    updateButtons();
  }
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401) return; // the sign-in view says it
  $("chat-error").textContent =
    e instanceof ApiError && e.status === 0
      ? t("error.network")
      : t("error.generic", { status: e.status ?? "", message: e.message });
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || running) return;
  if (!conversations.includes(current)) conversations.push(current);
  if (!current.title) current.title = text.slice(0, TITLE_CHARS);
  current.messages.push({ role: "user", content: text });
  $("prompt").value = "";
  save();
  renderList();
  $("messages").append(messageElement(current.messages.at(-1)));
  await answer();
}

async function regenerate() {
  if (running || current?.messages.at(-1)?.role !== "assistant") return;
  current.messages.pop();
  renderMessages();
  await answer();
}

function savedOptions() {
  try {
    return JSON.parse(localStorage.getItem(OPTIONS_KEY) || "{}");
  } catch {
    return {};
  }
}

function saveOptions() {
  localStorage.setItem(OPTIONS_KEY, JSON.stringify({ model: $("model").value, thinking: $("thinking").value }));
}

async function loadModels() {
  const select = $("model");
  if (select.options.length) return;
  const models = await get("/v1/models");
  for (const m of models.data) select.append(new Option(m.id, m.id));
  const { model } = savedOptions();
  if (models.data.some((m) => m.id === model)) select.value = model;
}

async function loadKnowledgeBases() {
  if (kbLoaded) return;
  kbLoaded = true;
  const list = $("kb-list");
  list.textContent = t("chat.kb.loading");
  try {
    const bases = (await get("/v1/knowledge_bases")).data;
    list.replaceChildren();
    if (!bases.length) list.textContent = t("chat.kb.none");
    for (const kb of bases) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = kb.name;
      label.append(box, ` ${kb.name} (${kb.documents})`);
      list.append(label);
    }
  } catch (e) {
    kbLoaded = false;
    list.textContent = e.message;
  }
}

export function setupChat() {
  const { thinking } = savedOptions();
  if ([...$("thinking").options].some((o) => o.value === thinking)) $("thinking").value = thinking;
  $("model").addEventListener("change", saveOptions);
  $("thinking").addEventListener("change", saveOptions);
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
  });
  $("stop").addEventListener("click", () => running?.abort());
  $("regenerate").addEventListener("click", regenerate);
  $("new-chat").addEventListener("click", newConversation);
  $("kb-picker").addEventListener("toggle", (event) => event.target.open && loadKnowledgeBases());
  installCopyButtons($("messages"), (button) => {
    const index = [...$("messages").querySelectorAll("article")].indexOf(button.closest("article"));
    return current.messages[index]?.content || "";
  });
}

export async function showChat() {
  if (loadedScope !== keyScope()) load(); // once per key: the list in memory is the newer one
  const remembered = sessionStorage.getItem(currentKey());
  if (!current || !conversations.includes(current)) {
    if (remembered && conversations.some((c) => c.id === remembered)) open(remembered);
    else newConversation();
  } else {
    renderList();
    renderMessages();
  }
  try {
    await loadModels();
  } catch (e) {
    showError(e);
  }
}

// Signing out or in as someone else: forget what the last key had open.
export function resetChat() {
  running?.abort();
  current = null;
  conversations = [];
  loadedScope = null;
  kbLoaded = false;
  $("model").replaceChildren();
  $("kb-list").replaceChildren();
}
