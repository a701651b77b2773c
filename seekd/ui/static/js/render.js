// Model text to safe HTML: markdown (marked), math (KaTeX), code highlighting (highlight.js), then
// DOMPurify over the result, since a model's output is untrusted (it may echo a prompt injection).
/* global marked, DOMPurify, hljs, katex */

import { t } from "./i18n.js";

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function renderMath(tex, displayMode) {
  try {
    return katex.renderToString(tex, { displayMode, throwOnError: false, output: "htmlAndMathml" });
  } catch {
    return `<code>${escapeHtml(tex)}</code>`;
  }
}

const mathExtensions = [
  {
    name: "blockMath",
    level: "block",
    start: (src) => src.match(/\$\$|\\\[/)?.index,
    tokenizer(src) {
      const match = /^\$\$([\s\S]+?)\$\$|^\\\[([\s\S]+?)\\\]/.exec(src);
      if (match) return { type: "blockMath", raw: match[0], text: (match[1] ?? match[2]).trim() };
      return undefined;
    },
    renderer: (token) => `<div class="math-block">${renderMath(token.text, true)}</div>`,
  },
  {
    name: "inlineMath",
    level: "inline",
    start: (src) => src.match(/\$|\\\(/)?.index,
    tokenizer(src) {
      // $x$ needs no space inside its delimiters and no digit after it, so "$5 and $6" stays text
      const match = /^\$\$([^$]+?)\$\$|^\$(?!\s)([^$\n]+?)(?<!\s)\$(?!\d)|^\\\(([\s\S]+?)\\\)/.exec(src);
      if (!match) return undefined;
      const display = match[1] !== undefined;
      return { type: "inlineMath", raw: match[0], text: (match[1] ?? match[2] ?? match[3]).trim(), display };
    },
    renderer: (token) => renderMath(token.text, token.display),
  },
];

marked.use({
  gfm: true,
  breaks: false,
  extensions: mathExtensions,
  renderer: {
    code({ text, lang }) {
      const language = (lang || "").split(/\s/)[0];
      const highlighted =
        language && hljs.getLanguage(language)
          ? hljs.highlight(text, { language, ignoreIllegals: true }).value
          : hljs.highlightAuto(text).value;
      return (
        `<div class="code-block"><div class="code-bar"><span>${escapeHtml(language || "text")}</span>` +
        `<button type="button" class="copy" data-copy="code">${escapeHtml(t("chat.copy.code"))}</button></div>` +
        `<pre><code class="hljs">${highlighted}</code></pre></div>`
      );
    },
    html({ text }) {
      return escapeHtml(text); // raw HTML in model output is shown, never run
    },
  },
});

const PURIFY = {
  FORBID_TAGS: ["img", "style", "form", "input", "iframe", "video", "audio", "source", "object", "embed"],
  FORBID_ATTR: ["srcset", "formaction"],
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("rel", "noopener noreferrer");
    node.setAttribute("target", "_blank");
  }
});

export function markdownToHtml(text) {
  return DOMPurify.sanitize(marked.parse(text), PURIFY);
}

export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea"); // plain-http deployments have no clipboard API
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

// One listener for every copy button, present and future (rendered HTML carries no handlers).
export function installCopyButtons(root, textOf) {
  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    const text =
      button.dataset.copy === "code" ? button.closest(".code-block").querySelector("code").textContent : textOf(button);
    await copyText(text);
    const label = button.textContent;
    button.textContent = t("chat.copied");
    setTimeout(() => (button.textContent = label), 1200);
  });
}
