"""The load picker: chat → character → saves, current chat first, search, several at once.

Grouping and filtering are the store's pure functions (``group_saves`` / ``filter_groups``).
The tree is built lazily: a chat's characters appear when the chat is expanded and a
character's saves when the character is expanded, so 10,000 saves never become 10,000 widgets
or tree nodes at once. One save per character can be chosen; choosing another save of the same
character replaces the first. The screen dismisses with the chosen file names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Static, Tree
from textual.widgets.tree import TreeNode

from kvtui.chatref import chat_label
from kvtui.store import CharacterSaves, ChatGroup, SaveEntry, filter_groups, group_saves
from kvtui.tui.format import human_size, local_datetime

AUTO_EXPAND = 8
"""With a search typed, open the matching chats (and their characters) up to this many."""


@dataclass(frozen=True)
class ChatItem:
    group: ChatGroup


@dataclass(frozen=True)
class CharacterItem:
    chat: str
    saves: CharacterSaves


PickerItem = ChatItem | CharacterItem | SaveEntry


def choice_key(entry: SaveEntry) -> tuple[str, str]:
    """Who a save belongs to: one choice per (chat, character)."""
    return (entry.chat_key, entry.character_key)


class Choices:
    """The saves chosen so far, at most one per character of a chat, in choice order."""

    def __init__(self) -> None:
        self._by_owner: dict[tuple[str, str], SaveEntry] = {}

    def toggle(self, entry: SaveEntry) -> SaveEntry | None:
        """Choose ``entry`` (or un-choose it); returns the save it replaced, if any."""
        key = choice_key(entry)
        previous = self._by_owner.pop(key, None)
        if previous is not None and previous.filename == entry.filename:
            return previous
        self._by_owner[key] = entry
        return previous

    def chosen_for(self, chat_key: str, character_key: str) -> SaveEntry | None:
        return self._by_owner.get((chat_key, character_key))

    def is_chosen(self, entry: SaveEntry) -> bool:
        chosen = self._by_owner.get(choice_key(entry))
        return chosen is not None and chosen.filename == entry.filename

    @property
    def entries(self) -> list[SaveEntry]:
        return list(self._by_owner.values())

    def __len__(self) -> int:
        return len(self._by_owner)


def chat_node_label(group: ChatGroup, title: str | None = None) -> Text:
    """``Forest Party  2026-05-03@19h02m11s004ms [current]  3 characters``."""
    n = len(group.characters)
    label = Text(title or group.chat, style="bold")
    if title and title != group.chat:
        label.append(f"  {group.chat}", style="dim")
    if group.is_current:
        label.append(" [current]", style="reverse")
    label.append(f"  {n} character{'s' if n != 1 else ''}", style="dim")
    return label


def character_label(saves: CharacterSaves, chosen: SaveEntry | None) -> Text:
    n = len(saves.saves)
    label = Text(saves.character)
    label.append(f"  {n} save{'s' if n != 1 else ''}", style="dim")
    if chosen is not None:
        label.append(f"  ✓ {local_datetime(chosen.timestamp)}", style="bold")
    return label


def save_label(entry: SaveEntry, chosen: bool) -> Text:
    label = Text("✓ " if chosen else "  ", style="bold")
    label.append(local_datetime(entry.timestamp))
    if entry.tag:
        label.append("  tag ", style="dim")
        label.append(entry.tag, style="bold")
    if entry.n_saved is not None:
        label.append(f"  {entry.n_saved} tokens", style="dim")
    label.append(f"  {human_size(entry.size)}", style="dim")
    return label


class SaveTree(Tree[PickerItem]):
    """The picker's tree; space chooses a save instead of folding a node."""

    BINDINGS = [Binding("space", "screen.choose", "Choose", id="picker.choose")]


class LoadPicker(ModalScreen[list[str] | None]):
    """Pick saves to load. Dismisses with file names (choice order), or ``None`` on Esc."""

    BINDINGS = [
        Binding("ctrl+l", "load", "Load chosen", id="picker.load", priority=True),
        Binding("slash", "search", "Search", id="picker.search"),
        Binding("escape", "cancel", "Clear search / cancel", id="picker.cancel"),
    ]

    def __init__(
        self,
        entries: Sequence[SaveEntry],
        current_chat: str | None = None,
        titles: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self._groups = group_saves(list(entries), current_chat)
        self._titles = dict(titles or {})
        self._total = len(entries)
        self.choices = Choices()
        self._character_nodes: dict[tuple[str, str], TreeNode[PickerItem]] = {}
        self._save_nodes: dict[str, TreeNode[PickerItem]] = {}

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-dialog") as dialog:
            dialog.border_title = "Load saves"
            yield Input(placeholder="search chats, characters and tags  (/)", id="picker-search")
            yield SaveTree("saves", id="picker-tree")
            yield Static("", id="picker-summary")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Load chosen (ctrl+l)", variant="primary", id="load")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer()

    @property
    def save_tree(self) -> SaveTree:
        return self.query_one(SaveTree)

    def on_mount(self) -> None:
        self.save_tree.show_root = False
        self._show(self._groups, expand_all=False)
        self.save_tree.focus()

    # -- building the tree lazily ------------------------------------------------------------

    def _show(self, groups: Sequence[ChatGroup], *, expand_all: bool) -> None:
        tree = self.save_tree
        tree.clear()
        self._character_nodes.clear()
        self._save_nodes.clear()
        for group in groups:
            node = tree.root.add(
                chat_node_label(group, self._titles.get(group.chat)),
                ChatItem(group),
                allow_expand=True,
            )
            if group.is_current or expand_all:
                node.expand()
                self._fill_chat(node)
            if expand_all and len(group.characters) <= AUTO_EXPAND:
                # A search hit on a tag is a save: show it without another keypress.
                for child in node.children:
                    child.expand()
                    self._fill_character(child)
        if not groups:
            tree.root.add_leaf(Text("No saves match." if self._total else "No saves yet."))
        self._update_summary()

    def _fill_chat(self, node: TreeNode[PickerItem]) -> None:
        item = node.data
        if not isinstance(item, ChatItem) or node.children:
            return
        for saves in item.group.characters:
            owner = (item.group.chat_key, saves.character_key)
            child = node.add(
                character_label(saves, self.choices.chosen_for(*owner)),
                CharacterItem(item.group.chat, saves),
                allow_expand=True,
            )
            self._character_nodes[owner] = child

    def _fill_character(self, node: TreeNode[PickerItem]) -> None:
        item = node.data
        if not isinstance(item, CharacterItem) or node.children:
            return
        for entry in item.saves.saves:
            leaf = node.add_leaf(save_label(entry, self.choices.is_chosen(entry)), entry)
            self._save_nodes[entry.filename] = leaf

    @on(Tree.NodeExpanded)
    def _expanded(self, event: Tree.NodeExpanded[PickerItem]) -> None:
        self._fill_chat(event.node)
        self._fill_character(event.node)

    # -- choosing ----------------------------------------------------------------------------

    @on(Tree.NodeSelected)
    def _selected(self, event: Tree.NodeSelected[PickerItem]) -> None:
        if isinstance(event.node.data, SaveEntry):
            self._toggle(event.node.data)

    def action_choose(self) -> None:
        """Choose the highlighted save; on a character, its newest save."""
        node = self.save_tree.cursor_node
        if node is None:
            return
        item = node.data
        if isinstance(item, CharacterItem):
            self._toggle(item.saves.latest)
        elif isinstance(item, SaveEntry):
            self._toggle(item)
        elif isinstance(item, ChatItem):
            node.toggle()

    def _toggle(self, entry: SaveEntry) -> None:
        replaced = self.choices.toggle(entry)
        for changed in (entry, replaced):
            if changed is not None and changed.filename in self._save_nodes:
                self._save_nodes[changed.filename].set_label(
                    save_label(changed, self.choices.is_chosen(changed))
                )
        owner = self._character_nodes.get(choice_key(entry))
        if owner is not None and isinstance(owner.data, CharacterItem):
            owner.set_label(
                character_label(owner.data.saves, self.choices.chosen_for(*choice_key(entry)))
            )
        self._update_summary()

    def _update_summary(self) -> None:
        chosen = self.choices.entries
        if not chosen:
            text = Text(
                "space/enter chooses a save (on a character: its newest), ctrl+l loads.",
                style="dim",
            )
        else:
            text = Text(f"{len(chosen)} chosen: ", style="bold")
            for i, entry in enumerate(chosen):
                if i:
                    text.append(", ")
                text.append(entry.character)
                chat = chat_label(entry.chat, self._titles)
                text.append(f" ({chat}, {local_datetime(entry.timestamp)})", style="dim")
        self.query_one("#picker-summary", Static).update(text)

    # -- search, load, cancel ----------------------------------------------------------------

    @on(Input.Changed, "#picker-search")
    def _search(self, event: Input.Changed) -> None:
        query = event.value.strip()
        groups = self.search(query) if query else self._groups
        self._show(groups, expand_all=bool(query) and len(groups) <= AUTO_EXPAND)

    def search(self, query: str) -> list[ChatGroup]:
        """The store's filter (chats, characters, tags), plus chats whose SillyTavern name
        matches every word (a group chat's id is only a timestamp)."""
        found = filter_groups(self._groups, query)
        words = query.casefold().split()
        by_title = {
            group.chat_key
            for group in self._groups
            if all(w in self._titles.get(group.chat, "").casefold() for w in words)
        }
        kept = {group.chat_key for group in found}
        extra = [g for g in self._groups if g.chat_key in by_title and g.chat_key not in kept]
        if not extra:
            return found
        order = {group.chat_key: i for i, group in enumerate(self._groups)}
        return sorted([*found, *extra], key=lambda group: order[group.chat_key])

    @on(Input.Submitted, "#picker-search")
    def _search_done(self) -> None:
        self.save_tree.focus()

    def action_search(self) -> None:
        self.query_one("#picker-search", Input).focus()

    @on(Button.Pressed, "#load")
    def action_load(self) -> None:
        chosen = self.choices.entries
        if not chosen:
            node = self.save_tree.cursor_node
            if node is not None and isinstance(node.data, SaveEntry):
                chosen = [node.data]
            elif (
                node is not None and isinstance(node.data, CharacterItem) and node.data.saves.saves
            ):
                chosen = [node.data.saves.saves[0]]
        if not chosen:
            self.notify("Choose at least one save (space or enter on it).", severity="warning")
            return
        self.dismiss([entry.filename for entry in chosen])

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)

    def action_cancel(self) -> None:
        """Esc: clear a typed search first (the tree comes back whole), else close."""
        search = self.query_one("#picker-search", Input)
        if search.value:
            search.value = ""
            self.save_tree.focus()
            return
        self.dismiss(None)
