"""The /ui page in a real Chromium against a real `seekd serve` on the demo model: chat with streamed
answers, folded reasoning, stop, regenerate and conversations that survive a reload; the admin
console creating, re-limiting and revoking a key (whose holder then sees the 401), tenants and the
verified audit chain; a user key refused by the admin API (403) and told so by the page. Every
view passes axe-core with no serious or critical violation, at desktop and phone width."""

from __future__ import annotations

import httpx
import pytest

from .conftest import PHONE, Tab, UiServer, axe_violations, screenshot, sign_in, skip_without_a_browser, sync_api

skip_without_a_browser()
pytestmark = pytest.mark.slow

expect = sync_api.expect
ANSWER_TIMEOUT_MS = 90_000  # the demo answers 256 tokens; a loaded 2-core machine makes ~30 a second


def send(page: sync_api.Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")


def last_answer(page: sync_api.Page) -> sync_api.Locator:
    return page.locator("article.message.assistant").last


def wait_until_done(page: sync_api.Page) -> None:
    expect(last_answer(page).locator(".message-footer")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Send")).to_be_visible()


def chat_posts(tab: Tab) -> int:
    return sum(url.endswith("/v1/chat/completions") for url in tab.requests)


def test_sign_in_page_has_no_serious_accessibility_violations(open_tab) -> None:
    page = open_tab().page
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "signin")
    assert axe_violations(page) == []


def test_a_wrong_key_is_refused_with_the_401(open_tab) -> None:
    page = open_tab().page
    sign_in(page, "sk-seekd-00000000_wrong")
    expect(page.get_by_role("alert")).to_contain_text("401")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_chat_streams_folds_reasoning_stops_regenerates_and_survives_a_reload(open_tab, ui_server: UiServer) -> None:
    tab = open_tab()
    page = tab.page
    sign_in(page, ui_server.user_key)
    expect(page.get_by_label("Model", exact=True)).to_have_value("seekd-demo-random")

    # Thinking mode: the demo's random tokens are all reasoning, shown folded above the (empty) answer.
    page.get_by_label("Thinking", exact=True).select_option("on")
    send(page, "What is $e^{i\\pi}$? Show `code`.")
    reasoning = last_answer(page).locator("details.reasoning")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(reasoning.locator("summary")).to_have_text("Thinking…")  # seen while the answer streams
    partial = len(reasoning.locator(".reasoning-body").text_content())
    wait_until_done(page)
    assert reasoning.get_attribute("open") is None  # folded
    assert len(reasoning.locator(".reasoning-body").text_content()) > partial > 0
    expect(reasoning.locator("summary")).to_have_text("Reasoning")
    reasoning.locator("summary").click()
    expect(reasoning.locator(".reasoning-body")).to_be_visible()
    user_turn = page.locator("article.message.user").first
    expect(user_turn).to_contain_text("What is $e^{i\\pi}$?")  # the user's own text is never rendered

    # Chat mode: the answer streams as content; Stop ends it mid-stream and keeps what came.
    page.get_by_label("Thinking", exact=True).select_option("off")
    send(page, "Tell me a long story.")
    answer = last_answer(page).locator(".answer")
    expect(answer).not_to_be_empty()
    page.get_by_role("button", name="Stop").click()
    expect(last_answer(page).locator(".message-footer")).to_contain_text("Stopped.")
    stopped = answer.text_content()
    page.wait_for_timeout(500)
    assert answer.text_content() == stopped and stopped

    # Regenerate replaces the last answer with a new, complete one.
    posts = chat_posts(tab)
    page.get_by_role("button", name="Regenerate").click()
    wait_until_done(page)
    assert chat_posts(tab) == posts + 1
    assert page.locator("article.message.assistant").count() == 2
    expect(last_answer(page).locator(".message-footer")).to_contain_text("256 tokens")
    regenerated = last_answer(page).locator(".answer").text_content()
    assert regenerated and regenerated != stopped
    screenshot(page, "chat")
    assert axe_violations(page) == []

    # A reload keeps the key (this tab's session), the conversation and the options (this browser's storage).
    page.reload()
    expect(page.get_by_label("Thinking", exact=True)).to_have_value("off")
    conversation = page.get_by_role("button", name="What is $e^{i\\pi}$? Show `code`.", exact=True)
    expect(conversation).to_be_visible()
    expect(last_answer(page).locator(".answer")).to_have_text(regenerated)
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("article.message")).to_have_count(0)
    conversation.click()
    expect(page.locator("article.message")).to_have_count(4)


SAMPLE_ANSWER = """Euler's identity links five constants: $e^{i\\pi} + 1 = 0$.

$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$

| constant | value |
| --- | --- |
| $\\pi$ | 3.14159 |

```python
import math
print(math.e ** (1j * math.pi))
```
"""
SAMPLE_CONVERSATION = {
    "id": "sample",
    "title": "Euler's identity",
    "updated": 1,
    "messages": [
        {"role": "user", "content": "Explain Euler's identity and check it in Python."},
        {
            "role": "assistant",
            "reasoning": "The user wants the identity, an integral example and code.",
            "content": SAMPLE_ANSWER,
            "tool_calls": [{"id": "call_0", "function": {"name": "run_python", "arguments": '{"code": "1+1"}'}}],
            "finish": "stop",
            "usage": {"completion_tokens": 87},
        },
    ],
}


def test_markdown_code_math_tool_calls_and_copy_buttons_render(open_tab, ui_server: UiServer) -> None:
    """A stored conversation as a model could have written it: highlighted code with a working copy
    button, typeset math, a table, the tool call, the folded reasoning."""
    page = open_tab().page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, ui_server.user_key)
    expect(page.get_by_label("Model", exact=True)).to_have_value("seekd-demo-random")
    key_id = ui_server.user_key[len("sk-seekd-") :].split("_")[0]
    page.evaluate(
        "([key, conversation]) => localStorage.setItem(key, JSON.stringify([conversation]))",
        [f"seekd.conversations.{key_id}", SAMPLE_CONVERSATION],
    )
    page.reload()
    page.get_by_role("button", name="Euler's identity", exact=True).click()
    answer = last_answer(page)
    expect(answer.locator(".katex")).to_have_count(3)
    expect(answer.locator(".katex-display")).to_have_count(1)
    expect(answer.locator("table td").first).to_contain_text("π")
    expect(answer.locator(".hljs-keyword").first).to_have_text("import")
    expect(answer.locator(".tool-call")).to_contain_text("run_python")
    expect(answer.locator("details.reasoning")).not_to_have_attribute("open", "")
    screenshot(page, "chat-markdown")
    answer.get_by_role("button", name="Copy code").click()
    assert page.evaluate("navigator.clipboard.readText()") == "import math\nprint(math.e ** (1j * math.pi))"
    answer.get_by_role("button", name="Copy", exact=True).click()
    assert page.evaluate("navigator.clipboard.readText()") == SAMPLE_ANSWER
    assert axe_violations(page) == []


def test_model_html_and_script_urls_are_shown_inert(open_tab, ui_server: UiServer) -> None:
    page = open_tab().page
    sign_in(page, ui_server.user_key)
    expect(page.get_by_label("Model", exact=True)).to_have_value("seekd-demo-random")
    html = page.evaluate(
        """async () => (await import('./js/render.js')).markdownToHtml(
            '<img src=x onerror=alert(1)> [link](javascript:alert(1)) <script>alert(2)</script> ![i](http://a.example/x.png)')"""
    )
    assert "<img" not in html and "<script" not in html and "javascript:" not in html and "a.example" not in html
    assert "&lt;img src=x" in html


def test_chosen_knowledge_base_is_searched_and_its_sources_shown(open_tab, ui_server: UiServer) -> None:
    kbs = f"{ui_server.handle.base_url}/v1/knowledge_bases"
    headers = {"Authorization": f"Bearer {ui_server.user_key}"}
    assert httpx.post(kbs, headers=headers, json={"name": "handbook"}, timeout=120).status_code == 200
    document = {"name": "leave.md", "text": "# Leave\n\nEvery employee has 25 days of paid leave a year."}
    assert httpx.post(f"{kbs}/handbook/documents", headers=headers, json=document, timeout=120).status_code == 200
    page = open_tab().page
    sign_in(page, ui_server.user_key)
    page.locator("summary", has_text="Knowledge bases").click()
    page.get_by_label("handbook (1)").check()
    send(page, "How many days of paid leave do I have?")
    sources = last_answer(page).locator(".citations")
    expect(sources).to_contain_text("handbook / leave.md", timeout=ANSWER_TIMEOUT_MS)
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible()


def test_admin_creates_relimits_and_revokes_a_key_whose_holder_then_sees_401(open_tab, ui_server: UiServer) -> None:
    admin = open_tab()
    page = admin.page
    sign_in(page, ui_server.admin_key)
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Admin console")).to_be_visible()
    expect(page.locator("#m-model")).to_have_text("seekd-demo-random")

    page.get_by_label("Tenant", exact=True).fill("tenant-ui")
    page.get_by_label("Name", exact=True).fill("from the browser")
    page.get_by_label("Models", exact=True).fill("seekd-demo-random")
    page.get_by_role("button", name="Create key").click()
    created = page.locator("#created-key-value")
    expect(created).to_contain_text("sk-seekd-")
    new_key = created.text_content()
    key_id = new_key[len("sk-seekd-") :].split("_")[0]
    row = page.locator(f'#keys-table tr[data-key-id="{key_id}"]')
    expect(row).to_contain_text("tenant-ui")
    expect(row.locator("td").nth(4)).to_have_text("seekd-demo-random")
    expect(page.locator("#tenants-table")).to_contain_text("tenant-ui")

    row.get_by_label(f"Requests/min {key_id}").fill("120")
    row.get_by_role("button", name=f"Save limits {key_id}").click()
    headers = {"Authorization": f"Bearer {ui_server.admin_key}"}

    def listed_rpm() -> int:
        keys = httpx.get(f"{ui_server.handle.base_url}/admin/keys", headers=headers, timeout=10).json()["data"]
        return next(k["rpm"] for k in keys if k["id"] == key_id)

    expect(row.get_by_label(f"Requests/min {key_id}")).to_have_value("120")
    assert listed_rpm() == 120

    holder = open_tab().page  # a second browser: the new key's holder
    sign_in(holder, new_key)
    expect(holder.get_by_label("Model", exact=True)).to_have_value("seekd-demo-random")

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=f"Revoke {key_id}").click()
    expect(row).to_contain_text("revoked")
    send(holder, "still there?")
    expect(holder.get_by_role("alert")).to_contain_text("401")
    expect(holder.get_by_role("heading", name="Sign in")).to_be_visible()

    status = page.locator("#audit-status")
    expect(status).to_contain_text("Chain verified")
    expect(page.locator("#audit-table")).to_contain_text(f"DELETE /admin/keys/{key_id}")
    page.set_viewport_size({"width": 1280, "height": 1700})
    screenshot(page, "admin", mask=[created])
    assert axe_violations(page) == []


def test_a_user_key_cannot_open_the_admin_console(open_tab, ui_server: UiServer) -> None:
    base = ui_server.handle.base_url
    user = {"Authorization": f"Bearer {ui_server.user_key}"}
    for method, path in [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("PATCH", "/admin/keys/abcdef12"),
        ("GET", "/admin/tenants"),
        ("DELETE", "/admin/tenants/team-a"),
        ("GET", "/admin/audit"),
        ("GET", "/metrics"),
    ]:
        response = httpx.request(method, base + path, headers=user, json={}, timeout=10)
        assert response.status_code == 403, (method, path, response.text)

    tab = open_tab()
    page = tab.page
    statuses: dict[str, int] = {}
    page.on("response", lambda response: statuses.setdefault(response.url.removeprefix(base), response.status))
    sign_in(page, ui_server.user_key)
    expect(page.get_by_label("Model", exact=True)).to_be_visible()
    page.goto(ui_server.url + "#/admin")
    expect(page.get_by_role("alert")).to_contain_text("admin role")
    expect(page.locator("#keys-table")).to_be_hidden()
    assert statuses["/admin/keys"] == 403


def test_phone_width_chat_fits_and_passes_axe(open_tab, ui_server: UiServer) -> None:
    page = open_tab(viewport=PHONE).page
    sign_in(page, ui_server.user_key)
    expect(page.get_by_label("Model", exact=True)).to_have_value("seekd-demo-random")
    page.get_by_label("Thinking", exact=True).select_option("on")
    send(page, "你好")
    reasoning = last_answer(page).locator("details.reasoning")
    expect(reasoning).to_be_visible()
    page.get_by_role("button", name="中文").click()  # mid-stream: the view is redrawn, the stream goes on
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(reasoning.locator("summary")).to_have_text("思考中…")
    streamed = len(reasoning.locator(".reasoning-body").text_content())
    page.wait_for_function(
        "n => document.querySelector('article.assistant:last-of-type .reasoning-body').textContent.length > n",
        arg=streamed,
    )
    page.get_by_role("button", name="停止").click()
    expect(page.get_by_role("button", name="发送")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "chat-phone-zh")
    assert axe_violations(page) == []
