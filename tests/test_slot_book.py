"""The slot book: the seed's allocation and usage rules, counters, and atomic persistence."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvtui.slots import (
    Allocation,
    AllSlotsProtected,
    GenType,
    SlotBook,
    SlotRecord,
    UnknownSlot,
)

WHEN = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)


def full_book() -> SlotBook:
    """Three slots holding A, B, C of one chat (in that order)."""
    book = SlotBook(3)
    for name in "ABC":
        book.allocate("chat", name)
    return book


# -- allocation --------------------------------------------------------------------------


def test_allocate_takes_the_lowest_free_slot_and_assigns_it() -> None:
    book = SlotBook(3)
    assert book.allocate("chat", "A") == Allocation(slot=0, resident=False)
    assert book.allocate("chat", "B") == Allocation(slot=1, resident=False)
    assert book.record(1).character == "B"
    assert book.find("chat", "B") == 1


def test_a_resident_character_keeps_its_slot() -> None:
    book = full_book()
    assert book.allocate("chat", "B") == Allocation(slot=1, resident=True)
    assert book.allocate("other chat", "B").slot != 1  # the same name in another chat is new


def test_a_released_slot_is_free_again_before_anyone_is_evicted() -> None:
    book = full_book()
    book.release(1)
    allocation = book.allocate("chat", "D")
    assert (allocation.slot, allocation.evicted) == (1, None)


def test_eviction_takes_the_least_used_and_reports_the_record() -> None:
    book = full_book()
    for _ in range(3):
        book.count_generation(0, GenType.NORMAL)
    book.count_generation(1, GenType.NORMAL)
    book.count_generation(2, GenType.NORMAL)
    book.count_generation(2, GenType.NORMAL)
    allocation = book.allocate("chat", "D")
    assert allocation.slot == 1
    assert allocation.evicted is not None
    assert (allocation.evicted.character, allocation.evicted.usage) == ("B", 1)
    assert allocation.save_first
    assert book.record(1).character == "D"
    assert book.record(1).usage == 0
    assert book.find("chat", "B") is None


def test_an_evicted_character_never_used_is_not_saved_first() -> None:
    book = full_book()
    allocation = book.allocate("chat", "D")
    assert allocation.evicted is not None
    assert allocation.evicted.usage == 0
    assert not allocation.save_first


def test_replacing_by_hand_follows_the_same_save_first_rule() -> None:
    book = full_book()
    book.count_generation(1, GenType.NORMAL)
    assert Allocation.replacing(book.record(1)).save_first
    assert not Allocation.replacing(book.record(0)).save_first  # never used
    book.release(2)
    free = Allocation.replacing(book.record(2))
    assert free.evicted is None and not free.save_first


def test_put_back_undoes_a_takeover_with_its_counters() -> None:
    book = full_book()
    for _ in range(2):
        book.count_generation(0, GenType.NORMAL)
    book.count_message(0)
    before = book.record(0)
    book.assign(0, "chat", "D")
    assert book.record(0).character == "D"
    book.put_back(before)
    assert book.record(0) == before and book.record(0).usage == 2
    assert book.find("chat", "D") is None


def test_eviction_ties_go_to_the_slot_idle_longest() -> None:
    book = full_book()
    for slot in (2, 0, 1):  # each used once; slot 2 longest ago
        book.count_generation(slot, GenType.NORMAL)
    allocation = book.allocate("chat", "D")
    assert allocation.slot == 2


def test_eviction_ties_without_history_go_to_the_lowest_slot() -> None:
    records = [SlotRecord(slot=i, chat="c", character=n) for i, n in enumerate("ABC")]
    doc = {
        "version": 1,
        "n_slots": 3,
        "clock": 0,
        "slots": [dataclasses.asdict(r) for r in records],
    }
    book = SlotBook.from_json(json.dumps(doc, default=str))
    assert book.allocate("c", "D").slot == 0


def test_protected_slots_are_never_evicted_nor_taken() -> None:
    book = full_book()
    book.count_generation(2, GenType.NORMAL)
    allocation = book.allocate("chat", "D", protected={0, 1})
    assert allocation.slot == 2
    book.release(0)
    assert book.allocate("chat", "E", protected={0, 2}).slot == 1  # free 0 is reserved


def test_all_protected_raises() -> None:
    book = full_book()
    with pytest.raises(AllSlotsProtected):
        book.allocate("chat", "D", protected={0, 1, 2})
    with pytest.raises(AllSlotsProtected):
        SlotBook(0).allocate("chat", "A")


def test_assign_moves_a_character_and_is_idempotent_for_the_occupant() -> None:
    book = full_book()
    book.count_generation(0, GenType.NORMAL)
    book.mark_autoload_done(0)
    book.assign(0, "chat", "A")  # same occupant: nothing changes
    assert book.record(0).usage == 1 and book.record(0).autoload_done
    book.assign(2, "chat", "A")  # moves: the old slot is freed, a new residency starts
    assert book.record(0).character is None
    assert book.record(2).character == "A"
    assert book.record(2).usage == 0 and not book.record(2).autoload_done
    assert book.find("chat", "A") == 2


def test_assign_rejects_unknown_slots_and_empty_names() -> None:
    book = SlotBook(2)
    with pytest.raises(UnknownSlot):
        book.assign(2, "chat", "A")
    with pytest.raises(UnknownSlot):
        book.record(-1)
    with pytest.raises(ValueError):
        book.assign(0, "chat", "")


def test_clear_all_frees_every_slot() -> None:
    book = full_book()
    book.clear_all()
    assert all(not r.occupied for r in book.snapshot())
    assert book.n_slots == 3


# -- usage and message counters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("gen_type", "from_zero", "from_two"),
    [
        (GenType.NORMAL, 1, 3),
        (GenType.REGENERATE, 1, 2),
        (GenType.SWIPE, 1, 2),
        (GenType.CONTINUE, 1, 2),
        (GenType.QUIET, 1, 2),
        (GenType.IMPERSONATE, 0, 2),
    ],
)
def test_usage_follows_the_seed(gen_type: GenType, from_zero: int, from_two: int) -> None:
    book = SlotBook(2)
    book.allocate("chat", "A")
    book.allocate("chat", "B")
    book.count_generation(1, GenType.NORMAL)
    book.count_generation(1, GenType.NORMAL)
    book.count_generation(0, gen_type)
    book.count_generation(1, gen_type)
    assert book.record(0).usage == from_zero
    assert book.record(1).usage == from_two


def test_a_load_resets_usage_and_marks_the_autoload_done() -> None:
    book = full_book()
    book.count_generation(0, GenType.NORMAL)
    book.count_message(0)
    book.mark_loaded(0, "chat_20260314150926_character_A.bin", 812)
    record = book.record(0)
    assert (record.usage, record.messages_since_save, record.tokens) == (0, 0, 812)
    assert record.loaded_from == "chat_20260314150926_character_A.bin"
    assert record.autoload_done


def test_counting_on_a_free_slot_does_nothing() -> None:
    book = SlotBook(1)
    book.count_generation(0, GenType.NORMAL)
    book.count_message(0)
    assert book.record(0) == SlotRecord(slot=0)


def test_messages_until_save_counts_down_and_a_save_resets_it() -> None:
    book = full_book()
    assert book.messages_until_save(0, 5) == 5
    for _ in range(4):
        book.count_message(0)
    assert book.messages_until_save(0, 5) == 1
    assert book.messages_until_save(1, 5) == 5  # every character has its own counter
    book.count_message(0)
    book.count_message(0)
    assert book.messages_until_save(0, 5) == 0
    book.mark_saved(0, "f.bin", WHEN, reset_counter=False)
    assert book.record(0).messages_since_save == 6
    book.mark_saved(0, "g.bin", WHEN)
    assert book.messages_until_save(0, 5) == 5
    assert (book.record(0).last_save_file, book.record(0).last_save_at) == ("g.bin", WHEN)
    with pytest.raises(ValueError):
        book.messages_until_save(0, 0)


def test_autoload_done_is_per_residency() -> None:
    book = full_book()
    book.mark_autoload_done(1)
    book.release(1)
    book.assign(1, "chat", "B")
    assert not book.record(1).autoload_done


def test_mark_all_lost_keeps_seats_but_forces_a_restore() -> None:
    book = full_book()
    book.release(1)
    book.count_generation(0, GenType.NORMAL)
    book.set_tokens(0, 500)
    book.mark_autoload_done(0)
    assert book.mark_all_lost() == ["A", "C"]
    record = book.record(0)
    assert (record.character, record.usage, record.tokens, record.autoload_done) == (
        "A",
        0,
        None,
        False,
    )


def test_resize_grows_and_drops_the_records_beyond() -> None:
    book = full_book()
    assert book.resize(5) == []
    assert [r.slot for r in book.snapshot()] == [0, 1, 2, 3, 4]
    dropped = book.resize(2)
    assert [(r.slot, r.character) for r in dropped] == [(2, "C")]
    assert book.n_slots == 2
    assert book.find("chat", "C") is None


def test_snapshot_is_frozen() -> None:
    book = full_book()
    snap = book.snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap[0].usage = 9  # type: ignore[misc]
    book.count_generation(0, GenType.NORMAL)
    book.release(1)
    assert snap[0].usage == 0 and snap[1].character == "B"


# -- persistence -------------------------------------------------------------------------


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    book = SlotBook(3)
    book.allocate("Лесная группа", "Серафина")
    book.count_generation(0, GenType.NORMAL)
    book.count_message(0)
    book.mark_saved(0, "Лесная_группа_20260314150926_character_Серафина.bin", WHEN)
    book.set_tokens(0, 1234)
    book.allocate("chat", "B")
    book.mark_loaded(1, "b.bin", 77)
    path = tmp_path / "state" / "slots.json"
    book.save_atomic(path)
    again = SlotBook.load(path)
    assert again.snapshot() == book.snapshot()
    assert again.to_json() == book.to_json()
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["slots.json"]  # no temp file left


def test_save_atomic_replaces_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "slots.json"
    full_book().save_atomic(path)
    SlotBook(1).save_atomic(path)
    assert SlotBook.load(path).n_slots == 1


def test_load_of_a_missing_file_is_an_empty_book(tmp_path: Path) -> None:
    book = SlotBook.load(tmp_path / "nope.json", n_slots=4)
    assert book.n_slots == 4 and not any(r.occupied for r in book.snapshot())


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[]",
        '{"version": 99, "n_slots": 1, "slots": []}',
        '{"version": 1, "n_slots": "4", "slots": []}',
        '{"version": 1, "n_slots": 1, "slots": [{"slot": 5}]}',
        '{"version": 1, "n_slots": 1, "slots": [{"slot": 0, "chat": "c"}]}',
        '{"version": 1, "n_slots": 1, "slots": [{"slot": 0, "usage": "x"}]}',
        '{"version": 1, "n_slots": 1, "slots": [{"slot": 0, "usage": -1}]}',
        '{"version": 1, "n_slots": 1, "slots": [{"slot": 0, "autoload_done": 1}]}',
        '{"version": 1, "n_slots": 1, "slots": [{"slot": 0, "last_save_at": "yesterday"}]}',
    ],
)
def test_load_of_a_corrupt_file_is_an_empty_book(tmp_path: Path, content: str) -> None:
    path = tmp_path / "slots.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError):
        SlotBook.from_json(content)
    assert SlotBook.load(path).n_slots == 0


def test_load_of_unreadable_bytes_is_an_empty_book(tmp_path: Path) -> None:
    path = tmp_path / "slots.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert SlotBook.load(path, n_slots=2).n_slots == 2


def test_a_character_listed_twice_in_a_file_keeps_its_first_slot() -> None:
    slots = [{"slot": i, "chat": "c", "character": "A"} for i in range(2)]
    book = SlotBook.from_json(json.dumps({"version": 1, "n_slots": 2, "slots": slots}))
    assert book.find("c", "A") == 0
    assert not book.record(1).occupied


# -- properties --------------------------------------------------------------------------

names = st.sampled_from(["A", "B", "C", "D", "E", "Ёж"])
chats = st.sampled_from(["one", "two"])


class SlotBookMachine(RuleBasedStateMachine):
    """Random operations never break the book's invariants, and it always round-trips."""

    def __init__(self) -> None:
        super().__init__()
        self.book = SlotBook(3)

    @rule(chat=chats, name=names, protected=st.sets(st.integers(0, 4), max_size=3))
    def allocate(self, chat: str, name: str, protected: set[int]) -> None:
        before = {r.slot: r for r in self.book.snapshot()}
        resident = self.book.find(chat, name)
        try:
            allocation = self.book.allocate(chat, name, protected=protected)
        except AllSlotsProtected:
            assert resident is None
            assert all(s in protected or s >= self.book.n_slots for s in range(self.book.n_slots))
            return
        assert self.book.find(chat, name) == allocation.slot
        assert allocation.resident == (resident is not None)
        if not allocation.resident:
            assert allocation.slot not in protected
            old = before[allocation.slot]
            assert allocation.evicted == (old if old.occupied else None)
            if allocation.evicted is not None:  # the least-used of the candidates
                others = [r for r in before.values() if r.slot not in protected]
                assert all(r.occupied for r in others)  # no free slot was left
                assert allocation.evicted.usage == min(r.usage for r in others)

    @precondition(lambda self: self.book.n_slots > 0)
    @rule(data=st.data(), chat=chats, name=names)
    def assign(self, data: st.DataObject, chat: str, name: str) -> None:
        self.book.assign(data.draw(st.integers(0, self.book.n_slots - 1)), chat, name)

    @precondition(lambda self: self.book.n_slots > 0)
    @rule(data=st.data(), gen_type=st.sampled_from(list(GenType)))
    def generate(self, data: st.DataObject, gen_type: GenType) -> None:
        slot = data.draw(st.integers(0, self.book.n_slots - 1))
        before = self.book.record(slot).usage
        self.book.count_generation(slot, gen_type)
        after = self.book.record(slot).usage
        assert after - before in (0, 1)
        if gen_type is GenType.IMPERSONATE or (gen_type is not GenType.NORMAL and before > 0):
            assert after == before

    @precondition(lambda self: self.book.n_slots > 0)
    @rule(data=st.data())
    def message_or_release(self, data: st.DataObject) -> None:
        slot = data.draw(st.integers(0, self.book.n_slots - 1))
        if data.draw(st.booleans()):
            self.book.count_message(slot)
        else:
            self.book.release(slot)

    @rule(n=st.integers(0, 5))
    def resize(self, n: int) -> None:
        self.book.resize(n)

    @invariant()
    def no_character_in_two_slots(self) -> None:
        seated = [(r.chat, r.character) for r in self.book.snapshot() if r.occupied]
        assert len(seated) == len(set(seated))
        assert [r.slot for r in self.book.snapshot()] == list(range(self.book.n_slots))

    @invariant()
    def round_trips(self) -> None:
        assert SlotBook.from_json(self.book.to_json()).snapshot() == self.book.snapshot()


TestSlotBookMachine = SlotBookMachine.TestCase
TestSlotBookMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


@given(
    usages=st.lists(st.integers(0, 5), min_size=1, max_size=6),
    protected=st.sets(st.integers(0, 5)),
)
def test_eviction_never_touches_a_protected_slot(usages: list[int], protected: set[int]) -> None:
    book = SlotBook(len(usages))
    for slot, usage in enumerate(usages):
        book.allocate("chat", f"c{slot}")
        for _ in range(usage):
            book.count_generation(slot, GenType.NORMAL)
    if set(range(len(usages))) <= protected:
        with pytest.raises(AllSlotsProtected):
            book.allocate("chat", "new", protected=protected)
        return
    allocation = book.allocate("chat", "new", protected=protected)
    assert allocation.slot not in protected
    assert allocation.evicted is not None
    open_usages = [u for s, u in enumerate(usages) if s not in protected]
    assert allocation.evicted.usage == min(open_usages)
    assert allocation.save_first == (allocation.evicted.usage >= 1)


def test_a_book_of_another_server_or_a_vanished_save_dir_is_forgotten(tmp_path: Path) -> None:
    from kvtui.events import Kind
    from kvtui.service import KvService
    from kvtui.settings import Settings

    gone = tmp_path / "demo-saves"
    gone.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    book = SlotBook(2)
    book.assign(0, "chat", "Kael")
    book.origin = ("http://127.0.0.1:9999", str(gone))
    (state / "slots.json").write_text(book.to_json(), encoding="utf-8")
    same = Settings(server_url="http://127.0.0.1:9999", save_dir=gone, state_dir=state)
    assert KvService(same).book.find("chat", "Kael") == 0  # its own book is kept
    gone.rmdir()
    for cfg in (same, Settings(server_url="http://127.0.0.1:9998", state_dir=state)):
        service = KvService(cfg)
        assert service.book.find("chat", "Kael") is None
        assert any(
            e.kind is Kind.CONNECTION and "Forgot" in e.message for e in service.events.recent()
        )
