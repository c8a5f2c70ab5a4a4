"""Cancel anywhere: every job kind, cancelled at random progress reports, leaves every weight bit-identical.

For each job (loading a folder and a single file, generating with and without an inference-time entry,
every erasure method registered in ``engine.methods.all_methods()``, every export format, evaluation) a
first run counts its progress reports N; then it runs again once per cancel point k (up to 10 points drawn
from 1..N-1 with a fixed seed), with a progress callback that cancels at the k-th report. Each of those
runs must raise ``Cancelled``; afterwards the model's weights hash exactly as before, its edit stack is the
same, and an export leaves nothing at its target (no file, no temporary). The final report is excluded:
a cancel that arrives with it has nothing left to stop.

Iteration counts come from the requests' own parameters (a few steps), so the whole file stays quick.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import weights_digest

from engine.jobs import Cancelled, CancelToken, Progress

POINTS = 10
# Small but real runs of each method (parameter names from each method's ParamSpecs).
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "uce": {"vocabulary_sample": 20},
    "rece": {"epochs": 2, "vocabulary_sample": 20},
    "speed": {"aug_num": 1},
    "esd-x": {"iterations": 3, "ddim_steps": 4, "trajectories": 2},
    "esd-x-strict": {"iterations": 3, "ddim_steps": 4, "trajectories": 2},
    "esd-u": {"iterations": 3, "ddim_steps": 4, "trajectories": 2},
    "ca": {"iterations": 3, "anchor_images": 2, "sample_steps": 3, "batch_size": 1},
    "sld": {},
}
# For a method registered later: shrink whatever looks like an iteration count to its smallest sensible value.
_SHRINK = {"iterations": 3, "epochs": 1, "ddim_steps": 3, "sample_steps": 3, "steps": 3, "trajectories": 1,
           "anchor_images": 1, "batch_size": 1, "aug_num": 1, "vocabulary_sample": 20}

Job = Callable[[Callable[[Progress], None], CancelToken], Any]


def tiny_params(spec) -> dict[str, Any]:
    if spec.name in TINY_PARAMS:
        return dict(TINY_PARAMS[spec.name])
    params = {}
    for p in spec.params:
        if p.kind == "int" and p.name in _SHRINK:
            params[p.name] = max(int(p.minimum or 0), _SHRINK[p.name])
    return params


def count_reports(job: Job) -> int:
    reports = [0]

    def progress(_: Progress) -> None:
        reports[0] += 1

    job(progress, CancelToken())
    return reports[0]


def cancel_points(kind: str, total: int) -> list[int]:
    """Up to POINTS distinct report numbers in 1..total-1, drawn with a seed fixed per job kind."""
    candidates = range(1, total)
    return sorted(random.Random(f"cancel:{kind}").sample(candidates, min(POINTS, len(candidates))))


def run_cancelled_at(job: Job, k: int) -> bool:
    """Run ``job`` and cancel at its k-th progress report; True if it raised Cancelled."""
    token = CancelToken()
    reports = [0]

    def progress(_: Progress) -> None:
        reports[0] += 1
        if reports[0] == k:
            token.cancel()

    try:
        job(progress, token)
    except Cancelled:
        return True
    return False


def stack_state(model) -> list[tuple[int, float, bool]]:
    return [(id(edit), strength, enabled) for edit, strength, enabled in model.stack.snapshot()]


def check_cancel_everywhere(kind: str, job: Job, model, after_count: Callable[[], None] | None = None,
                            after_each: Callable[[int], None] | None = None) -> None:
    total = count_reports(job)
    assert total >= 2, f"{kind} reports progress only {total} time(s)"
    if after_count is not None:
        after_count()
    digest = weights_digest(model)
    stack = stack_state(model)
    for k in cancel_points(kind, total):
        assert run_cancelled_at(job, k), f"{kind}: a cancel at report {k} of {total} did not stop the job"
        assert weights_digest(model) == digest, f"{kind}: weights changed after a cancel at report {k}"
        assert stack_state(model) == stack, f"{kind}: the edit stack changed after a cancel at report {k}"
        if after_each is not None:
            after_each(k)


# ---------------------------------------------------------------- load
@pytest.fixture(scope="module")
def tiny_single_file(tmp_path_factory: pytest.TempPathFactory, tiny_sd1_dir: Path) -> Path:
    from safetensors.torch import save_file
    from test_loading import _tiny_state

    file = tmp_path_factory.mktemp("cancel-load") / "tiny.safetensors"
    save_file(_tiny_state(tiny_sd1_dir), str(file))
    return file


@pytest.mark.parametrize("source", ["folder", "single-file"])
def test_cancel_load_anywhere(source: str, builtin_model, tiny_sd1_dir: Path, tiny_single_file: Path) -> None:
    """Loading another model and cancelling leaves the loaded one as it was, and hands back no model."""
    from engine.model import load_model

    def job(progress, cancel):
        if source == "folder":
            return load_model(tiny_sd1_dir, device="cpu", progress=progress, cancel=cancel)
        return load_model(tiny_single_file, device="cpu", config=tiny_sd1_dir, progress=progress, cancel=cancel)

    check_cancel_everywhere(f"load-{source}", job, builtin_model)


# ---------------------------------------------------------------- generate
@pytest.mark.parametrize("with_sld", [False, True], ids=["plain", "with-sld-entry"])
def test_cancel_generate_anywhere(with_sld: bool, builtin_model) -> None:
    from engine.generate import GenerationRequest, generate
    from engine.methods import EraseRequest, erase

    if with_sld:
        builtin_model.stack.push(erase(builtin_model, EraseRequest("sld", ["red"])))
    try:
        def job(progress, cancel):
            return generate(builtin_model, GenerationRequest("a red circle", seeds=[0, 1], steps=8, preview_every=3),
                            progress, cancel)

        check_cancel_everywhere("generate" + ("-sld" if with_sld else ""), job, builtin_model)
    finally:
        builtin_model.stack.clear()


# ---------------------------------------------------------------- every registered erasure method
def _method_names() -> list[str]:
    from engine.methods import all_methods

    return list(all_methods())


@pytest.mark.parametrize("method", _method_names())
def test_cancel_erase_anywhere(method: str, builtin_model) -> None:
    from engine.edits import EditDelta, get_parameter
    from engine.methods import EraseRequest, erase, get_method

    spec = get_method(method)
    # an edit already on the stack: methods start from the edited weights and must leave them as they were
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    base = EditDelta.create(builtin_model.pipe, {name: 0.01 * get_parameter(builtin_model.pipe, name).detach()},
                            "test", {"targets": ["blue"]}, {})
    builtin_model.stack.push(base, 0.8)
    try:
        def job(progress, cancel):
            request = EraseRequest(method, ["red"], params=tiny_params(spec), seed=3)
            return erase(builtin_model, request, progress, cancel)

        check_cancel_everywhere(f"erase-{method}", job, builtin_model)
    finally:
        builtin_model.stack.clear()


# ---------------------------------------------------------------- export
@pytest.mark.parametrize("fmt,name", [("edit", "edit.safetensors"), ("lora", "lora.safetensors"),
                                      ("single-file", "model.safetensors"), ("diffusers", "model-folder")])
def test_cancel_export_anywhere(fmt: str, name: str, builtin_model, tmp_path: Path) -> None:
    from engine.atomic import remove_path
    from engine.export import ExportRequest, export
    from engine.methods import EraseRequest, erase

    builtin_model.stack.push(erase(builtin_model, EraseRequest("uce", ["red"], params=TINY_PARAMS["uce"])))
    builtin_model.stack.push(erase(builtin_model, EraseRequest("sld", ["star"])))  # skipped with a warning
    target = tmp_path / "out" / name

    def job(progress, cancel):
        return export(builtin_model, ExportRequest(fmt, target), progress, cancel)

    def nothing_left(k: int) -> None:
        assert not target.exists(), f"export {fmt}: a cancel at report {k} left {target.name}"
        assert list(target.parent.iterdir()) == [], f"export {fmt}: leftovers after a cancel at report {k}"

    def remove_the_uncancelled_export() -> None:
        assert target.exists()
        remove_path(target)

    try:
        check_cancel_everywhere(f"export-{fmt}", job, builtin_model, remove_the_uncancelled_export, nothing_left)
    finally:
        builtin_model.stack.clear()


# ---------------------------------------------------------------- evaluate (clears and restores the stack inside)
def test_cancel_evaluate_anywhere(builtin_model) -> None:
    from engine.evaluate import EvalRequest, compact_suite, evaluate
    from engine.methods import EraseRequest, erase

    builtin_model.stack.push(erase(builtin_model, EraseRequest("uce", ["red"], params=TINY_PARAMS["uce"])), 0.9)
    cases = compact_suite(["red"], others=2)[:4]
    try:
        def job(progress, cancel):
            request = EvalRequest(seeds=[0], steps=2, erased=["red"], use_cache=False, cases=cases)
            return evaluate(builtin_model, request, progress, cancel)

        check_cancel_everywhere("evaluate", job, builtin_model)
    finally:
        builtin_model.stack.clear()
