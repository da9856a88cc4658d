"""Playwright helpers that click SillyTavern 1.19's own page, waiting on conditions only.

Every action waits for what it causes: a generation action waits until the tap has seen the
expected number of finished generation requests and SillyTavern's page is idle again (no
``data-generating`` on ``<body>``, no group generation running); an open waits for the chat id
in SillyTavern's context. The only script run in the page is a read-only probe that counts
SillyTavern's own events (it never changes a request).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from playwright.sync_api import BrowserContext, Page, Playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.e2e.stack import Stack

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000

_PROBE = """() => {
  if (window.__e2e) return;
  const c = SillyTavern.getContext();
  const e2e = window.__e2e = {started: [], ended: 0, chats: []};
  c.eventSource.on(c.eventTypes.GENERATION_STARTED, (type, opts, dry) => {
    if (!dry) e2e.started.push(type ?? 'normal');
  });
  c.eventSource.on(c.eventTypes.GENERATION_ENDED, () => { e2e.ended += 1; });
  c.eventSource.on(c.eventTypes.CHAT_CHANGED, (id) => { e2e.chats.push(id ?? null); });
}"""

_IDLE = """() => {
  const c = SillyTavern.getContext();
  return !document.body.dataset.generating
    && getComputedStyle(document.getElementById('mes_stop')).display === 'none'
    && !document.querySelector('#send_form.no-connection')
    && !(c.groupId && document.querySelector('#rm_group_chats_block .group_generating'));
}"""


_SENT = "() => document.querySelector('#send_textarea').value === ''"


def wait_until(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def launch(pw: Playwright, chromium: str, user_data_dir: str) -> tuple[BrowserContext, Page]:
    """Chromium from Debian with the e2e flags and a fresh profile directory."""
    context = pw.chromium.launch_persistent_context(
        user_data_dir,
        executable_path=chromium,
        args=CHROMIUM_FLAGS,
        headless=True,
        viewport={"width": 1280, "height": 900},
    )
    page = context.pages[0] if context.pages else context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return context, page


F = TypeVar("F", bound=Callable[..., Any])


def _timed(method: F) -> F:
    """Log how long a page action took (``StPage.log_step``)."""

    @functools.wraps(method)
    def wrapper(self: StPage, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = method(self, *args, **kwargs)
        self.log_step(f"{method.__name__}{args}: {time.monotonic() - started:.1f} s")
        return result

    return wrapper  # type: ignore[return-value]


@dataclass
class StPage:
    """SillyTavern's page in the browser, bound to the running stack."""

    page: Page
    stack: Stack

    # -- basics ---------------------------------------------------------------------------
    def open(self) -> None:
        started = time.monotonic()
        self.page.goto(self.stack.st_url)
        self.page.wait_for_function(
            "() => window.SillyTavern && !document.querySelector('.splash-screen')"
            " && document.querySelector('#rm_print_characters_block .character_select')"
        )
        self.page.evaluate(_PROBE)
        self.log_step(f"page ready in {time.monotonic() - started:.1f} s")

    def context(self) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate(
            """() => { const c = SillyTavern.getContext();
              return {chatId: c.chatId ?? null, groupId: c.groupId ?? null,
                      characterId: c.characterId ?? null, name2: c.name2,
                      mainApi: c.mainApi, online: c.onlineStatus,
                      chatLength: c.chat.length}; }"""
        )
        return result

    def n_generations(self) -> int:
        assert self.stack.tap is not None
        return len(self.stack.tap.generations())

    def wait_idle(self, expect_generations: int) -> None:
        """Until the tap saw ``expect_generations`` finished generations and the page is idle."""
        tap = self.stack.tap
        assert tap is not None
        wait_until(
            lambda: len(tap.finished_generations()) >= expect_generations,
            f"{expect_generations} finished generation requests "
            f"(seen {len(tap.finished_generations())})",
        )
        self.page.wait_for_function(_IDLE)

    def _generate(self, action: Callable[[], None], n: int = 1) -> None:
        before = self.n_generations()
        started = time.monotonic()
        action()
        clicked = time.monotonic()
        self.wait_idle(before + n)
        self.log_step(
            f"{n} generation(s): click {clicked - started:.1f} s, "
            f"until idle {time.monotonic() - clicked:.1f} s"
        )

    def log_step(self, text: str) -> None:
        """Append a timed line to ``<workdir>/steps.log`` (where the e2e's time goes)."""
        with (self.stack.workdir / "steps.log").open("a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    def _click_option(self, option_id: str) -> None:
        self.page.click("#options_button")
        self.page.click(f"#{option_id}")

    # -- connecting ------------------------------------------------------------------------
    @_timed
    def connect_text_completion(self) -> None:
        """API Connections → Text Completion (llama.cpp, URL seeded) → Connect."""
        self._select_api("textgenerationwebui", "#api_button_textgenerationwebui")

    @_timed
    def connect_chat_completion(self) -> None:
        """API Connections → Chat Completion (Custom source, URL seeded) → Connect."""
        self._select_api("openai", "#api_button_openai")

    def _select_api(self, main_api: str, button: str) -> None:
        self.page.click("#API-status-top")  # the API Connections drawer
        self.page.wait_for_selector("#main_api", state="visible")
        self.page.select_option("#main_api", main_api)
        self.page.wait_for_function(
            "(api) => SillyTavern.getContext().mainApi === api", arg=main_api
        )
        self.page.click(button)
        self.page.wait_for_function(
            "() => !['no_connection', 'Connecting...', undefined]"
            ".includes(SillyTavern.getContext().onlineStatus)"
        )
        self.page.click("#API-status-top")  # close the drawer
        self.page.wait_for_selector("#main_api", state="hidden")

    # -- opening chats ---------------------------------------------------------------------
    @_timed
    def open_character(self, avatar: str) -> str:
        """Click a character in the list; returns the chat id SillyTavern opened."""
        before = self.context()["chatId"]
        # The character list can still re-render right after it appears, so a click may land
        # on a neighbour (seen: Brann opened instead of Seraphina). Click again until the
        # character SillyTavern opened is the one asked for.
        for attempt in range(4):
            self._show_characters()
            self.page.click(
                f"#rm_print_characters_block .character_select:has(img[src*='file={avatar}'])"
            )
            try:
                return str(
                    self.page.wait_for_function(
                        """([avatar, before]) => { const c = SillyTavern.getContext();
                          const ch = c.characters[c.characterId];
                          return !c.groupId && ch && ch.avatar === avatar && c.chatId
                            && (c.chatId !== before || true) && document.querySelector('#chat .mes')
                            ? c.chatId : null; }""",
                        arg=[avatar, before],
                        timeout=30_000 if attempt < 3 else 120_000,
                    ).json_value()
                )
            except PlaywrightTimeout:
                if attempt == 3:
                    raise
        raise AssertionError("unreachable")

    @_timed
    def open_group(self, group_id: str) -> str:
        self._show_characters()
        self.page.click(f"#rm_print_characters_block .group_select[data-grid='{group_id}']")
        return str(
            self.page.wait_for_function(
                """(gid) => { const c = SillyTavern.getContext();
                  return c.groupId === gid && c.chatId && document.querySelector('#chat .mes')
                    ? c.chatId : null; }""",
                arg=group_id,
            ).json_value()
        )

    @_timed
    def open_chat_from_list(self, chat_file: str) -> None:
        """Options → Manage chat files → click the chat (file name without .jsonl)."""
        self._click_option("option_select_chat")
        block = self.page.locator(f".select_chat_block[file_name='{chat_file}.jsonl']")
        if block.count() == 0:
            block = self.page.locator(f".select_chat_block[file_name='{chat_file}']")
        block.first.click()
        self.page.wait_for_function(
            "(id) => SillyTavern.getContext().chatId === id"
            " && document.querySelector('#chat .mes')",
            arg=chat_file,
        )
        self.page.keyboard.press("Escape")
        self.page.wait_for_function("() => !document.querySelector('dialog.popup[open]')")

    def _show_characters(self) -> None:
        if not self.page.is_visible("#rm_print_characters_block"):
            self.page.click("#rightNavDrawerIcon")
            if not self.page.is_visible("#rm_print_characters_block"):
                self.page.click("#rm_button_characters")
            self.page.wait_for_selector("#rm_print_characters_block", state="visible")

    # -- generating ------------------------------------------------------------------------
    def send(self, text: str, replies: int = 1) -> None:
        """Type into the input box and press Send; waits for ``replies`` generations."""

        def act() -> None:
            self.page.fill("#send_textarea", text)
            # SillyTavern ignores Send while it still finishes the last reply (seen once in a
            # few runs: the text stays in the box); it empties the box when it takes the text
            for _attempt in range(3):
                self.page.click("#send_but")
                try:
                    self.page.wait_for_function(_SENT, timeout=10_000)
                    return
                except PlaywrightTimeout:
                    continue
            raise AssertionError(f"SillyTavern did not take the message {text!r}")

        self._generate(act, replies)

    def swipe(self) -> None:
        """The right arrow on the last reply (a new alternative is generated)."""

        def act() -> None:
            self.page.hover("#chat .last_mes")
            self.page.click("#chat .last_mes .swipe_right")

        self._generate(act)

    def regenerate(self, replies: int = 1) -> None:
        self._generate(lambda: self._click_option("option_regenerate"), replies)

    def continue_(self) -> None:
        self._generate(lambda: self._click_option("option_continue"))

    def impersonate(self) -> str:
        self._generate(lambda: self._click_option("option_impersonate"))
        value: str = self.page.input_value("#send_textarea")
        self.page.fill("#send_textarea", "")
        return value

    @_timed
    def edit_message(self, index: int, text: str) -> None:
        """The pencil on message ``index`` (negative: from the end), new text, Done."""
        if index < 0:
            index += int(self.context()["chatLength"])
        mes = self.page.locator(f"#chat .mes[mesid='{index}']")
        mes.hover()
        hint = mes.locator(".extraMesButtonsHint")
        edit = mes.locator(".mes_edit")
        if not edit.is_visible() and hint.count() and hint.first.is_visible():
            hint.first.click()
        edit.click()
        self.page.fill("#curEditTextarea", text)
        mes.locator(".mes_edit_done").click()
        self.page.wait_for_function(
            "([i, t]) => SillyTavern.getContext().chat[i].mes === t"
            " && !document.querySelector('#curEditTextarea')",
            arg=[index, text],
        )

    # -- chat edits and settings -------------------------------------------------------------
    def messages(self) -> list[dict[str, Any]]:
        """The chat as SillyTavern holds it: each message's speaker, text and ``is_user``."""
        result: list[dict[str, Any]] = self.page.evaluate(
            """() => SillyTavern.getContext().chat.map(
                 (m) => ({name: m.name, mes: m.mes, is_user: !!m.is_user}))"""
        )
        return result

    @_timed
    def delete_from(self, index: int) -> None:
        """Options → Delete messages, click message ``index`` (negative: from the end; it and
        every message after it are selected), Delete."""
        if index < 0:
            index += int(self.context()["chatLength"])
        self._click_option("option_delete_mes")
        self.page.wait_for_selector("#dialogue_del_mes", state="visible")
        mes = self.page.locator(f"#chat .mes[mesid='{index}']")
        mes.locator(".del_checkbox").wait_for(state="visible")
        mes.click()
        self.page.wait_for_function(
            "(i) => document.querySelector(`#chat .mes[mesid='${i}']`).classList"
            ".contains('selected')",
            arg=index,
        )
        self.page.click("#dialogue_del_mes_ok")
        self.page.wait_for_function(
            "(n) => SillyTavern.getContext().chat.length === n"
            " && document.querySelectorAll('#chat .mes').length === n",
            arg=index,
        )

    @_timed
    def set_authors_note(self, text: str, depth: int = 0) -> None:
        """Options → Author's Note: this chat's note ``text``, "In-chat @ Depth" ``depth``."""
        self._click_option("option_toggle_AN")
        self.page.wait_for_selector("#floatingPrompt", state="visible")
        if not self.page.is_visible("#extension_floating_prompt"):
            self.page.click("#ANBlockToggle")
        self.page.fill("#extension_floating_prompt", text)
        self.page.check("#extension_floating_position_depth")
        self.page.fill("#extension_floating_depth", str(depth))
        self.page.wait_for_function(
            """([t, d]) => { const m = SillyTavern.getContext().chatMetadata;
              return m.note_prompt === t && m.note_depth === d && m.note_position === 1; }""",
            arg=[text, depth],
        )
        self.page.click("#ANClose")
        self.page.wait_for_selector("#floatingPrompt", state="hidden")

    @_timed
    def set_macro_engine(self, experimental: bool) -> None:
        """User Settings → "Experimental Macro Engine" (1.19's default: on) checked or not."""
        self.page.click("#user-settings-button .drawer-toggle")
        self.page.wait_for_selector("#user-settings-block", state="visible")
        self.page.set_checked("#experimental_macro_engine", experimental)
        self.page.wait_for_function(
            "(on) => SillyTavern.getContext().powerUserSettings.experimental_macro_engine === on",
            arg=experimental,
        )
        self.page.click("#user-settings-button .drawer-toggle")
        self.page.wait_for_selector("#user-settings-block", state="hidden")
