"""kvtui against llama-server alone, per phase of the real-SillyTavern session (issue 9).

The same scripted session runs straight to llama-server (its default RAM prompt cache on) and
through kvtui; SillyTavern sends a fixed sampling seed, so both runs see the same replies and
the same prompts. The acceptance: kvtui prefills no more tokens than llama-server alone in any
phase (one-to-one, chat switch, group, restart, ...) and fewer in total, counted by llama-server
itself (``/metrics``), so what kvtui sends on its own counts too. Each run writes its figures to
``parity.json`` in its work directory (the README's table).
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.runner import Run
from tests.e2e.stack import missing_requirements

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
]


def _by_phase_from_tap(run: Run) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in run.gens:
        prompt_n = int((g.timings or {}).get("prompt_n", 0))
        out[g.expected.phase] = out.get(g.expected.phase, 0) + prompt_n
    return out


def _first_difference(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def test_both_runs_saw_the_same_session(run: Run, direct: Run) -> None:
    """The comparison is one to one: the same generations with the same prompts."""
    assert [g.expected for g in run.gens] == [g.expected for g in direct.gens]
    differ = [
        f"{g.label()}: the prompts differ from char {_first_difference(g.prompt, d.prompt)}"
        for g, d in zip(run.gens, direct.gens, strict=True)
        if g.prompt != d.prompt
    ]
    assert not differ, "\n".join(differ)


def test_kvtui_prefills_no_more_than_llama_server_alone(run: Run, direct: Run) -> None:
    from tests.e2e.session import PHASES  # drives the page: needs playwright (imported late)

    rows = {
        phase: {
            "direct": direct.prefill.get(phase, 0),
            "kvtui": run.prefill.get(phase, 0),
            "direct_requests": _by_phase_from_tap(direct).get(phase, 0),
            "kvtui_requests": _by_phase_from_tap(run).get(phase, 0),
        }
        for phase in PHASES
    }
    total = {k: sum(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    figures = {"variant": run.variant, "phases": rows, "total": total}
    (run.workdir / "parity.json").write_text(json.dumps(figures, indent=1), encoding="utf-8")
    print(json.dumps(figures))
    worse = [
        f"{phase}: kvtui {r['kvtui']} > llama-server alone {r['direct']}"
        for phase, r in rows.items()
        if r["kvtui"] > r["direct"]
    ]
    assert not worse, "\n".join(worse) + f"\n{run.where()}"
    assert total["kvtui"] < total["direct"], total
