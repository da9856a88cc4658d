"""``kvtui prewarm``: the prewarm run without the dashboard, with a terminal progress bar.

Exit codes: 0 every chosen character warmed (or skipped with a reason), 1 any failed or the run
was interrupted, 2 the chat or a character could not be found.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from kvtui.llama import LlamaError
from kvtui.prewarm import Outcome, PlanError, Progress, plan_prewarm, prewarm
from kvtui.service import KvService, ServiceError
from kvtui.settings import Settings

BAR_WIDTH = 24


class ProgressPrinter:
    """A one-line progress bar on a terminal; one line per finished character elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.reported = 0

    def __call__(self, progress: Progress) -> None:
        for result in progress.done[self.reported :]:
            self._clear()
            if result.outcome is Outcome.WARMED:
                line = (
                    f"  warmed  {result.character}: {result.tokens} tokens in "
                    f"{result.seconds:.1f} s ({result.source} prompt)"
                )
            else:
                line = f"  {result.outcome.value:<7} {result.character}: {result.reason}"
            print(line, file=self.stream, flush=True)
        self.reported = len(progress.done)
        if self.tty and not progress.finished:
            done = len(progress.done)
            filled = BAR_WIDTH * done // max(progress.total, 1)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            current = f" warming {progress.current}" if progress.current else ""
            self.stream.write(
                f"\r[{bar}] {done}/{progress.total}{current}  {progress.elapsed:.1f} s\x1b[K"
            )
            self.stream.flush()
        elif progress.finished:
            self._clear()

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")


async def run_prewarm_cli(settings: Settings, args: argparse.Namespace) -> int:
    async with KvService(settings) as service:
        return await _run(service, args)


async def _run(service: KvService, args: argparse.Namespace) -> int:
    try:
        plan = plan_prewarm(args.chat, service.st_data, service.recorder, service.settings)
    except PlanError as err:
        print(f"kvtui: {err}", file=sys.stderr)
        return 2
    names = {m.name for m in plan.members}
    if args.character:
        unknown = [n for n in args.character if n not in names]
        if unknown:
            print(
                f"kvtui: not a member of {plan.display_name}: {', '.join(unknown)} "
                f"(members: {', '.join(sorted(names))})",
                file=sys.stderr,
            )
            return 2
        chosen = list(args.character)
    elif args.all:
        chosen = [m.name for m in plan.members]
    else:
        chosen = plan.default_selection()
    out = sys.stderr if args.json else sys.stdout
    print(f"Prewarming {len(chosen)} of {plan.display_name}: {', '.join(chosen)}", file=out)
    service.set_current_chat(plan.chat)
    try:
        await service.connect()
        report = await prewarm(
            service, plan.chat, plan.selected(chosen), on_progress=ProgressPrinter(out)
        )
    except (ServiceError, LlamaError) as err:
        print(f"kvtui: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "chat": plan.chat,
                    "elapsed": round(report.elapsed, 3),
                    "results": [
                        {
                            "character": r.character,
                            "outcome": r.outcome.value,
                            "tokens": r.tokens,
                            "seconds": round(r.seconds, 3),
                            "file": r.filename,
                            "source": r.source,
                            "reason": r.reason,
                        }
                        for r in report.results
                    ],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    warmed = len(report.with_outcome(Outcome.WARMED))
    failed = len(report.with_outcome(Outcome.FAILED))
    print(
        f"Done in {report.elapsed:.1f} s: {warmed} warmed, {failed} failed, "
        f"{len(report.with_outcome(Outcome.SKIPPED))} skipped.",
        file=out,
    )
    return 0 if report.ok else 1
