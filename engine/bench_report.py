"""What a benchmark run found, how it is judged against the targets users were promised, and how it is written
(markdown tables, the run's section of docs/benchmarks.md, JSON). ``engine.bench`` does the measuring.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.bench import BenchOptions


@dataclass
class Measurement:
    """One measured job: every run's seconds, and the largest peak memory of its runs."""

    key: str  # stable id, e.g. "uce.100", "generate.studio"
    group: str
    title: str
    seconds: list[float] = field(default_factory=list)
    status: str = "ok"  # ok | not available | failed | extrapolated | skipped
    peak_memory_bytes: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def spread(self) -> float | None:
        """max - min of the runs; with one run, 0."""
        return (max(self.seconds) - min(self.seconds)) if self.seconds else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["median_s"] = self.median
        out["spread_s"] = self.spread
        out["runs"] = len(self.seconds)
        return out


@dataclass
class TargetResult:
    name: str
    limit: str
    value: float | None
    status: str  # pass | fail | not measured | n/a
    note: str = ""


@dataclass
class BenchReport:
    options: dict[str, Any]
    hardware: dict[str, Any]
    versions: dict[str, str]
    date: str
    measurements: list[Measurement] = field(default_factory=list)
    targets: list[TargetResult] = field(default_factory=list)
    load_average: dict[str, list[float]] = field(default_factory=dict)
    total_s: float = 0.0

    def get(self, key: str) -> Measurement | None:
        return next((m for m in self.measurements if m.key == key), None)

    def to_json(self) -> dict[str, Any]:
        return {"schema": "erasure-studio-bench/1", "date": self.date, "options": self.options,
                "hardware": self.hardware, "versions": self.versions, "load_average": self.load_average,
                "total_s": round(self.total_s, 2),
                "measurements": [m.to_json() for m in self.measurements],
                "targets": [asdict(t) for t in self.targets]}


# (device, scale) -> limit; a target has no limit where it is not listed.
TARGETS: list[tuple[str, str, dict[tuple[str, str], float]]] = [
    ("studio generation vs plain diffusers, same settings", "ratio",
     {("cpu", "builtin"): 1.05, ("cpu", "sd15"): 1.05, ("cuda", "builtin"): 1.05, ("cuda", "sd15"): 1.05}),
    ("after-grid refresh, 4 images, 20 steps", "refresh",
     {("cpu", "builtin"): 1.5, ("cuda", "builtin"): 1.5, ("cuda", "sd15"): 1.5}),
    ("UCE 1 concept", "uce.1", {("cpu", "builtin"): 0.5, ("cuda", "builtin"): 0.5, ("cuda", "sd15"): 0.5}),
    ("SPEED or UCE 100 concepts", "closed.100", {("cpu", "builtin"): 3.0, ("cuda", "sd15"): 5.0,
                                                  ("cuda", "builtin"): 3.0}),
    ("ESD-x default iterations", "esd-x.default", {("cpu", "builtin"): 120.0, ("cuda", "builtin"): 90.0,
                                                   ("cuda", "sd15"): 90.0}),
    ("single-file export fp16", "export.single-file.fp16", {("cuda", "builtin"): 10.0, ("cuda", "sd15"): 10.0}),
]


def evaluate_targets(report: BenchReport, options: BenchOptions) -> list[TargetResult]:
    device = "cuda" if options.device.startswith("cuda") else "cpu"
    out: list[TargetResult] = []
    for name, key, limits in TARGETS:
        limit = limits.get((device, options.scale))
        unit = "" if key == "ratio" else " s"
        limit_text = "no target here" if limit is None else f"{'ratio ' if key == 'ratio' else ''}≤ {limit:g}{unit}"
        value, note, extrapolated = _target_value(report, key)
        if limit is None:
            out.append(TargetResult(name, limit_text, value, "n/a", "no target for this device and scale"))
        elif value is None:
            out.append(TargetResult(name, limit_text, None, "not measured", note))
        else:
            status = "pass" if value <= limit else "fail"
            if extrapolated:
                status += " (extrapolated)"
            out.append(TargetResult(name, limit_text, round(value, 4), status, note))
    return out


def _target_value(report: BenchReport, key: str) -> tuple[float | None, str, bool]:
    if key == "ratio":
        m = report.get("generate.studio")
        ratio = m.extra.get("ratio") if m else None
        return ratio, "studio median / plain diffusers median" if ratio else "not run", False
    if key == "closed.100":
        found = [(report.get(f"{name}.100"), name) for name in ("speed", "uce")]
        ok = [(m.median, n) for m, n in found if m and m.status == "ok" and m.median is not None]
        if not ok:
            return None, "not run or not available", False
        best, name = min(ok)
        return best, f"{name.upper()} (the faster of the two)", False
    m = report.get(key)
    if m is None or m.median is None or m.status not in ("ok", "extrapolated"):
        return None, "not run" if m is None else m.status, False
    return m.median, m.note if m.status == "extrapolated" else "", m.status == "extrapolated"


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "—"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_table(report: BenchReport) -> str:
    """Two markdown tables: every measurement, then the targets with pass/fail."""
    gpu = report.hardware.get("gpu")
    memory = "peak GPU memory" if gpu and str(report.options.get("device", "")).startswith("cuda") else "peak RSS"
    lines = [f"| measurement | median | spread (max−min) | runs | {memory} | status | note |",
             "|---|---|---|---|---|---|---|"]
    for m in report.measurements:
        note = m.note
        if len(m.seconds) > 1 and m.median and m.seconds[0] > 2 * m.median:
            note = f"first run {_fmt_s(m.seconds[0])} (one-time costs); " + note
        if "ratio" in m.extra:
            note = (f"ratio to plain diffusers {m.extra['ratio']:.3f} (fastest runs "
                    f"{m.extra.get('ratio_of_fastest', 0):.3f}); " + note)
        lines.append(f"| {m.title} | {_fmt_s(m.median)} | {_fmt_s(m.spread) if len(m.seconds) > 1 else '—'} | "
                     f"{len(m.seconds)} | {_fmt_bytes(m.peak_memory_bytes)} | {m.status} | {note} |")
    lines += ["", "| target | limit | measured | result | note |", "|---|---|---|---|---|"]
    for t in report.targets:
        value = "—" if t.value is None else (f"{t.value:.3f}" if "ratio" in t.limit else _fmt_s(t.value))
        lines.append(f"| {t.name} | {t.limit} | {value} | {t.status} | {t.note} |")
    return "\n".join(lines)


def describe_run(report: BenchReport) -> str:
    h, v, o = report.hardware, report.versions, report.options
    gpu = h.get("gpu") or "none"
    load = report.load_average
    return (f"Date {report.date}; device {o['device']}, scale {o['scale']}"
            f"{', quick' if o.get('quick') else ''}; CPU {h['cpu']} ({h['cores']} cores, torch uses "
            f"{h['torch_threads']} threads); GPU {gpu}; Python {v['python']}, torch {v['torch']}, diffusers "
            f"{v['diffusers']}, transformers {v['transformers']}"
            f"{'; OMP_WAIT_POLICY=' + h['omp_wait_policy'] if h.get('omp_wait_policy') else ''}; load average at start {load.get('start')}, at "
            f"end {load.get('end')}; whole run {report.total_s:.0f} s.")


DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
_DOC_SKELETON = """# Benchmarks

Generated by `python main.py bench --write-docs` (each run replaces only its own section; the text
outside the marked sections is written by hand and kept). Rerun on a quiet machine before quoting numbers.

## CPU, built-in model
<!-- bench:cpu-builtin:start -->
not measured yet
<!-- bench:cpu-builtin:end -->

## GPU, SD 1.5-sized model
<!-- bench:cuda-sd15:start -->
not measured yet
<!-- bench:cuda-sd15:end -->
"""


def doc_section(report: BenchReport) -> str:
    o = report.options
    device = "cuda" if str(o["device"]).startswith("cuda") else "cpu"
    return f"{device}-{o['scale']}"


def write_docs(report: BenchReport, path: Path = DOC_PATH) -> Path:
    """Replace this run's section of docs/benchmarks.md (adding it when missing); keep everything else."""
    from engine.atomic import atomic_path

    text = path.read_text(encoding="utf-8") if path.is_file() else _DOC_SKELETON
    section = doc_section(report)
    start, end = f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"
    policy = report.hardware.get("omp_wait_policy")
    env = f"OMP_WAIT_POLICY={policy} " if policy else ""
    body = (f"{describe_run(report)}\n\nCommand: `{env}python main.py bench --device {report.options['device']} "
            f"--scale {report.options['scale']}{' --quick' if report.options.get('quick') else ''}`\n\n"
            f"{format_table(report)}\n")
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {section}\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def write_json(report: BenchReport, stream: Any = None) -> None:
    json.dump(report.to_json(), stream or sys.stdout, indent=1)
    (stream or sys.stdout).write("\n")
