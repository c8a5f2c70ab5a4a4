"""Measure every erasure method on the built-in model and write docs/erasure-results.md.

Each row runs one method with its defaults (engine.methods.erase), pushes the edit on the
model, evaluates efficacy / generality / specificity with the judge (engine.evaluate on a
compact suite: every prompt naming an erased concept plus the unrelated ones, 16 seeds, 25 DDIM
steps, guidance 5) and saves a before/after grid to docs/erasure/<row>.png.

Usage: python scripts/make_erasure_results.py [--rows uce-red,esd-x-red] [--seeds 16] [--others N]
       python scripts/make_erasure_results.py --render-only   (after editing erasure-results-notes.md)

By default every combination prompt naming none of the erased concepts is an unrelated prompt (48 to 80 per
row); ``--others N`` takes an even sample of N instead (faster, but a sample of 24 under-sampled orange, the
color that erasures of red and blue damage most, and flattered specificity).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageDraw

from engine.evaluate import EvalRequest, compact_suite, evaluate
from engine.generate import GenerationRequest, generate
from engine.methods import EraseRequest, erase
from engine.model import load_model

DOCS = Path(__file__).resolve().parent.parent / "docs"
ALL_UNRELATED = 10_000  # more than the suite holds: compact_suite then keeps every unrelated prompt


@dataclass
class Row:
    key: str
    method: str
    targets: list[str]
    anchors: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    goal: str = ""  # the acceptance target, as text for the table
    probe: bool = False


ROWS = [
    Row("uce-red", "uce", ["red"], goal="eff ≤5%, gen ≤10%, spec ≥95%, shapes kept ≥90%", probe=True),
    Row("uce-star", "uce", ["star"], goal="eff ≤5%, gen ≤10%, spec ≥95%"),
    Row("uce-kusama", "uce", ["by Kusama"], goal="eff ≤5%, gen ≤10%, spec ≥95%"),
    Row("uce-red-blue-riley", "uce", ["red", "blue", "by Riley"], goal="each eff ≤5%, gen ≤10%, spec ≥95%"),
    Row("rece-red", "rece", ["red"], goal="eff ≤5%, gen ≤10%, spec ≥95%, probe ≤ ½ UCE's", probe=True),
    Row("speed-red-blue-riley", "speed", ["red", "blue", "by Riley"], goal="each eff ≤5%, spec ≥97% and ≥ UCE's"),
    Row("uce-five-colors", "uce", ["red", "green", "blue", "yellow", "purple"],
        goal="orange ≥95% of unedited, shapes ≥90%"),
    Row("speed-five-colors", "speed", ["red", "green", "blue", "yellow", "purple"],
        goal="orange ≥95% of unedited, shapes ≥90%"),
    Row("esd-x-red", "esd-x", ["red"], goal="eff ≤10%, gen ≤15%, spec ≥90%"),
    Row("esd-u-red", "esd-u", ["red"], goal="eff ≤10%, gen ≤15%, spec ≥85%"),
    Row("ca-red-blue", "ca", ["red"], anchors=["blue"], goal="red prompts blue ≥80%, synonyms ≥70%, spec ≥90%"),
    Row("sld-strong-red", "sld", ["red"], params={"preset": "strong"}, goal="eff ≤20%, gen ≤25%, spec ≥90%"),
]


def before_after_grid(model, prompts: list[str], seeds: list[int], path: Path) -> None:
    """Rows = prompts; for each seed a before and an after image; labels on the left and top."""
    cell, label_w = 96, 200
    sheet = Image.new("RGB", (label_w + 2 * len(seeds) * cell, 20 + len(prompts) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for k in range(len(seeds)):
        draw.text((label_w + 2 * k * cell + 4, 4), f"seed {seeds[k]}: before | after", fill="black")
    snapshot = model.stack.snapshot()
    for r, prompt in enumerate(prompts):
        model.stack.clear()
        before = generate(model, GenerationRequest(prompt, seeds=seeds))
        model.stack.restore(snapshot)
        after = generate(model, GenerationRequest(prompt, seeds=seeds))
        y = 20 + r * cell
        draw.text((4, y + cell // 2 - 6), prompt, fill="black")
        for k, (b, a) in enumerate(zip(before, after)):
            sheet.paste(b.resize((cell, cell), Image.NEAREST), (label_w + 2 * k * cell, y))
            sheet.paste(a.resize((cell, cell), Image.NEAREST), (label_w + (2 * k + 1) * cell, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def grid_prompts(targets: list[str]) -> list[str]:
    from engine.evaluate import resolve_concept

    prompts = []
    for concept in (resolve_concept(t) for t in targets):
        if concept.kind == "color":
            prompts += [f"a {concept.canonical} circle", f"a {concept.variants[0]} star"]
        elif concept.kind == "shape":
            prompts += [f"a blue {concept.canonical}", f"a red {concept.variants[0]}"]
        else:
            prompts += [f"a green circle {concept.canonical}", f"a red square {concept.variants[0]}"]
    return prompts[:4] + ["a orange triangle", "a green square by Vasarely"]


def run_row(model, row: Row, seeds: list[int], others: int) -> dict:
    start = time.perf_counter()
    edit = erase(model, EraseRequest(row.method, list(row.targets), anchors=list(row.anchors),
                                     params=dict(row.params)))
    elapsed = time.perf_counter() - start
    model.stack.push(edit, 1.0)
    try:
        cases = compact_suite(row.targets, others=others)
        unrelated = len(cases) - len(compact_suite(row.targets, others=0))
        report = evaluate(model, EvalRequest(seeds=seeds, erased=row.targets, cases=cases))
        result = {"row": row.key, "method": row.method, "targets": row.targets, "anchors": row.anchors,
                  "params": edit.manifest.get("params", {}), "seconds": round(elapsed, 2),
                  "specificity": report.specificity, "erased": report.erased, "goal": row.goal,
                  "specificity_by_kind": report.specificity_by_kind, "seeds": len(seeds), "others": unrelated,
                  "measured_on": time.strftime("%Y-%m-%d")}
        if row.probe:
            from engine.probe import probe_recovery

            result["probe"] = {t: round(probe_recovery(model, t, report.erased[t]["kind"], seeds=seeds)
                                        .recovery_rate, 4) for t in row.targets}
        before_after_grid(model, grid_prompts(row.targets), seeds[:4], DOCS / "erasure" / f"{row.key}.png")
    finally:
        model.stack.remove(len(model.stack) - 1)
    return result


def strength_dial(model, seeds: list[int]) -> list[dict]:
    """UCE on red at several strengths: efficacy should fall monotonically from the unedited value."""
    edit = erase(model, EraseRequest("uce", ["red"]))
    model.stack.push(edit, 0.0)
    rows = []
    try:
        for s in (0.0, 0.25, 0.5, 0.75, 1.0):
            model.stack.set_strength(len(model.stack) - 1, s)
            report = evaluate(model, EvalRequest(seeds=seeds, erased=["red"], cases=compact_suite(["red"], 6)))
            rows.append({"strength": s, "efficacy": report.erased["red"]["efficacy"],
                         "generality": report.erased["red"]["generality"], "specificity": report.specificity})
    finally:
        model.stack.remove(len(model.stack) - 1)
    return rows


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def spec_text(row: dict) -> str:
    """Overall specificity, then per attribute where measured (colors / shapes / styles of untouched prompts)."""
    parts = [f"{kind}s {pct(v)}" for kind, v in row.get("specificity_by_kind", {}).items()]
    return pct(row["specificity"]) + (f"<br>{' · '.join(parts)}" if parts else "")


def measured_dates(results: list[dict]) -> str:
    """The measurement days for the header: "on D" when every row was measured the same day, else each day
    with its rows, newest first."""
    days: dict[str, list[str]] = {}
    for r in results:
        days.setdefault(r["measured_on"], []).append(r["row"])
    if len(days) == 1:
        return f"on {next(iter(days))}"
    return "; ".join(f"on {day} ({', '.join(rows)})" for day, rows in sorted(days.items(), reverse=True))


def write_markdown(results: list[dict], dial: list[dict], seeds: int) -> None:
    lines = [
        "# Erasure results on the built-in ShapesWorld model",
        "",
        (f"Measured by `python scripts/make_erasure_results.py` {measured_dates(results)}: each method with its "
        f"defaults, {seeds} seeds (unless the seeds column says otherwise), 25 DDIM steps, guidance 5, judged by `engine/judge.py`. The prompt suite "
        f"(`engine.evaluate.compact_suite`) holds every plain prompt naming an erased concept (canonical word → "
        "efficacy, synonyms / other phrasings → generality) and the unrelated prompts counted in the \"unrelated\" "
        "column, every combination prompt naming none of the erased concepts (specificity: their accuracy relative to "
        "the unedited model). Efficacy and generality: share of images that still show the "
        "concept, lower is better. Specificity is also given per attribute (e.g. the color accuracy of the "
        "untouched prompts, relative). \"Kept\": the other attributes of the target prompts (e.g. the shape of a red "
        "circle) relative to the unedited model. Method time measured on this 2-core CPU in the same run."),
        "",
        ("| row | method | erase | efficacy (unedited) | generality (unedited) | kept | specificity | unrelated | time "
         "| seeds | target |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for i, (concept, e) in enumerate(r["erased"].items()):
            erase_text = concept + (f" → {', '.join(r['anchors'])}" if r["anchors"] else "")
            extra = ""
            if r["method"] == "ca":
                anchor = r["anchors"][0]
                extra = f"<br>{concept} prompts drawn {anchor}: {pct(e.get('target_outcomes', {}).get(anchor, 0.0))}"
                if "generality_outcomes" in e:
                    extra += f"<br>synonyms drawn {anchor}: {pct(e['generality_outcomes'].get(anchor, 0.0))}"
            if "probe" in r:
                extra += f"<br>probe recovery {pct(r['probe'].get(concept))}"
            lines.append(
                f"| {r['row'] if i == 0 else ''} | {r['method'] if i == 0 else ''} | {erase_text} | "
                f"{pct(e['efficacy'])} ({pct(e['efficacy_unedited'])}){extra} | "
                f"{pct(e['generality'])} ({pct(e['generality_unedited'])}) | {pct(e.get('retention'))} | "
                f"{spec_text(r) if i == 0 else ''} | {r.get('others', '—') if i == 0 else ''} | "
                f"{str(r['seconds']) + ' s' if i == 0 else ''} | "
                f"{r.get('seeds', '—') if i == 0 else ''} | "
                f"{r['goal'] if i == 0 else ''} |")
    if dial:
        lines += ["", "## Strength dial (UCE, red)", "", "| strength | efficacy | generality | specificity |",
                  "|---|---|---|---|"]
        lines += [f"| {d['strength']} | {pct(d['efficacy'])} | {pct(d['generality'])} | {pct(d['specificity'])} |"
                  for d in dial]
    notes = DOCS / "erasure-results-notes.md"  # hand-written findings, kept across regenerations
    if notes.is_file():
        lines += ["", notes.read_text(encoding="utf-8").strip()]
    lines += ["", "## Before / after grids", "",
              "Left of each pair: the unedited model; right: the edited one; same seed.", ""]
    for r in results:
        lines += [f"### {r['row']}", "", f"![{r['row']}](erasure/{r['row']}.png)", ""]
    (DOCS / "erasure-results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    record = {"rows": results, "dial": dial}
    (DOCS / "erasure-results.json").write_text(json.dumps(record, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="", help="comma-separated row keys (default: all)")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--others", type=int, default=ALL_UNRELATED,
                        help="unrelated prompts per row (default: all of them)")
    parser.add_argument("--no-dial", action="store_true")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the markdown from the last measured figures and the notes; measure nothing")
    args = parser.parse_args()
    results: list[dict] = []
    dial: list[dict] = []
    if not args.render_only:
        wanted = set(filter(None, args.rows.split(",")))
        model = load_model("builtin", device="cpu")
        seeds = list(range(args.seeds))
        for row in ROWS:
            if wanted and row.key not in wanted:
                continue
            print(f"== {row.key}", flush=True)
            results.append(run_row(model, row, seeds, args.others))
            print(json.dumps(results[-1]["erased"]), results[-1]["specificity"], flush=True)
        dial = [] if args.no_dial else strength_dial(model, seeds)
    # Rows not re-run this time keep their last measured figures and the day they were measured on.
    previous = DOCS / "erasure-results.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        fresh = {r["row"] for r in results}
        results += [r for r in old.get("rows", []) if r["row"] not in fresh]
        dial = dial or old.get("dial", [])
    order = [row.key for row in ROWS]
    results.sort(key=lambda r: order.index(r["row"]) if r["row"] in order else len(order))
    write_markdown(results, dial, args.seeds)
    print(f"wrote {DOCS / 'erasure-results.md'}")


if __name__ == "__main__":
    main()
