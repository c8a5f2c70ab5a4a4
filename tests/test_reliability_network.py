"""No network, no code from data.

Every job a user can run (load, generate, erase, export in each format and reload, evaluate) runs with
every socket connection and name lookup refused, and none is even attempted. And no Python file in the
repository deserialises with pickle (or anything like it) except ``torch.load(..., weights_only=True)``,
found by parsing the source rather than by matching text, so comments and strings do not count.
tests/test_foundation.py already checks loading and generating offline; this extends it to the rest.
"""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest
from test_foundation import no_network  # noqa: F401  (the fixture this one extends)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def offline(no_network: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:  # noqa: F811
    """no_network (connect/connect_ex/create_connection refused and recorded) plus refused name lookups."""

    def refuse_lookup(*args, **kwargs):
        no_network.append(f"getaddrinfo{args[:2]!r}")
        raise socket.gaierror("name lookups are blocked in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    return no_network


def test_every_job_runs_with_the_network_blocked(offline: list[str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from engine.evaluate import EvalRequest, compact_suite, evaluate
    from engine.export import ExportRequest, export
    from engine.generate import GenerationRequest, generate
    from engine.methods import EraseRequest, erase
    from engine.model import load_model
    from main import main

    model = load_model("builtin", device="cpu", dtype=torch.float32)
    assert len(generate(model, GenerationRequest("a red circle", seeds=[0, 1], steps=3))) == 2
    edit = erase(model, EraseRequest("uce", ["red"], params={"vocabulary_sample": 20}))
    model.stack.push(edit)
    model.stack.push(erase(model, EraseRequest("esd-x-strict", ["star"], params={"iterations": 2, "ddim_steps": 3})),
                     0.5)  # on top of the UCE edit; -strict: only K/V, which a LoRA can hold
    model.stack.push(erase(model, EraseRequest("sld", ["blue"])))
    generate(model, GenerationRequest("a blue circle", seeds=[0], steps=3))

    targets = {"single-file": tmp_path / "model.safetensors", "diffusers": tmp_path / "folder",
               "lora": tmp_path / "lora.safetensors", "edit": tmp_path / "edit.safetensors"}
    for fmt, target in targets.items():
        result = export(model, ExportRequest(fmt, target))
        assert target.exists() and result.check, fmt
    for source in (targets["single-file"], targets["diffusers"]):  # reloading the exports reads configs too
        reloaded = load_model(source, device="cpu")
        assert reloaded.architecture == "shapesworld"
        generate(reloaded, GenerationRequest("a red circle", seeds=[0], steps=2))

    report = evaluate(model, EvalRequest(seeds=[0, 1], steps=4, erased=["red"], use_cache=False,
                                         cases=compact_suite(["red"], others=2)))
    assert report.erased["red"]["efficacy"] is not None and report.specificity is not None

    code = main(["generate", "--model", "builtin", "--edit", str(targets["edit"]), "--prompt", "a red circle",
                 "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "images")])
    assert code == 0, capsys.readouterr().err
    assert offline == [], f"network access was attempted: {offline}"


# ---------------------------------------------------------------- no code from data
def _dotted(node: ast.AST) -> str:
    """'torch.load' for the call target torch.load, '' for anything that is not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _constant(keywords: dict[str, ast.expr], key: str, value: bool) -> bool:
    node = keywords.get(key)
    return isinstance(node, ast.Constant) and node.value is value


UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle"}
LOADING = {"load", "loads", "Unpickler", "open", "decode"}


def unsafe_deserialisation(source: str) -> list[str]:
    """Every place in ``source`` that could turn data into running code, as 'line: what'."""
    problems = []
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> module it stands for ("import pickle as pk")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
            bad = [a.name for a in node.names if a.name in LOADING]
            if bad:
                problems.append(f"{node.lineno}: from {node.module} import {', '.join(bad)}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, attr = name.partition(".")
        module = aliases.get(head, head)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if module.split(".")[0] in UNPICKLERS and attr.split(".")[-1] in LOADING:
            problems.append(f"{node.lineno}: {name}(...)")
        elif module == "torch" and attr == "load" and not _constant(keywords, "weights_only", True):
            problems.append(f"{node.lineno}: {name}(...) without weights_only=True")
        elif module in ("numpy", "np") and attr == "load" and "allow_pickle" in keywords \
                and not _constant(keywords, "allow_pickle", False):
            problems.append(f"{node.lineno}: {name}(..., allow_pickle=...)")
        elif module == "yaml" and attr in ("load", "load_all", "unsafe_load", "full_load") \
                and "SafeLoader" not in ast.unparse(keywords.get("Loader", ast.Constant(None))):
            problems.append(f"{node.lineno}: {name}(...) without SafeLoader")
        if _constant(keywords, "trust_remote_code", True):
            problems.append(f"{node.lineno}: {name}(..., trust_remote_code=True)")
    return problems


def test_the_checker_finds_each_unsafe_form() -> None:
    bad = ("import pickle\npickle.load(f)\n", "import pickle as pk\npk.loads(b)\n", "from pickle import load\n",
           "import torch\ntorch.load(p)\n", "import torch\ntorch.load(p, weights_only=False)\n",
           "import numpy as np\nnp.load(p, allow_pickle=True)\n",
           "import yaml\nyaml.load(s, Loader=yaml.Loader)\n", "import yaml\nyaml.load(s)\n",
           "import joblib\njoblib.load(p)\n", "x.from_pretrained(p, trust_remote_code=True)\n",
           "import dill\ndill.loads(b)\n", "import pickle\npickle.Unpickler(f).load()\n")
    for source in bad:
        assert unsafe_deserialisation(source), source
    good = ("import torch\ntorch.load(p, map_location='cpu', weights_only=True)\n",
            "import pickle\npickle.dump(x, f)\n", "import numpy as np\nnp.load(p)\n",
            "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)\n",
            "# pickle.load(f) in a comment\ns = 'torch.load(p)'\n")
    for source in good:
        assert not unsafe_deserialisation(source), source


def python_files() -> list[Path]:
    skip = {".venv", "venv", ".git", "build", "dist", "node_modules", "__pycache__"}
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part in skip or part.startswith(".") for part in p.relative_to(ROOT).parts))


def test_no_file_deserialises_anything_but_plain_weights() -> None:
    """Test files included: the hostile-file tests only ever write pickles (pickle.dump, torch.save)."""
    files = python_files()
    assert ROOT / "engine" / "model.py" in files and len(files) > 40
    found = {str(p.relative_to(ROOT)): problems for p in files
             if (problems := unsafe_deserialisation(p.read_text(encoding="utf-8")))}
    assert found == {}, found
