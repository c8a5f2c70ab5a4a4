"""Hostile edit and session files: a clear sentence, and nothing applied half-way.

Edit files: a wrong or damaged manifest, NaN or infinite deltas, tensors of the wrong shape, an edit
made for another model. Sessions: JSON with missing, extra or wrongly typed fields, and sessions that
point at files that no longer exist. Each is refused with one plain sentence and leaves the model's
stack and weights (and, in the studio, the document) exactly as they were.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import weights_digest
from safetensors.torch import save_file
from test_gui_flow import idle, open_window, studio_home  # noqa: F401  (studio_home is a fixture)
from test_loading import _one_sentence

from engine.edits import MANIFEST_KEY, EditDelta
from engine.jobs import EditMismatchError, InputError, StudioError

K = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
V = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"
T = "text_encoder.encoder.layers.0.self_attn.q_proj.weight"


def small_edit(pipe, names=(K, V), scale: float = 0.01, method: str = "uce") -> EditDelta:
    """A real EditDelta (fingerprinted against ``pipe``) with a small deterministic delta per weight."""
    from engine.edits import get_parameter

    g = torch.Generator().manual_seed(len(names))
    deltas = {n: scale * torch.randn(get_parameter(pipe, n).shape, generator=g) for n in names}
    return EditDelta.create(pipe, deltas, method, {"targets": ["red"]}, {"lamb": 0.5})


def _file_with(path: Path, tensors: dict[str, torch.Tensor], manifest) -> Path:
    metadata = {} if manifest is None else {MANIFEST_KEY: manifest if isinstance(manifest, str)
                                            else json.dumps(manifest)}
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def edit_files(tmp_path_factory: pytest.TempPathFactory, builtin_model, tiny_sd1_dir: Path) -> dict:
    """name -> (file, phrase of the refusal, when it is refused: "load" or "apply")."""
    from engine.model import load_model

    folder = tmp_path_factory.mktemp("edits")
    good = small_edit(builtin_model.pipe)
    good.save(folder / "good.safetensors")
    manifest = good.manifest
    deltas = good.deltas
    nan = {**deltas, V: deltas[V].clone().index_fill_(0, torch.tensor([3]), float("nan"))}
    inf = {**deltas, K: deltas[K].clone().index_fill_(1, torch.tensor([0]), float("inf"))}
    # made for a fine-tuned variant of the built-in model: same layout and shapes, other base weights
    variant = load_model("builtin", device="cpu", dtype=torch.float32)
    with torch.no_grad():
        variant.pipe.unet.get_parameter(K[5:]).add_(0.5)
    other_base = small_edit(variant.pipe)
    tiny = load_model(tiny_sd1_dir, device="cpu")
    tiny_edit = small_edit(tiny.pipe, ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",))
    tiny_other = small_edit(tiny.pipe, ("unet.down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight",))
    whole = (folder / "good.safetensors").read_bytes()
    files = {
        "no manifest": (_file_with(folder / "plain.safetensors", deltas, None), "no manifest", "load"),
        "manifest not JSON": (_file_with(folder / "notjson.safetensors", deltas, "{method: uce"), "damaged manifest",
                              "load"),
        "manifest without method": (_file_with(folder / "nomethod.safetensors", deltas, {"concepts": {}}),
                                    "damaged manifest", "load"),
        "concepts as text": (_file_with(folder / "concepts.safetensors", deltas, {**manifest, "concepts": "red"}),
                             "damaged manifest", "load"),
        "inference as text": (_file_with(folder / "inference.safetensors", {}, {**manifest, "inference": "sld"}),
                              "damaged manifest", "load"),
        "newer format": (_file_with(folder / "newer.safetensors", deltas, {**manifest, "format_version": 99}),
                         "newer version", "load"),
        "NaN delta": (_file_with(folder / "nan.safetensors", nan, manifest), "NaN or infinity", "load"),
        "infinite delta": (_file_with(folder / "inf.safetensors", inf, manifest), "NaN or infinity", "load"),
        "integer delta": (_file_with(folder / "int.safetensors", {K: torch.ones(3, dtype=torch.int64)}, manifest),
                          "invalid numbers", "load"),
        "unknown model part": (_file_with(folder / "vae.safetensors", {"vae.decoder.conv_in.weight": torch.ones(2)},
                                          manifest), "unknown part", "load"),
        "truncated file": ((folder / "truncated.safetensors"), "not a readable edit file", "load"),
        "wrong shape": (_file_with(folder / "shape.safetensors", {K: torch.zeros(3, 3)}, manifest),
                        "different model", "apply"),
        "missing weight": (_file_with(folder / "missing.safetensors", {"unet.nothing.here.weight": torch.zeros(3)},
                                      manifest), "missing", "apply"),
        "made on another base": (folder / "other-base.safetensors", "different base model", "apply"),
        "made for a smaller SD1": (folder / "tiny.safetensors", "different model", "apply"),
        "made for another layout": (folder / "tiny-other.safetensors", "missing", "apply"),
    }
    (folder / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    other_base.save(folder / "other-base.safetensors")
    tiny_edit.save(folder / "tiny.safetensors")
    tiny_other.save(folder / "tiny-other.safetensors")
    return {"good": folder / "good.safetensors", "bad": files}


def test_each_hostile_edit_is_refused_in_one_sentence_with_nothing_applied(builtin_model, edit_files) -> None:
    stack = builtin_model.stack
    applied = small_edit(builtin_model.pipe, (K, T), scale=0.02)
    stack.push(applied, 0.7)  # a stack that already holds an edit must keep it, bit for bit
    try:
        digest = weights_digest(builtin_model)
        for name, (path, phrase, stage) in edit_files["bad"].items():
            with pytest.raises(StudioError) as info:
                stack.push(EditDelta.load(path))
            message = info.value.user_message
            assert phrase in message and _one_sentence(message), (name, message)
            if stage == "apply":  # it read fine and was refused only against the model
                assert isinstance(info.value, EditMismatchError), name
            else:
                assert isinstance(info.value, InputError), name
            assert [(e.edit, e.strength) for e in stack.entries] == [(applied, 0.7)], name
            assert weights_digest(builtin_model) == digest, name
    finally:
        stack.clear()


def test_an_edit_made_on_top_of_another_fits_the_base_model(builtin_model, tmp_path: Path) -> None:
    """Edits made while others are applied carry the base model's fingerprint, so stacks reopen from files."""
    from engine.methods import EraseRequest, erase

    stack = builtin_model.stack
    first = erase(builtin_model, EraseRequest("uce", ["red"], params={"vocabulary_sample": 20}))
    stack.push(first)
    try:
        second = erase(builtin_model, EraseRequest("uce", ["star"], params={"vocabulary_sample": 20}))
        third = erase(builtin_model, EraseRequest("esd-x-strict", ["blue"], params={"iterations": 2, "ddim_steps": 3}))
        stack.push(second, 0.5)
        stack.push(third)
        applied = weights_digest(builtin_model)
        for i, edit in enumerate((first, second, third)):
            edit.save(tmp_path / f"{i}.safetensors")
        stack.clear()
        for i, strength in enumerate((1.0, 0.5, 1.0)):
            stack.push(EditDelta.load(tmp_path / f"{i}.safetensors"), strength)
        assert weights_digest(builtin_model) == applied
    finally:
        stack.clear()


def test_nan_deltas_made_in_memory_are_refused_too(builtin_model) -> None:
    """A method (or a script) that produced NaN must not reach the weights: the stack checks every push."""
    digest = weights_digest(builtin_model)
    edit = small_edit(builtin_model.pipe)
    edit.deltas[K][0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or infinity"):
        builtin_model.stack.push(edit)
    assert len(builtin_model.stack) == 0 and weights_digest(builtin_model) == digest


def test_restoring_a_snapshot_with_a_misfit_is_all_or_nothing(builtin_model, edit_files) -> None:
    stack = builtin_model.stack
    good = EditDelta.load(edit_files["good"])
    stack.push(good, 1.0)
    try:
        digest = weights_digest(builtin_model)
        misfit = EditDelta.load(edit_files["bad"]["made for a smaller SD1"][0])
        with pytest.raises(EditMismatchError):
            stack.restore([(good, 0.5, True), (misfit, 1.0, True)])
        with pytest.raises(InputError):
            stack.restore([(good, 0.5, True), (good, 7.0, True)])
        assert [(e.edit, e.strength) for e in stack.entries] == [(good, 1.0)]
        assert weights_digest(builtin_model) == digest
    finally:
        stack.clear()


def test_cli_refuses_broken_edit_files_before_loading_the_model(edit_files, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from main import main

    cases = [(n, c) for n, c in edit_files["bad"].items() if c[2] == "load"]
    cases += [("made for a smaller SD1", edit_files["bad"]["made for a smaller SD1"])]  # one that needs the model
    for name, (path, phrase, stage) in cases:
        out = tmp_path / "out"
        code = main(["generate", "--model", "builtin", "--device", "cpu", "--prompt", "a red circle", "--steps", "2",
                     "--edit", str(edit_files["good"]), "--edit", str(path), "--out", str(out)])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and phrase in errors[0], (name, err)
        assert not out.exists()
        if stage == "load":
            assert "[load]" not in err, name  # refused before the model was loaded


# ---------------------------------------------------------------- session files
def _session(folder: Path, builtin_model, strength: float = 0.5) -> tuple[Path, dict]:
    """A valid session on the built-in model with two edits; returns its path and JSON."""
    from app.session import ModelRef, write_session
    from app.state import Concept, Document, StackItem

    edits = {"aaaa1111": small_edit(builtin_model.pipe), "bbbb2222": small_edit(builtin_model.pipe, (T,))}
    doc = Document(concepts=[Concept("red", "color")], method="uce", prompts=["a red circle"], seeds=[0, 1],
                   stack=[StackItem("aaaa1111", "uce: red", "uce", strength), StackItem("bbbb2222", "uce: red", "uce")],
                   selected=1)
    path = write_session(folder / "work.session.json", ModelRef("builtin"), doc, edits)
    return path, json.loads(path.read_text())


def _variant(data: dict, change) -> dict:
    data = copy.deepcopy(data)
    change(data)
    return data


SESSION_CASES = {
    # name: (change to the JSON, phrase of the refusal)
    "no model section": (lambda d: d.pop("model"), "no model section"),
    "no document section": (lambda d: d.pop("document"), "no document section"),
    "model is text": (lambda d: d.__setitem__("model", "builtin"), "no model section"),
    "empty model source": (lambda d: d["model"].__setitem__("source", " "), "damaged contents"),
    "version is text": (lambda d: d.__setitem__("version", "one"), "damaged contents"),
    "newer version": (lambda d: d.__setitem__("version", 99), "newer version"),
    "no format": (lambda d: d.pop("format"), "not an Erasure Studio session"),
    "stack entry without id": (lambda d: d["document"]["stack"][0].pop("edit_id"), "damaged contents"),
    "stack entry with an unknown field": (lambda d: d["document"]["stack"][0].__setitem__("colour", 1),
                                          "damaged contents"),
    "preview with an unknown field": (lambda d: d["document"]["preview"].__setitem__("zoom", 2),
                                      "damaged contents"),
    "concepts as numbers": (lambda d: d["document"].__setitem__("concepts", [1, 2]), "damaged contents"),
    "prompts as text": (lambda d: d["document"].__setitem__("prompts", "a red circle"), "damaged contents"),
    "params as a list": (lambda d: d["document"].__setitem__("params", [1]), "damaged contents"),
    "seed out of range": (lambda d: d["document"].__setitem__("seeds", [0, 2**32]), "damaged contents"),
    "preview steps as text": (lambda d: d["document"]["preview"].__setitem__("steps", "many"), "damaged contents"),
    "preview guidance NaN": (lambda d: d["document"]["preview"].__setitem__("guidance", float("nan")),
                             "damaged contents"),
    "edit id that climbs out of the folder": (lambda d: d["document"]["stack"][0].__setitem__(
        "edit_id", "../../elsewhere"), "damaged contents"),
    "unknown concept kind": (lambda d: d["document"]["concepts"][0].__setitem__("kind", "weird"),
                             "damaged contents"),
    "parameter out of its range": (lambda d: d["document"].__setitem__("params", {"uce": {"lamb": -1}}),
                                   "damaged contents"),
}


@pytest.mark.parametrize("case", list(SESSION_CASES))
def test_damaged_session_json_is_refused_in_one_sentence(case: str, tmp_path: Path, builtin_model) -> None:
    from app.session import read_session

    path, data = _session(tmp_path, builtin_model)
    change, phrase = SESSION_CASES[case]
    path.write_text(json.dumps(_variant(data, change)))
    with pytest.raises(InputError) as info:
        read_session(path)
    assert phrase in info.value.user_message and _one_sentence(info.value.user_message), info.value.user_message


def test_session_fields_that_may_be_missing_or_extra(tmp_path: Path, builtin_model) -> None:
    """Missing document fields take their defaults and unknown top-level or concept fields are ignored
    (a session from a later release of the same format still opens); a missing stack means no edits."""
    from app.session import read_session
    from app.state import Document

    path, data = _session(tmp_path, builtin_model)
    lenient = _variant(data, lambda d: (d.__setitem__("written_by", "a later release"),
                                        d["document"].pop("preview"), d["document"].pop("seeds"),
                                        d["document"]["concepts"][0].__setitem__("note", "ignored"),
                                        d["document"].__setitem__("selected", 42)))
    path.write_text(json.dumps(lenient))
    session = read_session(path)
    assert session.doc.preview == Document().preview and session.doc.seeds == Document().seeds
    assert session.doc.selected == 1  # clamped to the last stack entry
    assert [c.text for c in session.doc.concepts] == ["red"] and len(session.edit_files) == 2


def test_session_parameters_are_read_as_the_current_specs(tmp_path: Path, builtin_model) -> None:
    """A checkbox saved by an earlier release reads as the choice it became, numbers saved as text read as
    numbers, and parameters or methods this release does not know are kept untouched."""
    from app.session import read_session

    path, data = _session(tmp_path, builtin_model)
    saved = {"uce": {"style_phrasings": False, "lamb": "0.5", "retired_option": 3}, "later-method": {"k": 1}}
    path.write_text(json.dumps(_variant(data, lambda d: d["document"].__setitem__("params", saved))))
    params = read_session(path).doc.params
    assert params["uce"] == {"style_phrasings": "off", "lamb": 0.5, "retired_option": 3}
    assert params["later-method"] == {"k": 1}


def test_session_pointing_at_deleted_edit_files(tmp_path: Path, builtin_model) -> None:
    from app.session import edits_dir, read_session

    path, _ = _session(tmp_path, builtin_model)
    (edits_dir(path) / "bbbb2222.safetensors").unlink()
    with pytest.raises(InputError, match="missing 1 edit file"):
        read_session(path)


def test_studio_refuses_broken_sessions_and_keeps_the_document(qtbot, studio_home, builtin_model,  # noqa: F811
                                                               edit_files, tmp_path: Path) -> None:
    from app.session import edits_dir

    window = open_window(qtbot)
    s, c = window.state, window.controller
    try:
        c.add_concept("blue", "color")
        idle(qtbot, window)
        doc = s.doc.copy()
        loaded = c.worker.context.model
        good, _ = _session(tmp_path / "good", builtin_model)
        broken: dict[str, tuple[Path, str]] = {}

        def broken_session(name: str, change, phrase: str) -> None:
            folder = tmp_path / name.replace(" ", "-")
            path, original = _session(folder, builtin_model)
            change(path, original)
            broken[name] = (path, phrase)

        broken_session("strength 7", lambda p, d: p.write_text(json.dumps(_variant(
            d, lambda x: x["document"]["stack"][0].__setitem__("strength", 7.0)))), "Strength must be")
        broken_session("NaN in the second edit", lambda p, d: (edits_dir(p) / "bbbb2222.safetensors").write_bytes(
            (edit_files["bad"]["NaN delta"][0]).read_bytes()), "NaN or infinity")
        broken_session("edit for another model", lambda p, d: (edits_dir(p) / "aaaa1111.safetensors").write_bytes(
            (edit_files["bad"]["made on another base"][0]).read_bytes()), "different base model")
        broken_session("deleted edit file", lambda p, d: (edits_dir(p) / "aaaa1111.safetensors").unlink(),
                       "missing 1 edit file")
        broken_session("model that no longer exists", lambda p, d: p.write_text(json.dumps(_variant(
            d, lambda x: x["model"].__setitem__("source", str(tmp_path / "gone" / "model.safetensors"))))),
            "could not be loaded")
        broken_session("not JSON", lambda p, d: p.write_text('{"format": "erasure-studio-session", '),
                       "not a readable session")
        broken_session("missing document", lambda p, d: p.write_text(json.dumps(_variant(
            d, lambda x: x.pop("document")))), "no document section")

        for name, (path, phrase) in broken.items():
            s.set_error(None)
            c.open_session(path)
            idle(qtbot, window)
            assert s.error is not None and phrase in s.error.message, (name, s.error)
            assert _one_sentence(s.error.message), s.error.message
            assert window.banner.isVisible(), name
            assert s.doc == doc, name  # nothing applied, not even the concepts or prompts
            assert s.model is not None and s.model.source == "builtin", name
            assert c.worker.context.model is loaded, name

        # the control: the same session, unbroken, opens with both edits
        s.set_error(None)
        c.open_session(good)
        qtbot.waitUntil(lambda: len(s.doc.stack) == 2, timeout=120_000)
        idle(qtbot, window)
        assert [i.strength for i in s.doc.stack] == [0.5, 1.0] and [x.text for x in s.doc.concepts] == ["red"]
        assert s.error is None or s.error.level != "error"
    finally:
        window.close()
