"""A named-template library in one JSON file: memory presets now, side-prompt templates later.

The file holds every template, built-ins included (seeded on first use, marked ``builtin``), so
users may edit or delete built-ins and :meth:`TemplateLibrary.reset_builtins` brings them back
without touching their own. Imports are additive: a name already taken is renamed (``Name (2)``),
nothing is overwritten. Names compare case-insensitively. Every change is written atomically.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from kvtui.atomic import write_atomic
from kvtui.errors import KvtuiError


class LibraryError(KvtuiError, ValueError):
    """A template operation that cannot be done; the message says what to do."""


T = TypeVar("T", bound=BaseModel)


def unique_name(name: str, taken: Sequence[str]) -> str:
    """``name``, or ``name (2)``, ``name (3)``… — the first not in ``taken`` (any case)."""
    used = {t.casefold() for t in taken}
    if name.casefold() not in used:
        return name
    base = re.sub(r"\s*\(\d+\)$", "", name) or name
    n = 2
    while f"{base} ({n})".casefold() in used:
        n += 1
    return f"{base} ({n})"


class TemplateLibrary(Generic[T]):
    """Templates of one pydantic model type (with ``name`` and ``builtin`` fields)."""

    def __init__(
        self,
        path: Path,
        model: type[T],
        builtins: Callable[[], list[T]],
        *,
        kind: str = "template",
    ) -> None:
        self.path = path
        self.model = model
        self._builtins = builtins
        self.kind = kind

    # -- file --------------------------------------------------------------------------------

    def _load(self) -> list[T]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self._builtins()
        except OSError as err:
            raise LibraryError(f"Cannot read {self.path}: {err}") from err
        try:
            data = json.loads(raw)
            items = data["items"] if isinstance(data, dict) else data
            return [self.model.model_validate(item) for item in items]
        except (ValueError, KeyError, TypeError, ValidationError) as err:
            raise LibraryError(
                f"{self.path} is damaged ({err}); move it away and kvtui starts over with the "
                "built-ins."
            ) from err

    def _save(self, items: list[T]) -> None:
        payload = {"version": 1, "items": [i.model_dump(mode="json") for i in items]}
        write_atomic(self.path, json.dumps(payload, indent=2, ensure_ascii=False))

    # -- queries -----------------------------------------------------------------------------

    def all(self) -> list[T]:
        return self._load()

    def names(self) -> list[str]:
        return [_name(i) for i in self._load()]

    def get(self, name: str) -> T:
        for item in self._load():
            if _name(item).casefold() == name.strip().casefold():
                return item
        known = ", ".join(self.names()) or "none"
        raise LibraryError(f'No {self.kind} named "{name}". Known: {known}.')

    # -- changes -----------------------------------------------------------------------------

    def add(self, item: T) -> T:
        """Add a new template; its name must be free."""
        items = self._load()
        name = _name(item).strip()
        if not name:
            raise LibraryError(f"A {self.kind} needs a name.")
        if name.casefold() in {_name(i).casefold() for i in items}:
            raise LibraryError(f'A {self.kind} named "{name}" exists; pick another name.')
        item = item.model_copy(update={"name": name, "builtin": False})
        self._save([*items, item])
        return item

    def update(self, current: str, /, **changes: Any) -> T:
        """Change fields of the template named ``current`` (a rename must not collide)."""
        items = self._load()
        index = self._index(items, current)
        new_name = str(changes.get("name", _name(items[index]))).strip()
        if not new_name:
            raise LibraryError(f"A {self.kind} needs a name.")
        others = [_name(i).casefold() for j, i in enumerate(items) if j != index]
        if new_name.casefold() in others:
            raise LibraryError(f'A {self.kind} named "{new_name}" exists; pick another name.')
        values = {**items[index].model_dump(), **changes, "name": new_name}
        if new_name.casefold() != _name(items[index]).casefold():
            values["builtin"] = False  # a renamed built-in is the user's own from now on
        try:
            updated = self.model.model_validate(values)
        except ValidationError as err:
            raise LibraryError(f"Not a valid {self.kind}: {err.errors()[0]['msg']}") from err
        items[index] = updated
        self._save(items)
        return updated

    def duplicate(self, name: str, new_name: str | None = None) -> T:
        items = self._load()
        source = items[self._index(items, name)]
        wanted = (new_name or f"{_name(source)} (copy)").strip()
        copy = source.model_copy(
            update={"name": unique_name(wanted, [_name(i) for i in items]), "builtin": False}
        )
        self._save([*items, copy])
        return copy

    def delete(self, name: str) -> T:
        items = self._load()
        removed = items.pop(self._index(items, name))
        self._save(items)
        return removed

    def reset_builtins(self) -> list[T]:
        """Put every built-in back as shipped; user templates stay as they are."""
        shipped = self._builtins()
        shipped_names = {_name(b).casefold() for b in shipped}
        mine = [
            i
            for i in self._load()
            if not getattr(i, "builtin", False) and _name(i).casefold() not in shipped_names
        ]
        renamed = [i for i in self._load() if not getattr(i, "builtin", False) and i not in mine]
        taken = [_name(i) for i in [*shipped, *mine]]
        for item in renamed:  # a user template that took a built-in's name keeps its text
            new = unique_name(_name(item), taken)
            taken.append(new)
            mine.append(item.model_copy(update={"name": new}))
        self._save([*shipped, *mine])
        return shipped

    def export(self, names: Sequence[str] | None = None) -> str:
        """The chosen templates (all by default) as JSON text."""
        items = self._load() if not names else [self.get(n) for n in names]
        return json.dumps(
            {"kvtui": self.kind, "version": 1, "items": [i.model_dump(mode="json") for i in items]},
            indent=2,
            ensure_ascii=False,
        )

    def import_json(self, text: str) -> list[T]:
        """Add the templates in ``text``; a taken name is renamed. Returns what was added."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise LibraryError(f"Not JSON: {err}") from err
        raw = data.get("items") if isinstance(data, dict) else data
        if isinstance(data, dict) and raw is None and "name" in data:
            raw = [data]
        if not isinstance(raw, list):
            raise LibraryError(f"No {self.kind}s found: expected a list or {{'items': [...]}}.")
        parsed: list[T] = []
        for n, item in enumerate(raw, start=1):
            try:
                parsed.append(self.model.model_validate({**item, "builtin": False}))
            except (ValidationError, TypeError) as err:
                raise LibraryError(f"{self.kind} {n} is not valid: {err}") from err
        items = self._load()
        taken = [_name(i) for i in items]
        added = []
        for item in parsed:
            name = unique_name(_name(item).strip() or self.kind, taken)
            taken.append(name)
            added.append(item.model_copy(update={"name": name}))
        self._save([*items, *added])
        return added

    def _index(self, items: list[T], name: str) -> int:
        for index, item in enumerate(items):
            if _name(item).casefold() == name.strip().casefold():
                return index
        raise LibraryError(f'No {self.kind} named "{name}".')


def _name(item: BaseModel) -> str:
    return str(getattr(item, "name", ""))
