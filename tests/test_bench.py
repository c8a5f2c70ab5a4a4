"""The benchmark command: its record's shape, target evaluation, the docs writer and the memory probe.

These tests check behaviour (what is measured and how it is reported), never timings.
"""

from __future__ import annotations

import json

import pytest

from engine.bench import BenchOptions, PeakMemory, PhaseClock, concept_list, default_sampling_work
from engine.bench_report import TARGETS, BenchReport, Measurement, evaluate_targets, write_docs
from engine.jobs import InputError, Progress
from main import main

TARGET_STATUSES = {"pass", "fail", "not measured", "n/a", "pass (extrapolated)", "fail (extrapolated)"}


def _report(*measurements: Measurement) -> BenchReport:
    return BenchReport(options={"device": "cpu", "scale": "builtin", "quick": False},
                       hardware={"cpu": "x", "cores": 2, "torch_threads": 2, "gpu": None},
                       versions={"python": "3", "torch": "t", "diffusers": "d", "transformers": "tr"},
                       date="2026-01-01T00:00:00+00:00", measurements=list(measurements),
                       load_average={"start": [1.0], "end": [1.0]})


def test_quickest_cli_run_prints_a_complete_json_record(tmp_path, capsys):
    json_out = tmp_path / "bench.json"
    docs = tmp_path / "benchmarks.md"
    code = main(["bench", "--quick", "--repeat", "1", "--only", "load,generate,closed-form", "--concepts", "1",
                 "--json", "--json-out", str(json_out), "--write-docs", "--docs-path", str(docs)])
    assert code == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record == json.loads(json_out.read_text(encoding="utf-8"))
    assert record["schema"] == "erasure-studio-bench/1"
    assert record["date"][:4].isdigit()
    assert {"cpu", "cores", "gpu", "torch_threads"} <= set(record["hardware"])
    assert record["hardware"]["cores"] >= 1
    assert set(record["versions"]) == {"python", "torch", "diffusers", "transformers"}
    assert record["options"]["device"] == "cpu" and record["options"]["scale"] == "builtin"
    by_key = {m["key"]: m for m in record["measurements"]}
    assert {"load", "generate.studio", "generate.diffusers", "uce.1", "speed.1", "rece.1"} <= set(by_key)
    for m in record["measurements"]:
        assert {"key", "group", "title", "seconds", "median_s", "spread_s", "runs", "status",
                "peak_memory_bytes", "note"} <= set(m)
        assert m["status"] in ("ok", "not available", "failed", "extrapolated")
        if m["status"] == "ok":
            assert m["runs"] == len(m["seconds"]) >= 1 and m["median_s"] > 0
            assert m["peak_memory_bytes"] > 0
    assert by_key["generate.studio"]["status"] == "ok", by_key["generate.studio"]["note"]
    assert by_key["generate.studio"]["extra"]["ratio"] > 0
    assert not any(g == "export" for g in (m["group"] for m in record["measurements"]))
    names = [t["name"] for t in record["targets"]]
    assert names == [name for name, _, _ in TARGETS]
    assert all(t["status"] in TARGET_STATUSES for t in record["targets"])
    status = {t["name"]: t["status"] for t in record["targets"]}
    assert status["single-file export fp16"] == "n/a"  # a GPU-only target
    assert status["ESD-x default iterations"] == "not measured"
    # the table goes to stderr with --json, and the docs file got this run's section
    assert "| measurement |" in captured.err and "| target |" in captured.err
    text = docs.read_text(encoding="utf-8")
    assert "<!-- bench:cpu-builtin:start -->" in text and "studio generate" in text
    assert "GPU" in text and "not measured yet" in text  # the other section is left alone


def test_quick_fine_tuning_is_extrapolated_and_labelled(tmp_path, capsys):
    code = main(["bench", "--quick", "--repeat", "1", "--only", "fine-tune", "--iterations", "2", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    by_key = {m["key"]: m for m in record["measurements"]}
    for method in ("esd-x", "ca"):
        default = by_key[f"{method}.default"]
        if default["status"] == "not available":
            continue
        assert default["status"] == "extrapolated", default["note"]
        assert "EXTRAPOLATED" in default["title"] and default["extra"]["measured_iterations"] == 2
        assert default["median_s"] > by_key[f"{method}.iteration"]["median_s"] > 0
    esd = next(t for t in record["targets"] if t["name"] == "ESD-x default iterations")
    assert esd["status"].endswith("(extrapolated)")


def test_targets_pass_fail_and_not_applicable():
    studio = Measurement("generate.studio", "generate", "s", [1.0], extra={"ratio": 1.2})
    uce1 = Measurement("uce.1", "closed-form", "u", [0.2, 0.4, 0.3])
    uce100 = Measurement("uce.100", "closed-form", "u", [4.0])
    speed100 = Measurement("speed.100", "closed-form", "s", [2.0])
    esd = Measurement("esd-x.default", "fine-tune", "e", [150.0], status="extrapolated", note="guess")
    report = _report(studio, uce1, uce100, speed100, esd)
    results = {t.name: t for t in evaluate_targets(report, BenchOptions())}
    assert results["studio generation vs plain diffusers, same settings"].status == "fail"
    assert results["UCE 1 concept"].status == "pass" and results["UCE 1 concept"].value == pytest.approx(0.3)
    assert results["SPEED or UCE 100 concepts"].status == "pass"  # the faster of the two counts
    assert "SPEED" in results["SPEED or UCE 100 concepts"].note
    assert results["ESD-x default iterations"].status == "fail (extrapolated)"
    assert results["after-grid refresh, 4 images, 20 steps"].status == "not measured"
    assert results["single-file export fp16"].status == "n/a"
    gpu = {t.name: t for t in evaluate_targets(report, BenchOptions(device="cuda", scale="sd15"))}
    assert gpu["single-file export fp16"].status == "not measured"
    assert gpu["SPEED or UCE 100 concepts"].limit == "≤ 5 s"


def test_a_failed_job_counts_as_not_measured():
    failed = Measurement("uce.1", "closed-form", "u", [], status="failed", note="boom")
    result = {t.name: t for t in evaluate_targets(_report(failed), BenchOptions())}["UCE 1 concept"]
    assert result.status == "not measured" and result.value is None


def test_concept_lists_are_distinct_and_sized(builtin_model):
    for count in (1, 10, 100):
        concepts = concept_list(builtin_model, count)
        assert len(concepts) == count
        assert len({c.lower() for c in concepts}) == count
    assert concept_list(builtin_model, 1) == ["red"]


def test_phase_clock_splits_sampling_from_iterations():
    clock = PhaseClock()
    clock(Progress("esd-x", 0, 5, "start"))  # step 0 is the announcement, not work
    clock(Progress("esd-x", 1, 5, "sampling step 1/3 (4 trajectories)"))
    clock(Progress("esd-x", 2, 5, "sampling step 2/3 (2 trajectories)"))
    for i in range(3):
        clock(Progress("esd-x", 3 + i, 5, f"iteration {i + 1}/3, loss 0.1"))
    phases = clock.phases()
    assert phases.sampling_work == 6
    assert len(phases.iteration_s) == 3
    assert phases.sampling_s >= 0 and all(s >= 0 for s in phases.iteration_s)


def test_default_sampling_work():
    assert default_sampling_work("ca", {"anchor_images": 64, "sample_steps": 25}, 0) == 1600
    params = {"iterations": 200, "batch_size": 1, "trajectories": 50, "ddim_steps": 50}
    work = default_sampling_work("esd-x", params, 0)
    assert 50 <= work <= 50 * 50
    one = default_sampling_work("esd-x", {**params, "iterations": 1}, 0)
    assert 1 <= one <= 50


def test_write_docs_replaces_only_its_section(tmp_path):
    docs = tmp_path / "b.md"
    report = _report(Measurement("uce.1", "closed-form", "UCE 1 concept", [0.1]))
    report.targets = evaluate_targets(report, BenchOptions())
    write_docs(report, docs)
    text = docs.read_text(encoding="utf-8").replace("not measured yet", "HAND WRITTEN GPU NOTE", 1)
    docs.write_text(text + "\n## Why a target was missed\nhand-written analysis\n", encoding="utf-8")
    report.measurements[0].seconds = [0.2]
    report.targets = evaluate_targets(report, BenchOptions())
    write_docs(report, docs)
    text = docs.read_text(encoding="utf-8")
    assert "HAND WRITTEN GPU NOTE" in text and "hand-written analysis" in text
    assert text.count("<!-- bench:cpu-builtin:start -->") == 1
    assert "200 ms" in text and "100 ms" not in text


def test_peak_memory_sees_an_allocation():
    import torch

    with PeakMemory("cpu") as small:
        torch.zeros(1000).sum()
    with PeakMemory("cpu") as large:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written so it is resident
        float(block.sum())
        del block
    assert small.peak and large.peak
    assert large.peak >= small.peak + 48 * 2**20


@pytest.mark.parametrize("options", [BenchOptions(scale="sdxl"), BenchOptions(only=("nope",)),
                                     BenchOptions(repeat=0), BenchOptions(size=100)])
def test_bad_options_are_one_sentence(options):
    with pytest.raises(InputError):
        options.validate()


def test_unknown_group_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--only", "everything"])
    assert "unknown group" in capsys.readouterr().err
