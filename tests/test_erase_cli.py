"""`main.py erase`: writes an edit file, prints progress and one summary line, fails in one line with exit 2."""

from __future__ import annotations

import json

import pytest

import engine  # noqa: F401
from engine.edits import EditDelta
from main import main


def test_uce_writes_an_edit_file(tmp_path, capsys):
    out = tmp_path / "red.safetensors"
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("# colors\nblue\n\n", encoding="utf-8")
    code = main(["erase", "--model", "builtin", "--device", "cpu", "--method", "uce", "--concept", "red",
                 "--concepts-file", str(concepts), "--preserve", "green", "--set", "lamb=0.7",
                 "--set", "edit=values", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    edit = EditDelta.load(out)
    assert edit.manifest["method"] == "uce"
    assert edit.manifest["concepts"]["targets"] == ["red", "blue"]
    assert edit.manifest["params"]["lamb"] == 0.7
    assert all(".to_v." in name for name in edit.deltas)
    summary = captured.out.strip().splitlines()
    assert len(summary) == 1 and "uce" in summary[0] and "s" in summary[0].split()[-1]
    assert "[erase]" in captured.err  # progress went to stderr

    # `info` describes the file from its header alone
    assert main(["info", str(out)]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines["method"] == "uce" and lines["erases"] == "red, blue"
    assert "lamb=0.7" in lines["parameters"] and lines["weights"].startswith(f"{len(edit.deltas)} tensor(s)")
    assert main(["info", str(out), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["manifest"] == edit.manifest
    assert {k: tuple(v) for k, v in described["weights"].items()} == {k: tuple(v.shape) for k, v in edit.deltas.items()}


def test_info_refuses_a_model_file_in_one_line(capsys):
    from engine.model import BUILTIN_PATH

    assert main(["info", str(BUILTIN_PATH / "unet" / "diffusion_pytorch_model.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: diffusion_pytorch_model.safetensors is not an Erasure Studio edit (it has no manifest); "
                   "'info' describes edit files.")


@pytest.mark.parametrize("argv, message", [
    (["--method", "nope", "--concept", "red"], "Unknown method"),
    (["--method", "uce", "--concept", "red", "--set", "colour=1"], "no parameter"),
    (["--method", "uce", "--concept", "red", "--set", "lamb"], "key=value"),
    (["--method", "uce", "--concept", " "], "empty"),
    (["--method", "uce"], "at least one"),
    (["--method", "uce", "--concept", "red", "--concepts-file", "/nonexistent/c.txt"], "does not exist"),
    (["--method", "speed", "--concept", "red", "--set", "threshold=-1"], "between"),
])
def test_errors_are_one_line_with_exit_2(tmp_path, capsys, argv, message):
    code = main(["erase", *argv, "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "x.safetensors").exists()


def test_out_must_be_a_safetensors_file(tmp_path, capsys):
    code = main(["erase", "--method", "uce", "--concept", "red", "--out", str(tmp_path / "x.bin")])
    assert code == 2 and ".safetensors" in capsys.readouterr().err


def test_list_params(capsys):
    assert main(["erase", "--method", "rece", "--list-params"]) == 0
    out = capsys.readouterr().out
    assert "embedding_reg" in out and "epochs" in out
