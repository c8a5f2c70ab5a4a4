"""`main.py bench`: time the studio's jobs (load, generation, refresh, erasure, export) against its targets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _groups(text: str) -> tuple[str, ...]:
    from engine.bench import GROUPS

    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown group {bad[0]!r}; choose from {', '.join(GROUPS)}")
    return groups


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers like 1,10,100") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("concept counts must be at least 1")
    return counts


def _warn_if_busy(device: str) -> None:
    """A busy CPU inflates every timing; with OpenMP's default spin-waiting, by far more than the load suggests."""
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    cores = os.cpu_count() or 1
    if load > cores and not str(device).startswith("cuda"):
        policy = os.environ.get("OMP_WAIT_POLICY", "")
        print(f"note: this machine is busy (load {load:.1f} on {cores} cores); CPU timings will be inflated"
              + ("" if policy.upper() == "PASSIVE" else
                 ", possibly many times over while torch's threads spin-wait (OMP_WAIT_POLICY=PASSIVE avoids that)")
              + ".", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure load, generation, refresh, erasure and export times against the targets",
        description="Runs each measurement several times and prints the median and spread, peak memory, and "
                    "pass/fail for every target. --scale sd15 builds an SD 1.5-sized model with random weights "
                    "(meant for a GPU; very slow on a CPU).")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--scale", default="builtin", choices=["builtin", "sd15"],
                   help="builtin: the ShapesWorld model; sd15: an SD 1.5-sized model, 512x512 (default builtin)")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable record (with hardware, library versions and date) on stdout; "
                        "the table goes to stderr")
    p.add_argument("--quick", action="store_true",
                   help="fewer runs; fine-tuning methods run a few iterations and are extrapolated (labelled)")
    p.add_argument("--write-docs", action="store_true",
                   help="write this run's table into docs/benchmarks.md (its own section only)")
    # Internal knobs for tests and the prepared GPU script; not part of the documented interface.
    p.add_argument("--repeat", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--only", type=_groups, default=(), help=argparse.SUPPRESS)
    p.add_argument("--concepts", type=_counts, default=None, help=argparse.SUPPRESS)
    p.add_argument("--iterations", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--docs-path", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.bench import CONCEPT_COUNTS, BenchOptions, run_bench
    from engine.bench_report import DOC_PATH, describe_run, format_table, write_docs, write_json

    if args.scale == "sd15" and not str(args.device).startswith("cuda"):
        print("note: the sd15 scale on a CPU takes a long time (minutes per image).", file=sys.stderr)
    options = BenchOptions(device=args.device, scale=args.scale, quick=args.quick, repeat=args.repeat,
                           only=args.only, concept_counts=args.concepts or CONCEPT_COUNTS,
                           quick_iterations=max(1, args.iterations), size=args.size, json_out=args.json_out,
                           workdir=args.workdir, deadline_s=args.deadline)
    table_out = sys.stderr if args.json else sys.stdout
    _warn_if_busy(args.device)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run_bench(options, log=log)
    print("\n" + describe_run(report) + "\n", file=table_out)
    print(format_table(report), file=table_out, flush=True)
    if args.write_docs:
        path = write_docs(report, args.docs_path or DOC_PATH)
        print(f"\nwrote {path}", file=table_out)
    if args.json:
        write_json(report)
    return 0
