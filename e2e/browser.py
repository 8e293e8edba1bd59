"""SillyTavern's real UI in headless Chromium (Debian's build, launched by Python playwright).

Actions click the same buttons a user clicks; navigation (picking a character) and reading the chat
use SillyTavern's own `SillyTavern.getContext()` API. Every wait polls a condition under a generous
deadline: the machine is a loaded 2-core box."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from playwright.sync_api import Page, sync_playwright

from e2e.procs import wait_until

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_S = 240.0


def chromium_binary() -> str:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser"):
        found = shutil.which(name) or (f"/usr/lib/chromium/{name}" if name != "chromium-browser" else None)
        if found and shutil.which(found):
            return found
    raise RuntimeError("no Debian chromium-headless-shell or chromium found: run `make e2e`")


@contextmanager
def open_page(url: str) -> Iterator[Page]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_binary(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_S * 1000)
            page.goto(url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()


class Tavern:
    """One SillyTavern tab. `requests` counts chat-completion posts seen by the recording proxy."""

    def __init__(self, page: Page, requests: Callable[[], int]) -> None:
        self.page = page
        self.requests = requests
        self.seen: list[list[dict[str, Any]]] = []  # the chat after every action, for the stray check

    # --- state -------------------------------------------------------------------------------
    def js(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def ready(self) -> None:
        """SillyTavern loaded and connected to the custom endpoint."""
        self.page.wait_for_function(
            "() => window.SillyTavern && SillyTavern.getContext().onlineStatus !== 'no_connection'",
            timeout=TIMEOUT_S * 1000,
        )
        self.page.wait_for_selector("#send_textarea", state="visible")

    def busy(self) -> bool:
        return bool(self.js("() => $('#mes_stop').is(':visible') || !$('#send_but').is(':visible')"))

    def wait_idle(self) -> None:
        wait_until(lambda: not self.busy(), TIMEOUT_S, "SillyTavern to finish generating", every_s=0.3)

    def chat(self) -> list[dict[str, Any]]:
        """What SillyTavern shows: its chat array (name, is_user, text, swipes) and the rendered text."""
        return list(
            self.js(
                """() => SillyTavern.getContext().chat.map((m, i) => ({
                    name: m.name, is_user: !!m.is_user, is_system: !!m.is_system, mes: m.mes,
                    swipe_id: m.swipe_id ?? null, swipe_texts: m.swipes ?? null,
                    shown: $(`#chat .mes[mesid="${i}"] .mes_text`).text()}))"""
            )
        )

    # --- generation wrapper ------------------------------------------------------------------
    def generating(self, action: Callable[[], None], requests: int = 1) -> None:
        """Run a UI action that sends `requests` chat requests, and wait until SillyTavern is done."""
        start = self.requests()
        action()
        wait_until(lambda: self.requests() >= start + requests, TIMEOUT_S, f"{requests} request(s)")
        self.wait_idle()
        self.settle()

    def settle(self) -> None:
        """Give SillyTavern's debounced chat save a moment (results are read from its live chat
        array and the recorder, so nothing depends on this pause), and note what it shows."""
        self.page.wait_for_timeout(500)
        self.seen.append(self.chat())

    # --- navigation --------------------------------------------------------------------------
    def open_character(self, avatar: str) -> None:
        chid = self.js("(a) => SillyTavern.getContext().characters.findIndex(c => c.avatar === a)", avatar)
        if chid < 0:
            raise RuntimeError(f"SillyTavern has no character {avatar}")
        self.js("(id) => SillyTavern.getContext().selectCharacterById(id)", chid)
        self.page.wait_for_function(
            """(id) => { const c = SillyTavern.getContext();
                return String(c.characterId) === String(id) && c.chat.length > 0
                    && $('#chat .mes').length === c.chat.length; }""",
            arg=chid,
        )

    def open_group(self, group_id: str, members: int) -> None:
        self.page.locator(f'.group_select[data-grid="{group_id}"]').first.dispatch_event("click")
        self.page.wait_for_function(
            """([g, n]) => { const c = SillyTavern.getContext();
                return c.groupId === g && c.chat.length >= n
                    && $('#chat .mes').length === c.chat.length; }""",
            arg=[group_id, members],
        )

    def menu(self, option: str) -> None:
        """An entry of the chat's options menu (the ☰ button left of the input)."""
        self.page.click("#options_button")
        self.page.click(f"#{option}")

    # --- chat actions ------------------------------------------------------------------------
    def send(self, text: str, replies: int = 1) -> None:
        self.generating(lambda: self.submit(text), replies)

    def submit(self, text: str, tries: int = 5) -> None:
        """Type and press Send. SillyTavern ignores Send while it is still finishing the previous
        generation (saving, events), though the button already shows: press again until it takes
        the text (the box empties) or a request goes out."""
        start = self.requests()
        self.page.fill("#send_textarea", text)
        for attempt in range(tries):
            self.page.click("#send_but")
            try:
                wait_until(lambda: self.taken(start), 30, "SillyTavern to take the message")
                return
            except TimeoutError:
                if attempt == tries - 1:
                    raise

    def taken(self, start: int) -> bool:
        return self.requests() > start or not self.page.input_value("#send_textarea")

    def swipe(self) -> None:
        self.generating(lambda: self.page.locator("#chat .last_mes .swipe_right").first.click())

    def regenerate(self, replies: int = 1) -> None:
        self.generating(lambda: self.menu("option_regenerate"), replies)

    def continue_(self) -> None:
        self.generating(lambda: self.menu("option_continue"))

    def impersonate(self) -> str:
        self.generating(lambda: self.menu("option_impersonate"))
        return str(self.page.input_value("#send_textarea"))

    def send_and_stop(self, text: str, stop_after_chars: int) -> None:
        """Send, wait until some streamed text is on screen, then press Stop."""
        start = self.requests()
        self.submit(text)
        wait_until(lambda: self.requests() > start, TIMEOUT_S, "the request")
        self.page.wait_for_function(
            "(n) => $('#chat .last_mes .mes_text').text().length >= n", arg=stop_after_chars
        )
        self.page.click("#mes_stop")
        self.wait_idle()
        self.settle()

    def edit(self, mesid: int, text: str) -> None:
        message = self.page.locator(f'#chat .mes[mesid="{mesid}"]')
        message.locator(".mes_edit").first.dispatch_event("click")
        self.page.fill("#curEditTextarea", text)
        message.locator(".mes_edit_done").first.dispatch_event("click")
        self.page.wait_for_function(
            "([i, t]) => SillyTavern.getContext().chat[i].mes === t && !$('#curEditTextarea').length",
            arg=[mesid, text],
        )
        self.settle()

    def delete_last(self) -> None:
        """☰ → Delete messages, tick the last message, Delete. The ticks appear with an animation and
        a click before that is ignored, so wait for the box, and for it to be ticked."""
        before = int(self.js("() => SillyTavern.getContext().chat.length"))
        self.menu("option_delete_mes")
        last = self.page.locator("#chat .mes").last
        last.locator(".del_checkbox").wait_for(state="visible")
        last.click()
        self.page.wait_for_function("() => $('#chat .mes').last().children('.del_checkbox').prop('checked')")
        self.page.click("#dialogue_del_mes_ok")
        self.page.wait_for_function("(n) => SillyTavern.getContext().chat.length === n - 1", arg=before)
        self.settle()

    def new_chat(self) -> None:
        self.menu("option_start_new_chat")
        self.page.click(".popup-button-ok")
        self.page.wait_for_function(
            "() => { const c = SillyTavern.getContext(); return c.chat.length === 1"
            " && $('#chat .mes').length === 1; }"
        )
        self.settle()

    def quiet(self, prompt: str) -> str:
        """A quiet generation (what extensions and /gen do): not shown in the chat."""
        start = self.requests()
        result = self.js("(p) => SillyTavern.getContext().generateQuietPrompt({ quietPrompt: p })", prompt)
        wait_until(lambda: self.requests() > start, TIMEOUT_S, "the quiet request")
        return str(result)

    # --- settings (through the controls' own handlers) ---------------------------------------
    def set_names(self, behaviour: str) -> None:
        """`none`, `default`, `completion` (Completion Object) or `content` (Message Content)."""
        self.js(f"() => $('#character_names_{behaviour}').prop('checked', true).trigger('input')")

    def set_continue_prefill(self, on: bool) -> None:
        self.js("(on) => $('#continue_prefill').prop('checked', on).trigger('input')", on)

    def set_context(self, tokens: int) -> None:
        self.js(
            """(n) => { $('#oai_max_context_unlocked').prop('checked', true).trigger('input');
                $('#openai_max_context').val(n).trigger('input'); }""",
            tokens,
        )
        got = self.js("() => SillyTavern.getContext().chatCompletionSettings.openai_max_context")
        if int(got) != tokens:
            raise RuntimeError(f"SillyTavern kept context size {got}, not {tokens}")

    def set_headers(self, yaml: str) -> None:
        """Custom headers sent with every request (the "Additional Parameters" dialog's field)."""
        self.js(
            """(y) => { const c = SillyTavern.getContext();
                c.chatCompletionSettings.custom_include_headers = y; c.saveSettingsDebounced(); }""",
            yaml,
        )

    def reset_settings(self) -> None:
        self.set_headers("")
        self.set_names("default")
        self.set_continue_prefill(False)
        self.set_context(8192)
