"""The dashboard: every action a user takes on the slots, bound to a key.

Each binding has an ``id`` equal to its action name, so ``keymap = { save_slot = "ctrl+s" }`` in
the config file rebinds it; the same actions are offered in the command palette. Anything that
touches the server or the disk runs in a ``job`` worker (see ``LiveScreen``); dialogs only collect
input and return it.
"""

from __future__ import annotations

import asyncio

from textual import work
from textual.binding import Binding

from kvtui.events import Kind
from kvtui.service import BatchResult
from kvtui.settings import save_settings
from kvtui.tui.lookups import assign_suggestions, picker_data
from kvtui.tui.reports import Report, load_report, save_report
from kvtui.tui.screens.assign_dialog import AssignDialog
from kvtui.tui.screens.confirm import ConfirmModal
from kvtui.tui.screens.help import HelpScreen
from kvtui.tui.screens.live import LiveScreen
from kvtui.tui.screens.load_picker import LoadPicker
from kvtui.tui.screens.prewarm import PrewarmScreen
from kvtui.tui.screens.settings_form import SettingsScreen
from kvtui.tui.screens.tag_dialog import TagDialog

SAVE_KINDS = frozenset({Kind.SAVE, Kind.ROTATE})
LOAD_KINDS = frozenset({Kind.LOAD, Kind.EVICT, Kind.AUTOSAVE, Kind.ROTATE})
ERASE_KINDS = frozenset({Kind.ERASE})


def _binding(
    key: str, action: str, description: str, tooltip: str, *, show: bool = True
) -> Binding:
    return Binding(key, action, description, tooltip=tooltip, id=action, show=show)


HELP = _binding("question_mark", "help", "Help", "What kvtui does and every key.")
QUIT = _binding("q", "quit", "Quit", "Quit kvtui (save files stay on disk).")
ACTIONS = [
    _binding("s", "save_slot", "Save", "Save the selected slot's cache to a new file."),
    _binding("a", "save_all", "Save all", "Save every active character now, without a tag."),
    _binding("t", "save_tagged", "Tag", "Save every active character with a tag."),
    _binding("l", "load", "Load", "Pick saves to load: chat, then character, then save."),
    _binding("p", "prewarm", "Prewarm", "Warm every chosen member of a chat before it starts."),
    _binding("f2", "settings", "Settings", "Edit, validate, save and apply the settings."),
    _binding(
        "m", "memory", "Memory", "Make a scene memory of a chat into its lorebook.", show=False
    ),
    _binding(
        "o", "sideprompts", "Side prompts", "Trackers kept in the chat's lorebook.", show=False
    ),
    # Off the footer at 80 columns; in the help (?), the palette (ctrl+p) and the log's hint.
    _binding(
        "c", "assign", "Assign", "Assign a chat and character to the selected slot.", show=False
    ),
    _binding(
        "e", "erase", "Erase", "Erase the selected slot on the server (files stay).", show=False
    ),
    _binding(
        "x", "clear_all", "Clear all", "Erase every slot on the server (files stay).", show=False
    ),
    _binding("r", "refresh", "Refresh", "Poll the server now.", show=False),
]


class DashboardScreen(LiveScreen):
    """The main screen: the live view plus the actions on it.

    The footer shows help first and quit last, with the main actions between; at 80 columns
    every one of them fits. The rest are in the help screen and the command palette.
    """

    BINDINGS = [HELP, *ACTIONS, QUIT]

    # -- saving ------------------------------------------------------------------------------

    def action_save_slot(self) -> None:
        row = self.selected_row(need_character=True)
        if row is not None and self.claim(f"saving slot {row.slot}"):
            self._save_slot(row.slot)

    @work(group="job", exit_on_error=False, description="Saving a slot")
    async def _save_slot(self, slot: int) -> None:
        with self.job(SAVE_KINDS), self.busy(f"Saving slot {slot}…"):
            outcome = await self.service.save_slot(slot)
            self.report(save_report(BatchResult((outcome,)), None))

    def action_save_all(self) -> None:
        if self.claim("saving every active character"):
            self._save_all(None)

    def action_save_tagged(self) -> None:
        if self.claim("saving with a tag"):
            self._save_tagged()

    @work(group="job", exit_on_error=False, description="Saving with a tag")
    async def _save_tagged(self) -> None:
        with self.job(SAVE_KINDS):
            characters = [row.character for row in self.rows if row.character]
            tag = await self.app.push_screen_wait(TagDialog(characters))
            if tag:
                await self._save_everyone(tag)

    @work(group="job", exit_on_error=False, description="Saving all slots")
    async def _save_all(self, tag: str | None) -> None:
        with self.job(SAVE_KINDS):
            await self._save_everyone(tag)

    async def _save_everyone(self, tag: str | None) -> None:
        what = f"with tag {tag}" if tag else "now"
        with self.busy(f"Saving every active character {what}…"):
            results = await self.service.save_all(tag)
        self.report(save_report(results, tag))

    # -- loading and assigning ---------------------------------------------------------------

    def action_load(self) -> None:
        if self.claim("loading saves"):
            self._load()

    @work(group="job", exit_on_error=False, description="Loading saves")
    async def _load(self) -> None:
        with self.job(LOAD_KINDS):
            table_chat = self.selected_chat()
            with self.busy("Reading the save directory…"):
                data = await asyncio.to_thread(picker_data, self.service, table_chat)
            self.chat_titles = dict(data.titles)
            picker = LoadPicker(data.entries, data.current_chat, data.titles)
            chosen = await self.app.push_screen_wait(picker)
            if not chosen:
                return
            with self.busy(f"Loading {len(chosen)} save(s)…"):
                outcomes = await self.service.load_many(chosen)
            self.report(load_report(outcomes, data.current_chat))

    def action_assign(self) -> None:
        row = self.selected_row()
        if row is not None and self.claim(f"assigning slot {row.slot}"):
            self._assign(row.slot, row.chat, row.character)

    @work(group="job", exit_on_error=False, description="Assigning a character")
    async def _assign(self, slot: int, chat: str | None, character: str | None) -> None:
        with self.job(frozenset({Kind.ROUTE})):
            with self.busy("Reading chats and characters…"):
                suggestions = await asyncio.to_thread(assign_suggestions, self.service)
            self.chat_titles.update(suggestions.titles)
            dialog = AssignDialog(slot, chat=chat, character=character, suggestions=suggestions)
            assignment = await self.app.push_screen_wait(dialog)
            if assignment is None:
                return
            await self.service.assign(assignment.slot, assignment.chat, assignment.character)
            self.report(
                Report(
                    "Assigned",
                    f"{assignment.character} ({assignment.chat}) → slot {assignment.slot}",
                )
            )

    # -- erasing -----------------------------------------------------------------------------

    def action_erase(self) -> None:
        row = self.selected_row()
        if row is not None and self.claim(f"erasing slot {row.slot}"):
            who = f" ({row.character})" if row.character else ""
            self._erase(row.slot, who)

    @work(group="job", exit_on_error=False, description="Erasing a slot")
    async def _erase(self, slot: int, who: str) -> None:
        with self.job(ERASE_KINDS):
            question = (
                f"Erase slot {slot}{who} on the server? Its cache in memory is lost; "
                "save files on disk stay."
            )
            if not await self.app.push_screen_wait(
                ConfirmModal("Erase slot", question, yes="Erase")
            ):
                return
            with self.busy(f"Erasing slot {slot}…"):
                n_erased = await self.service.erase(slot)
            self.report(Report("Erased", f"Slot {slot}{who}: {n_erased} tokens erased."))

    def action_clear_all(self) -> None:
        if self.claim("clearing all slots"):
            self._clear_all()

    @work(group="job", exit_on_error=False, description="Clearing all slots")
    async def _clear_all(self) -> None:
        with self.job(ERASE_KINDS):
            question = (
                "Erase every slot on the server and forget who was in them? "
                "Save files on disk stay; characters are restored from them on their next turn."
            )
            if not await self.app.push_screen_wait(
                ConfirmModal("Clear all slots", question, yes="Clear all")
            ):
                return
            with self.busy("Clearing all slots…"):
                await self.service.clear_all()
            self.report(Report("Cleared", "All slots erased; save files stay on disk."))

    # -- settings, help, refresh, quit -------------------------------------------------------

    def action_settings(self) -> None:
        if self.claim("editing settings"):
            self._edit_settings()

    @work(group="job", exit_on_error=False, description="Saving settings")
    async def _edit_settings(self) -> None:
        with self.job():
            new = await self.app.push_screen_wait(SettingsScreen(self.settings))
            if new is None:
                return
            path = await asyncio.to_thread(save_settings, new, self.config_path)
            await self.service.apply_settings(new)
            self.app.set_keymap(new.keymap)
            self.read_chat_titles()
            self.notify(f"Saved to {path} and applied.", title="Settings", markup=False)

    def action_prewarm(self) -> None:
        self.app.push_screen(PrewarmScreen(self.service))

    def action_sideprompts(self) -> None:
        from kvtui.memory.jobs import JobRunner
        from kvtui.memory.settings import MemorySettings
        from kvtui.sideprompts.service import SidePromptService
        from kvtui.sideprompts.settings import SidePromptSettings
        from kvtui.tui.screens.sideprompts import SidePromptsScreen

        settings = self.service.settings
        if settings.st_dir is None:
            self.notify("Side prompts read SillyTavern chats: set st_dir in the settings.")
            return
        runner = JobRunner(
            self.service.client,
            MemorySettings.from_settings(settings),
            gate=self.service.job_gate(),
        )
        sp = SidePromptService.from_settings(settings, runner, self.service.st_data)
        previews = SidePromptSettings.from_settings(settings).sideprompt_previews
        chat = self.service.current_chat
        self.app.push_screen(SidePromptsScreen(sp, chat=chat, previews=previews))

    def action_memory(self) -> None:
        from kvtui.tui.screens.memory import MemoryScreen

        self.app.push_screen(MemoryScreen(self.service, self.service.current_chat))

    def action_refresh(self) -> None:
        self.poll()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.help_rows()))

    def action_quit(self) -> None:
        self.app.exit(0)

    def help_rows(self) -> list[tuple[str, str, str, str]]:
        """(id, keys, description, tooltip) for each dashboard action, keymap applied."""
        keys: dict[str, list[str]] = {}
        for key, active in self.active_bindings.items():
            if active.binding.id:
                keys.setdefault(active.binding.id, []).append(
                    self.app.get_key_display(active.binding.with_key(key))
                )
        rows = []
        for binding in self.BINDINGS:
            if not isinstance(binding, Binding) or binding.id is None:
                continue  # Screen's own focus and copy keys
            shown = ", ".join(keys.get(binding.id, [])) or "unbound"
            rows.append((binding.id, shown, binding.description, binding.tooltip))
        return rows

    @classmethod
    def palette_bindings(cls) -> list[Binding]:
        """The actions offered in the command palette (quit comes from Textual itself)."""
        return [
            b
            for b in cls.BINDINGS
            if isinstance(b, Binding) and b.id is not None and b.action != "quit"
        ]
