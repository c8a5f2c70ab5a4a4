"""Input validation: every bad value is one clear sentence (CLI: one line, exit 2), and a concept longer
than the text encoder can read is cut at a word boundary with a warning instead of silently.

Covered elsewhere and not repeated here: empty/duplicate concepts and bad --set values of `erase`
(tests/test_erase_cli.py), the concept editor's inline problems (tests/test_gui_widgets.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import weights_digest
from test_gui_flow import choose_method, idle, open_window, studio_home  # noqa: F401  (studio_home is a fixture)
from test_loading import _one_sentence

from engine.edits import EditDelta
from engine.jobs import InputError
from main import main

LONG = " ".join(["a", "bright", "red", "circle", "on", "a", "white", "background"] * 12)  # 96 words


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    """Run main.py in-process: (exit status, the error lines, all of stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse ends the process itself, as `python main.py` would
        code = exc.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error:")], err


def small_edit(pipe) -> EditDelta:
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    return EditDelta.create(pipe, {name: torch.full(pipe.unet.get_parameter(name[5:]).shape, 1e-3)}, "test",
                            {"targets": ["red"]}, {})


# ---------------------------------------------------------------- concepts
@pytest.mark.parametrize("concepts", [[""], ["   "], ["\t\n"], ["red", " "], []], ids=repr)
def test_empty_and_whitespace_concepts_are_refused_by_every_method(concepts: list[str], builtin_model) -> None:
    from engine.methods import EraseRequest, all_methods, erase

    for method in all_methods():
        with pytest.raises(InputError) as info:
            erase(builtin_model, EraseRequest(method, list(concepts)))
        assert _one_sentence(info.value.user_message), info.value.user_message
        assert "concept" in info.value.user_message


def test_a_concept_longer_than_the_tokenizer_limit_is_cut_with_a_warning(builtin_model) -> None:
    from engine.methods import EraseRequest, erase

    tokenizer = builtin_model.pipe.tokenizer
    limit = tokenizer.model_max_length - 2
    assert len(tokenizer(LONG, add_special_tokens=False).input_ids) > limit
    reports = []
    digest = weights_digest(builtin_model)
    edit = erase(builtin_model, EraseRequest("uce", [LONG], params={"vocabulary_sample": 20}), reports.append)
    warnings = [p.message for p in reports if p.stage == "warning"]
    assert len(warnings) == 1 and _one_sentence(warnings[0]) and "tokens long" in warnings[0]
    assert edit.manifest["warnings"] == warnings
    target = edit.manifest["concepts"]["targets"][0]
    assert LONG.startswith(target) and LONG[len(target)] == " "  # cut at a word boundary
    assert len(tokenizer(target, add_special_tokens=False).input_ids) <= limit
    assert all(torch.isfinite(d).all() for d in edit.deltas.values())
    assert weights_digest(builtin_model) == digest

    short = erase(builtin_model, EraseRequest("sld", ["red"]), reports.append)
    assert "warnings" not in short.manifest  # a concept that fits gets no warning


def test_cli_warns_in_one_line_for_a_long_concept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "long.safetensors"
    code, errors, err = cli(["erase", "--model", "builtin", "--device", "cpu", "--method", "sld", "--concept", LONG,
                             "--out", str(out)], capsys)
    assert code == 0 and not errors, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "tokens long" in warnings[0]
    assert EditDelta.load(out).manifest["warnings"]


# ---------------------------------------------------------------- strength and seeds in the engine
@pytest.mark.parametrize("strength", [-0.1, 2.01, 100.0, float("nan"), float("inf"), "1", None])
def test_strength_outside_its_range_is_refused_and_nothing_changes(strength, builtin_model) -> None:
    stack = builtin_model.stack
    edit = small_edit(builtin_model.pipe)
    digest = weights_digest(builtin_model)
    with pytest.raises(InputError, match="Strength must be a number between 0 and 2"):
        stack.push(edit, strength)
    assert len(stack) == 0 and weights_digest(builtin_model) == digest
    stack.push(edit, 0.5)
    try:
        applied = weights_digest(builtin_model)
        with pytest.raises(InputError, match="Strength must be"):
            stack.set_strength(0, strength)
        assert stack.entries[0].strength == 0.5 and weights_digest(builtin_model) == applied
    finally:
        stack.clear()


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40, 1.5, True, "3"])
def test_seeds_outside_0_to_2_32_are_refused(seed, builtin_model) -> None:
    from engine.generate import GenerationRequest, generate
    from engine.methods import EraseRequest, erase

    with pytest.raises(InputError, match="from 0 to 4294967295"):
        generate(builtin_model, GenerationRequest("a red circle", seeds=[0, seed], steps=2))
    with pytest.raises(InputError, match="from 0 to 4294967295"):
        erase(builtin_model, EraseRequest("sld", ["red"], seed=seed))


def test_the_edges_of_the_seed_range_work(builtin_model) -> None:
    from engine.generate import MAX_SEED, GenerationRequest, generate

    images = generate(builtin_model, GenerationRequest("a red circle", seeds=[0, MAX_SEED], steps=2))
    assert len(images) == 2


@pytest.mark.parametrize("field,value,phrase", [
    ("steps", 0, "Steps"), ("steps", 1001, "Steps"), ("steps", 2.5, "Steps"),
    ("guidance", float("nan"), "Guidance"), ("guidance", -1.0, "Guidance"), ("guidance", float("inf"), "Guidance"),
    ("width", 30, "multiples of 8"), ("height", -8, "multiples of 8"), ("scheduler", "euler", "Unknown scheduler"),
])
def test_generation_values_are_checked(field: str, value, phrase: str, builtin_model) -> None:
    from engine.generate import GenerationRequest, generate

    request = GenerationRequest("a red circle", seeds=[0], steps=2)
    setattr(request, field, value)
    with pytest.raises(InputError, match=phrase) as info:
        generate(builtin_model, request)
    assert _one_sentence(info.value.user_message)


# ---------------------------------------------------------------- the command line
CLI_CASES = {
    # name: (arguments, phrase in the one error line)
    "steps not a number": (["generate", "--prompt", "x", "--out", "{out}", "--steps", "abc"], "invalid int value"),
    "guidance not a number": (["generate", "--prompt", "x", "--out", "{out}", "--guidance", "lots"],
                              "invalid float value"),
    "width not a number": (["generate", "--prompt", "x", "--out", "{out}", "--width", "wide"], "invalid int value"),
    "seeds not numbers": (["generate", "--prompt", "x", "--out", "{out}", "--seeds", "a-b"], "not a seed list"),
    "seed above 2^32-1": (["generate", "--prompt", "x", "--out", "{out}", "--seeds", "4294967296"],
                          "seeds must be from 0 to 4294967295"),
    "negative seed": (["generate", "--prompt", "x", "--out", "{out}", "--seeds=-1"], "not a seed list"),
    "strength not a number": (["generate", "--prompt", "x", "--out", "{out}", "--edit", "e.safetensors",
                               "--strength", "full"], "invalid float value"),
    "strength out of range": (["generate", "--prompt", "x", "--out", "{out}", "--edit", "e.safetensors",
                               "--strength", "3"], "Strength must be a number between 0 and 2"),
    "erase seed out of range": (["erase", "--method", "sld", "--concept", "red", "--seed=-5",
                                 "--out", "{out}.safetensors"], "from 0 to 4294967295"),
    "erase seed not a number": (["erase", "--method", "uce", "--concept", "red", "--seed", "x",
                                 "--out", "{out}.safetensors"], "invalid int value"),
    "method value not a number": (["erase", "--method", "uce", "--concept", "red", "--set", "lamb=much",
                                   "--out", "{out}.safetensors"], "lamb must be a float value"),
    "method value out of range": (["erase", "--method", "esd-x", "--concept", "red", "--set", "iterations=0",
                                   "--out", "{out}.safetensors"], "iterations must be between"),
    "whitespace concept": (["erase", "--method", "uce", "--concept", " \t ", "--out", "{out}.safetensors"],
                           "empty"),
    "export energy not a number": (["export", "--format", "lora", "--out", "{out}.safetensors", "--energy", "most"],
                                   "invalid float value"),
    "eval seeds above 2^32-1": (["eval", "--seeds", "0-4294967296"], "seeds must be from 0 to 4294967295"),
    "four billion seeds": (["eval", "--seeds", "0-4294967295"], "at most 10000 seeds"),
    "unknown subcommand": (["paint"], "invalid choice"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_values_are_one_line_with_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, phrase = CLI_CASES[case]
    out = tmp_path / "out"
    code, errors, err = cli([a.replace("{out}", str(out)) for a in argv], capsys)
    assert code == 2, err
    assert len(errors) == 1 and phrase in errors[0], err
    assert len([line for line in err.splitlines() if line.strip()]) == 1 or "[load]" in err, err
    assert "Traceback" not in err and "usage:" not in err
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_cli_guidance_nan_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """argparse takes "nan" as a float; the engine refuses it (after the model loaded) in one line."""
    code, errors, err = cli(["generate", "--model", "builtin", "--device", "cpu", "--prompt", "x", "--steps", "2",
                             "--guidance", "nan", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(errors) == 1 and "Guidance must be a number" in errors[0], err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the studio
def test_studio_warns_for_empty_and_too_long_concepts(qtbot, studio_home) -> None:  # noqa: F811
    window = open_window(qtbot)
    s, c = window.state, window.controller
    try:
        c.set_concepts([{"text": "   ", "kind": "color"}])
        assert c.erase() is None  # refused before any job
        assert s.error is not None and s.error.level == "warning" and "concept" in s.error.message
        assert window.banner.isVisible() and s.doc.stack == []

        choose_method(window, "sld")
        c.set_concepts([{"text": LONG, "kind": "object"}])
        s.set_error(None)
        c.erase()
        qtbot.waitUntil(lambda: len(s.doc.stack) == 1, timeout=120_000)
        idle(qtbot, window)
        assert s.error is not None and s.error.level == "warning" and "tokens long" in s.error.message
        assert window.banner.isVisible()
    finally:
        window.close()
