"""Run kvtui's benchmarks: all of them, or the ones named.

    python -m benchmarks                    # everything (a few minutes on 2 cores)
    python -m benchmarks restore proxy      # only these
    python -m benchmarks --quick            # fewer repetitions, shorter idle window
    python -m benchmarks --markdown results.md

Each benchmark prints its figures as it goes; the end prints a results table (markdown) with the
machine it ran on, each figure beside its target, and which targets were missed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    Context,
    Figure,
    isolate_environment,
    machine_description,
    scratch_directory,
)

BENCHMARKS: dict[str, str] = {
    "restore": "restore vs prefill, save/restore overhead",
    "proxy": "proxy latency and streamed throughput",
    "store": "save store at 1k/10k/50k files, picker in the app",
    "idle": "idle dashboard CPU and memory",
    "replay": "SillyTavern session replay: kvtui vs llama-server alone",
    "memory": "memory job wall time and the character's next-turn cache_n",
    "recall": "the cache cost of each placement of the recall macro",
    "load": "50 concurrent generations for 10 characters on 2 slots, through the proxy",
}
"""Each name is a module of this package with ``async def run(ctx: Context) -> None``."""


def _row(f: Figure) -> str:
    return f"| {f.bench} | {f.name} | {f.shown()} | {f.target or ''} | {f.verdict()} |"


def markdown(ctx: Context, failed: list[str], elapsed: float) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine_description(ctx)]
    lines.append(f"| mode | {'--quick' if ctx.quick else 'full'}, {elapsed:.0f} s |")
    header = ["| benchmark | figure | result | target | |", "|---|---|---|---|---|"]
    summary = [f for f in ctx.figures if f.target or f.headline]
    lines += ["", "Summary (every figure with a target, and the main ones):", "", *header]
    lines += [_row(f) for f in summary]
    lines += ["", "Every figure:", "", *header]
    lines += [_row(f) for f in ctx.figures]
    missed = [f for f in ctx.figures if f.ok is False]
    lines.append("")
    if missed:
        lines.append("Missed targets:")
        lines += [f"- {f.bench}: {f.name} = {f.shown()} (target {f.target})" for f in missed]
    else:
        lines.append("Every target with a figure was met.")
    if failed:
        lines.append("")
        lines.append("Benchmarks that failed to run: " + ", ".join(failed))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").strip().split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=summary)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="; ".join(f"{name}: {what}" for name, what in BENCHMARKS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--markdown", type=Path, help="also write the results table here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        known = ", ".join(BENCHMARKS)
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; pick from {known}")
    names = args.names or list(BENCHMARKS)
    started = time.monotonic()
    failed: list[str] = []
    with scratch_directory(keep=args.keep) as scratch:
        isolate_environment(scratch)
        ctx = Context(quick=args.quick, scratch=scratch)
        print(f"kvtui benchmarks: {', '.join(names)}{' (quick)' if args.quick else ''}")
        print(f"scratch directory: {scratch}")
        for name in names:
            try:
                module = importlib.import_module(f"benchmarks.{name}")
                asyncio.run(module.run(ctx))
            except KeyboardInterrupt:
                raise
            except Exception:
                traceback.print_exc()
                failed.append(name)
                ctx.figures.append(Figure(name, "benchmark failed to run", None, "", "runs", False))
        table = markdown(ctx, failed, time.monotonic() - started)
    print("\n== Results ==\n")
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
        print(f"\n(written to {args.markdown})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
