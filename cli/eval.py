"""`main.py eval`: judge the built-in model (optionally edited) and report erasure quality."""

from __future__ import annotations

import argparse
import json
import sys

from cli.common import add_edit_arguments, add_model_argument, load_model_from_args, print_progress, seed_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="judge the built-in model: per-concept accuracy, and efficacy/generality/"
                                    "specificity of erased concepts")
    add_model_argument(p)
    add_edit_arguments(p)
    p.add_argument("--erased", action="append", default=[], metavar="CONCEPT",
                   help="a concept the edits erase (repeatable), e.g. red, star, 'by Kusama'")
    p.add_argument("--seeds", type=seed_list, default=list(range(16)), help="default 0-15")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="a smaller prompt suite")
    p.add_argument("--probe", choices=["embedding"], default=None,
                   help="also measure how often an adversarial embedding recovers each erased concept")
    p.add_argument("--no-cache", action="store_true", help="recompute the unedited model's verdicts")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.evaluate import EvalRequest, evaluate

    model = load_model_from_args(args)
    report = evaluate(model, EvalRequest(seeds=args.seeds, steps=args.steps, guidance=args.guidance,
                                         erased=args.erased, quick=args.quick, use_cache=not args.no_cache),
                      progress=print_progress)
    data = report.to_json()
    if args.probe == "embedding":
        from engine.probe import probe_recovery, probe_skip_reason

        skipped = probe_skip_reason(model.stack)
        if skipped:
            data["probe_skipped"] = skipped
        else:
            for concept, entry in data["erased"].items():
                result = probe_recovery(model, concept, entry["kind"], seeds=args.seeds, steps=args.steps,
                                        guidance=args.guidance, progress=print_progress)
                entry["probe_recovery"] = round(result.recovery_rate, 4)
                entry["probe_per_prompt"] = result.per_prompt
    if args.json:
        json.dump(data, sys.stdout, indent=1)
        print()
        return 0
    print_summary(data)
    return 0


def print_summary(data: dict) -> None:
    print(f"{'concept':<24}{'color':>8}{'shape':>8}{'style':>8}")
    for word, acc in data["accuracy"].items():
        cells = "".join(f"{acc[k]:>8.1%}" if k in acc else f"{'':>8}" for k in ("color", "shape", "style"))
        print(f"{word:<24}{cells}")
    spread = ", ".join(f"{c} {s:.0%}" for c, s in data["bare_shape_colors"].items())
    print(f"bare shapes ('a circle') colors: {spread}")
    for concept, e in data["erased"].items():
        line = (f"erased {concept!r}: efficacy {e['efficacy']:.1%} (unedited {e['efficacy_unedited']:.1%})")
        if e.get("generality") is not None:
            line += f", generality {e['generality']:.1%} (unedited {e['generality_unedited']:.1%})"
        if e.get("retention") is not None:
            line += f", other attributes kept {e['retention']:.1%}"
        if "probe_recovery" in e:
            line += f", probe recovery {e['probe_recovery']:.1%}"
        print(line)
    if "probe_skipped" in data:
        print(f"probe: not run; {data['probe_skipped']}")
    if data["specificity"] is not None:
        by_kind = ", ".join(f"{k}s {v:.1%}" for k, v in data.get("specificity_by_kind", {}).items())
        print(f"specificity (everything else, relative to unedited): {data['specificity']:.1%}"
              + (f" ({by_kind})" if by_kind else ""))
