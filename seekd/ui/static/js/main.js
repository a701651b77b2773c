// Boot: sign-in, the two views (#/chat, #/admin) and the language switch.

import { setupAdmin, showAdmin, stopAdmin } from "./admin.js";
import { ApiError, apiKey, get, setApiKey, whenUnauthorized } from "./api.js";
import { resetChat, setupChat, showChat } from "./chat.js";
import { applyText, language, setLanguage, t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["signin", "chat", "admin"];

function show(view) {
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
  const signedIn = view !== "signin";
  $("nav").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  for (const name of ["chat", "admin"]) {
    const link = $(`nav-${name}`);
    if (name === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (view !== "admin") stopAdmin();
}

function route() {
  if (!apiKey()) {
    show("signin");
    $("signin-key").focus();
    return;
  }
  if (location.hash === "#/admin") {
    show("admin");
    showAdmin();
  } else {
    show("chat");
    showChat();
  }
}

function signOut(message = "") {
  setApiKey(null);
  resetChat();
  $("signin-error").textContent = message;
  $("signin-status").textContent = "";
  route();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("signin-key").value.trim();
  $("signin-error").textContent = "";
  $("signin-status").textContent = t("signin.checking");
  setApiKey(key);
  try {
    await get("/v1/models"); // a wrong key answers 401 here, before any view opens
  } catch (e) {
    setApiKey(null);
    $("signin-status").textContent = "";
    if (!(e instanceof ApiError && e.status === 401)) {
      $("signin-error").textContent = e.status === 0 ? t("error.network") : t("error.generic", { status: e.status, message: e.message });
    }
    return;
  }
  $("signin-key").value = "";
  $("signin-status").textContent = "";
  resetChat();
  route();
}

function boot() {
  applyText(document);
  setupChat();
  setupAdmin();
  whenUnauthorized(() => signOut(t("error.401")));
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  $("lang").addEventListener("click", () => {
    setLanguage(language() === "en" ? "zh" : "en");
    route();
  });
  window.addEventListener("hashchange", route);
  route();
}

boot();
