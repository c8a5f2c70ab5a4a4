"""Resource limits: running out of memory in a job is one sentence with the next step to try, the studio
keeps running, and repeated erase -> preview -> undo cycles do not leak memory.

Out-of-memory is produced two ways: a real failed CPU allocation (torch's allocator raising
"DefaultCPUAllocator: can't allocate memory", by asking for 40 TB), and the CUDA allocator's
``torch.OutOfMemoryError`` raised where the GPU would raise it (inside the UNet's forward), since these
tests run without a GPU.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch
from conftest import weights_digest
from test_gui_flow import WAIT_MS, choose_method, idle, open_window, studio_home  # noqa: F401  (fixture)
from test_loading import _one_sentence


def real_cpu_oom(*_args, **_kwargs):
    """Ask torch's CPU allocator for 40 TB: the allocation fails exactly as a real one does."""
    return torch.empty(10**13)


def cuda_oom(*_args, **_kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 8.00 GiB total capacity; "
                                 "6.10 GiB already allocated)")


def _unet_class():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel


def test_the_cpu_allocators_failure_is_recognised_as_out_of_memory() -> None:
    from engine.jobs import is_out_of_memory, out_of_memory_error

    with pytest.raises(RuntimeError) as info:
        real_cpu_oom()
    assert is_out_of_memory(info.value)
    message = out_of_memory_error(info.value, "cpu").user_message
    assert message.startswith("The computer ran out of memory; try") and _one_sentence(message)
    gpu = out_of_memory_error(torch.OutOfMemoryError("CUDA out of memory."), "cpu").user_message
    assert gpu.startswith("The GPU ran out of memory; try") and "switch the device to CPU" in gpu


# ---------------------------------------------------------------- the command line
CLI_OOM = {
    # name: (arguments, what to break, how, phrase)
    "generate, GPU": (["generate", "--prompt", "a red circle", "--steps", "2", "--out", "{out}"],
                      "unet", cuda_oom, "The GPU ran out of memory"),
    "generate, CPU": (["generate", "--prompt", "a red circle", "--steps", "2", "--out", "{out}"],
                      "unet", real_cpu_oom, "The computer ran out of memory"),
    "erase UCE, CPU": (["erase", "--method", "uce", "--concept", "red", "--set", "vocabulary_sample=20",
                        "--out", "{out}.safetensors"], "solve", real_cpu_oom, "The computer ran out of memory"),
    "erase ESD, GPU": (["erase", "--method", "esd-x", "--concept", "red", "--set", "iterations=2",
                        "--set", "ddim_steps=3", "--out", "{out}.safetensors"], "unet", cuda_oom,
                       "The GPU ran out of memory"),
    "export, CPU": (["export", "--format", "single-file", "--out", "{out}.safetensors"], "ldm", real_cpu_oom,
                    "The computer ran out of memory"),
}


def _break(monkeypatch: pytest.MonkeyPatch, what: str, how) -> None:
    if what == "unet":
        monkeypatch.setattr(_unet_class(), "forward", how)
    elif what == "solve":
        monkeypatch.setattr("engine.closed_form.solve_right_factor", how)
    else:
        monkeypatch.setattr("engine.ldm_keys.pipeline_to_ldm_state_dict", how)


@pytest.mark.parametrize("case", list(CLI_OOM))
def test_cli_out_of_memory_is_one_line_with_exit_2(case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from main import main

    argv, what, how, phrase = CLI_OOM[case]
    _break(monkeypatch, what, how)
    out = tmp_path / "out"
    code = main([a.replace("{out}", str(out)) for a in argv] + ["--model", "builtin", "--device", "cpu"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1 and phrase in errors[0] and "; try" in errors[0], err
    assert _one_sentence(errors[0].removeprefix("error: "))
    assert "Traceback" not in err
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


# ---------------------------------------------------------------- the studio
def test_studio_turns_out_of_memory_into_a_banner_and_keeps_running(qtbot, studio_home,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    window = open_window(qtbot)
    s, c = window.state, window.controller
    try:
        loaded = c.worker.context.model
        digest = weights_digest(loaded)

        # a preview whose UNet runs out of GPU memory
        monkeypatch.setattr(_unet_class(), "forward", cuda_oom)
        c.set_seeds([0, 1, 4])
        idle(qtbot, window)
        assert s.error is not None and s.error.level == "error", s.error
        assert s.error.message.startswith("The GPU ran out of memory; try") and _one_sentence(s.error.message)
        assert window.banner.isVisible()
        monkeypatch.undo()

        # an erasure whose solve runs out of CPU memory
        s.set_error(None)
        window.concept_editor.add_concept("red", "color")
        choose_method(window, "uce")
        monkeypatch.setattr("engine.closed_form.solve_right_factor", real_cpu_oom)
        c.erase()
        idle(qtbot, window)
        assert s.error is not None and s.error.message.startswith("The computer ran out of memory; try"), s.error
        assert window.banner.isVisible() and s.doc.stack == []
        assert c.worker.context.model is loaded and weights_digest(loaded) == digest
        monkeypatch.undo()

        # the studio keeps running: the same erasure now works and the previews render
        s.set_error(None)
        c.erase()
        qtbot.waitUntil(lambda: len(s.doc.stack) == 1, timeout=WAIT_MS)
        idle(qtbot, window)
        assert s.error is None or s.error.level != "error", s.error
        assert all((prompt, 4) in s.after and (prompt, 4) not in s.intermediate for prompt in s.doc.prompts)
    finally:
        window.close()


# ---------------------------------------------------------------- no leak over many cycles
def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_thirty_erase_preview_undo_cycles_do_not_grow_memory(builtin_model) -> None:
    from engine.generate import GenerationRequest, generate
    from engine.methods import EraseRequest, all_methods, erase

    assert "uce" in all_methods()
    stack = builtin_model.stack
    digest = weights_digest(builtin_model)
    undo_to = stack.snapshot()
    sizes: list[int] = []
    # two warm-up cycles: the allocator's one-time step (about 55 MB) has landed after either the first or the second
    # cycle, depending on what ran before in the same worker; a leak grows every cycle
    for cycle in range(32):
        edit = erase(builtin_model, EraseRequest("uce", ["red"], preserve=["blue"],
                                                 params={"vocabulary_sample": 40}))
        stack.push(edit, 1.0)
        for prompt in ("a red circle", "a blue square"):
            generate(builtin_model, GenerationRequest(prompt, seeds=[cycle, cycle + 100], steps=3, preview_every=1))
        stack.restore(undo_to)  # undo: back to the snapshot before the erase
        del edit
        gc.collect()
        if cycle >= 2:
            sizes.append(resident_bytes())
    growth = sizes[-1] - sizes[0]
    print(f"resident memory after the first measured cycle: {sizes[0] / 2**20:.1f} MB, after 30: {sizes[-1] / 2**20:.1f} MB "
          f"(growth {growth / 2**20:+.1f} MB, peak {max(sizes) / 2**20:.1f} MB)")
    assert growth <= 50 * 2**20, [round(s / 2**20, 1) for s in sizes]
    assert sizes[-1] - sizes[-20] <= 10 * 2**20, [round(s / 2**20, 1) for s in sizes]  # flat at the end too
    assert weights_digest(builtin_model) == digest and len(stack) == 0
