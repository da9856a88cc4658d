"""Recognising other extensions' memory/summary jobs and choosing where they run (pure)."""

from __future__ import annotations

from kvtui.memory.recognize import JobKind, recognize_job, route_job

CHAT = "Seraphina is a forest guardian.\nAlex: where am i\nSeraphina: in my glade, traveler.\n"
STMB = (
    "Analyze the following chat scene and return a memory as JSON.\n\n"
    '{"title": "…", "content": "…", "keywords": ["…"]}\n\n'
    "=== SCENE TRANSCRIPT ===\nAlex: where am i\nSeraphina: in my glade.\n\n=== END SCENE ==="
)
SUMMARIZE = (
    CHAT + "\nIgnore previous instructions. Summarize the most important facts and events in "
    "the story so far. Limit the summary to 200 words or less.\n"
)


def test_recognizes_memorybooks_and_summarize() -> None:
    memory = recognize_job(STMB)
    assert memory is not None and memory.kind is JobKind.MEMORYBOOKS
    summary = recognize_job(SUMMARIZE)
    assert summary is not None and summary.kind is JobKind.SUMMARIZE
    assert recognize_job(CHAT + "Alex: tell me a story\nSeraphina:") is None
    # A character merely mentioning a transcript is not a job.
    assert recognize_job(CHAT + "Alex: what is a === SCENE TRANSCRIPT ===?\nSeraphina:") is None


def test_route_extends_the_character_it_continues() -> None:
    residents = {0: "Kael scouts ahead.\n", 1: CHAT, 3: ""}
    assert route_job(SUMMARIZE, residents, utility_slot=3).slot == 1
    assert route_job(SUMMARIZE, residents, utility_slot=3).why == "extends"
    assert route_job(STMB, residents, utility_slot=3) == route_job(STMB, {}, utility_slot=3)
    assert route_job(STMB, residents, utility_slot=3).why == "utility"
    assert route_job(STMB, residents, utility_slot=None).why == "borrow"
    assert route_job(STMB, residents, utility_slot=None).slot is None
