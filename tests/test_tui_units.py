"""The dashboard's pure parts: formatting, reports, poll backoff, keymap text, tag preview."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kvtui.events import Event, Kind, Level
from kvtui.service import (
    BatchResult,
    ConnectionState,
    Failure,
    LoadOutcome,
    SaveOutcome,
    SlotRow,
    Snapshot,
)
from kvtui.settings import Settings
from kvtui.tui.format import human_size, local_time, slot_cells
from kvtui.tui.reports import load_report, save_report
from kvtui.tui.screens.live import MAX_RETRY_DELAY, retry_delay
from kvtui.tui.screens.settings_form import keymap_from_text, keymap_to_text, validate_field
from kvtui.tui.screens.tag_dialog import tag_preview
from kvtui.tui.widgets.event_log import event_line
from kvtui.tui.widgets.server_info import server_lines


def row(**changes: object) -> SlotRow:
    base: dict[str, object] = dict(
        slot=2,
        n_ctx=1024,
        processing=False,
        n_decoded=None,
        n_remain=None,
        tokens=None,
        chat=None,
        character=None,
        usage=0,
        messages_until_save=None,
        last_save_at=None,
        last_save_file=None,
    )
    base.update(changes)
    return SlotRow(**base)  # type: ignore[arg-type]


def test_slot_cells_idle_empty_slot() -> None:
    cells = slot_cells(row())
    assert str(cells["state"]) == "idle"
    assert str(cells["character"]) == "—" and str(cells["chat"]) == "—"
    assert cells["tokens"] == "—/1024"
    assert cells["usage"] == "—" and str(cells["autosave"]) == "—" and cells["last_save"] == "—"


def test_slot_cells_busy_character_slot() -> None:
    now = datetime(2026, 5, 3, 18, 0, tzinfo=UTC)
    cells = slot_cells(
        row(
            processing=True,
            n_decoded=12,
            n_remain=88,
            tokens=812,
            chat="Forest [Party]",
            character="Seraphina",
            usage=3,
            messages_until_save=1,
            last_save_at=now - timedelta(minutes=5),
        ),
        now=now,
    )
    assert str(cells["state"]) == "busy 12/100"
    # Names stay literal text: brackets are not markup.
    assert str(cells["chat"]) == "Forest [Party]"
    assert cells["tokens"] == "812/1024"
    assert cells["usage"] == "3"
    assert str(cells["autosave"]) == "in 1 msg"
    assert cells["last_save"] == local_time(now - timedelta(minutes=5), now)
    assert str(slot_cells(row(processing=True, n_decoded=5, n_remain=-1))["state"]) == ("busy 5")
    assert str(slot_cells(row(character="A", messages_until_save=None))["autosave"]) == "off"


def test_slot_cells_show_sillytavern_chat_names() -> None:
    titles = {"2026-05-03@19h02m11s004ms": "Forest Party"}
    assert str(slot_cells(row(chat="2026-05-03@19h02m11s004ms"), titles=titles)["chat"]) == (
        "Forest Party"
    )
    assert str(slot_cells(row(chat="other"), titles=titles)["chat"]) == "other"


def test_local_time_today_and_other_days() -> None:
    now = datetime.now().astimezone()
    assert len(local_time(now, now)) == len("HH:MM:SS")
    assert len(local_time(now - timedelta(days=3), now)) == len("YYYY-MM-DD HH:MM")


def test_human_size() -> None:
    assert human_size(None) == "—"
    assert human_size(512) == "512 B"
    assert human_size(3 * 1024 * 1024 + 100 * 1024) == "3.1 MB"
    assert human_size(5 * 1024**4) == "5120.0 GB"


def test_retry_delay_backs_off_and_caps() -> None:
    assert retry_delay(1.0, 0) == 1.0
    assert [retry_delay(1.0, n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, MAX_RETRY_DELAY]
    assert retry_delay(30.0, 3) == 30.0  # never shorter than the poll interval itself


def outcome(character: str, slot: int, chat: str = "c1", **kw: object) -> LoadOutcome:
    return LoadOutcome(
        slot=slot,
        chat=chat,
        character=character,
        filename=f"{chat}_{character}.bin",
        n_restored=100,
        from_other_chat=False,
        **kw,  # type: ignore[arg-type]
    )


def test_load_report_names_each_character_and_other_chats() -> None:
    report = load_report(
        BatchResult(
            (outcome("Alice", 0), outcome("Bob", 1, chat="old chat", evicted="Carol")),
            (Failure("x.bin", "No save file named 'x.bin'"),),
        ),
        current_chat="c1",
    )
    lines = report.message.splitlines()
    assert report.title == "Loaded 2 of 3" and report.severity == "warning"
    assert lines[0] == "Alice → slot 0: 100 tokens"
    assert lines[1] == "Bob → slot 1: 100 tokens, loaded from chat old chat (evicted Carol)"
    assert lines[2].startswith("x.bin: failed: No save file")
    alone = BatchResult((outcome("Alice", 0),))
    assert "chat c1" in load_report(alone, current_chat=None).message


def test_save_report() -> None:
    ok = SaveOutcome(0, "c", "Alice", "f.bin", 10, 2000, "t", rotated=("a", "b"))
    report = save_report(BatchResult((ok,), (Failure("slot 1", "empty"),)), "t")
    assert report.title == "Saved with tag t (1 of 2)" and report.severity == "warning"
    assert (
        "rotated 2 old autosave(s)" in report.message and "failed: slot 1: empty" in report.message
    )
    assert save_report(BatchResult(), None).severity == "warning"


def test_keymap_text_round_trip_and_errors() -> None:
    keymap = {"save_slot": "ctrl+s", "load": "l,f5"}
    assert keymap_from_text(keymap_to_text(keymap)) == keymap
    assert keymap_from_text("") == {}
    with pytest.raises(ValueError, match="not id=key"):
        keymap_from_text("save_slot")


def test_validate_field_reports_pydantic_errors() -> None:
    candidate = Settings.model_construct()  # the defaults, without reading env or config
    assert validate_field(candidate, "poll_interval", "0.5") is None
    assert candidate.poll_interval == 0.5
    assert validate_field(candidate, "autosave_every", "0") == "Must be at least 1."
    assert validate_field(candidate, "prewarm_timeout_minutes", "x") == (
        "Type a number, e.g. 20 or 1.5."
    )
    assert (
        validate_field(candidate, "server_url", "ftp://x") == "Must start with http:// or https://."
    )
    assert validate_field(candidate, "state_dir", "") == "A value is required."
    assert validate_field(candidate, "save_dir", "") is None and candidate.save_dir is None
    assert validate_field(candidate, "notifications", False) is None
    assert candidate.notifications is False


def test_tag_preview_shows_the_normalised_tag() -> None:
    text = str(tag_preview("важный момент", ["Alice", "Bob"]))
    assert "важный_момент" in text and "Alice, Bob" in text
    assert "Type a tag" in str(tag_preview("  ", []))


def test_event_line_is_plain_text() -> None:
    event = Event(Kind.SAVE, "Saved [bold]x[/bold]", Level.INFO, datetime(2026, 1, 1, tzinfo=UTC))
    assert str(event_line(event)).endswith("save        Saved [bold]x[/bold]")


def header(state: ConnectionState, error: str | None = None) -> Snapshot:
    return Snapshot(
        state=state,
        server_url="http://127.0.0.1:8080",
        model="/models/m.gguf",
        build_info="b1",
        total_slots=4,
        n_ctx=1024,
        save_dir=None,
        rows=(),
        error=error,
        taken_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_header_says_what_the_connection_is_doing() -> None:
    down = str(server_lines(header(ConnectionState.UNREACHABLE, "No llama-server answers"), 3, 4))
    assert down.startswith("✕ unreachable, retrying in 4 s (attempt 3)")
    assert down.endswith("No llama-server answers")
    assert "saves not set (use --save-dir)" in down and "model m.gguf" in down
    assert str(server_lines(header(ConnectionState.UNREACHABLE), 1, 0.2)).startswith(
        "✕ unreachable, retrying now (attempt 1)"
    )
    loading = str(server_lines(header(ConnectionState.LOADING, "Loading model"), 1, 1))
    assert loading.startswith("◌ loading model, retrying in 1 s")
    ok = str(server_lines(header(ConnectionState.CONNECTED, "stale error"), None, None))
    assert ok.startswith("● connected   server http://127.0.0.1:8080") and "stale" not in ok
    assert "slots 4 × 1024 tokens" in ok


def test_list_settings_are_edited_as_comma_separated_text() -> None:
    from kvtui.tui.screens.settings_form import field_text

    candidate = Settings.model_construct(allowed_origins=["http://a:1", "http://b:2"])
    assert field_text(candidate, "allowed_origins") == "http://a:1, http://b:2"
    assert validate_field(candidate, "allowed_origins", " http://c:3 ,, http://d:4 ") is None
    assert candidate.allowed_origins == ["http://c:3", "http://d:4"]
    assert validate_field(candidate, "allowed_hosts", "") is None
    assert candidate.allowed_hosts == []
