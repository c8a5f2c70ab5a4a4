"""Property-based tests (hypothesis) of the two pieces with the most index arithmetic.

1. The edit algebra: any sequence of apply / toggle / set strength / remove / reorder / undo (restore an
   earlier snapshot) leaves every weight at exactly W0 + sum(s_i * delta_i) over the active entries, in
   stack order, computed here independently in float32; and bit-exactly W0 when nothing is active.
   Strengths are multiples of 1/16 and deltas have 11 significant bits, so every product s * delta is
   exact in float32: the expected value then does not depend on whether an implementation fuses the
   multiply-add (torch's add_(alpha=) does), and "exactly" can really mean bit for bit.
2. The single-file key map: random small UNet and VAE layouts (2-4 levels, 1-2 layers per block, any
   set of levels with cross-attention, any widths) written with engine.ldm_keys.pipeline_to_ldm_state_dict
   and read back with diffusers' own LDM conversion give every original tensor back, bit for bit
   (the check of tests/test_loading.py, over layouts nobody wrote down).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_loading import _assert_inverse

from engine.edits import EditDelta, EditStack
from engine.ldm_keys import pipeline_to_ldm_state_dict

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_LAYOUTS = settings(FUZZ, max_examples=15)  # each example builds a UNet and a VAE

# ---------------------------------------------------------------- the edit algebra
SHAPES = {"unet.a.weight": (4, 6), "unet.a.bias": (4,), "unet.b.weight": (3, 3), "text_encoder.weight": (2, 3)}


class _Unet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(6, 4)
        self.b = torch.nn.Linear(3, 3, bias=False).half()  # a half-precision weight: float32 sum, then rounded


def make_pipe() -> SimpleNamespace:
    """Real torch modules where EditStack expects a pipeline's unet and text_encoder."""
    torch.manual_seed(0)
    return SimpleNamespace(unet=_Unet(), text_encoder=torch.nn.Linear(3, 2, bias=False))


strengths = st.integers(0, 32).map(lambda n: n / 16)  # 0, 1/16, ..., 2: the whole slider range in 1/16 steps


@st.composite
def delta_sets(draw) -> dict[str, torch.Tensor]:
    names = draw(st.lists(st.sampled_from(sorted(SHAPES)), min_size=1, max_size=len(SHAPES), unique=True))
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    # integers times 2^-14: at most 11 significant bits, so strength * delta is exact in float32
    return {n: torch.randint(-1024, 1025, SHAPES[n], generator=g).to(torch.float32) * 2.0**-14 for n in names}


operations = st.one_of(
    st.tuples(st.just("apply"), st.integers(0, 3), strengths, st.booleans()),
    st.tuples(st.just("toggle"), st.integers(0, 10)),
    st.tuples(st.just("strength"), st.integers(0, 10), strengths),
    st.tuples(st.just("remove"), st.integers(0, 10)),
    st.tuples(st.just("move"), st.integers(0, 10), st.integers(0, 10)),
    st.tuples(st.just("undo"), st.integers(0, 50)),
)


def expected_weights(base: dict[str, torch.Tensor], edits: list[EditDelta], entries: list[list]) -> dict:
    """W0 + sum(s * delta) in stack order, in float32, then in each weight's own dtype; W0 itself if none."""
    out = {}
    for name, w0 in base.items():
        active = [(s, edits[i].deltas[name]) for i, s, on in entries if on and s != 0 and name in edits[i].deltas]
        if not active:
            out[name] = w0
            continue
        total = w0.to(torch.float32)
        for s, delta in active:
            total = total + torch.tensor(s, dtype=torch.float32) * delta  # exact product, one rounding per add
        out[name] = total.to(w0.dtype)
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view({torch.float32: torch.int32, torch.float16: torch.int16}[t.dtype])


@FUZZ
@given(deltas=st.lists(delta_sets(), min_size=4, max_size=4), ops=st.lists(operations, min_size=1, max_size=25))
def test_any_sequence_of_stack_operations_gives_the_exact_weights(deltas, ops) -> None:
    from engine.edits import get_parameter

    pipe = make_pipe()
    stack = EditStack(pipe)
    base = {n: get_parameter(pipe, n).detach().clone() for n in SHAPES}
    edits = [EditDelta.create(pipe, d, "fuzz", {"targets": [f"e{i}"]}, {}) for i, d in enumerate(deltas)]
    model: list[list] = []  # [edit index, strength, enabled], the stack as this test understands it
    history: list[tuple[list, list]] = [([], [])]  # (model, stack snapshot) after every operation
    for op in ops:
        kind = op[0]
        if kind == "apply":
            _, i, s, on = op
            stack.push(edits[i], s, on)
            model.append([i, s, on])
        elif kind == "undo":
            past_model, snapshot = history[op[1] % len(history)]
            stack.restore(snapshot)
            model = [list(e) for e in past_model]
        elif model:
            pos = op[1] % len(model)
            if kind == "toggle":
                stack.set_enabled(pos, not model[pos][2])
                model[pos][2] = not model[pos][2]
            elif kind == "strength":
                stack.set_strength(pos, op[2])
                model[pos][1] = op[2]
            elif kind == "remove":
                stack.remove(pos)
                del model[pos]
            else:
                new = op[2] % len(model)
                stack.move(pos, new)
                model.insert(new, model.pop(pos))
        history.append(([list(e) for e in model], stack.snapshot()))

        order = [(next(i for i, x in enumerate(edits) if x is e.edit), e.strength, e.enabled) for e in stack.entries]
        assert order == [tuple(m) for m in model]
        want = expected_weights(base, edits, model)
        for name in SHAPES:
            got = get_parameter(pipe, name)
            assert got.dtype == base[name].dtype
            assert torch.equal(_bits(got), _bits(want[name])), (name, op, model)
    stack.clear()
    for name in SHAPES:
        assert torch.equal(_bits(get_parameter(pipe, name)), _bits(base[name])), name  # W0, bit for bit


# ---------------------------------------------------------------- the single-file key map
@functools.cache
def _text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    return CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_hidden_layers=2, max_position_embeddings=77, hidden_act="quick_gelu"))


@st.composite
def layouts(draw) -> dict:
    levels = draw(st.integers(2, 4))
    return {
        "levels": levels,
        "layers": draw(st.integers(1, 2)),
        "cross": draw(st.lists(st.booleans(), min_size=levels, max_size=levels)),
        "channels": draw(st.lists(st.sampled_from([8, 12, 16]), min_size=levels, max_size=levels)),
        "linear_projection": draw(st.booleans()),
        "vae_channels": draw(st.lists(st.sampled_from([8, 12, 16]), min_size=2, max_size=4)),
        "vae_layers": draw(st.integers(1, 2)),
        "seed": draw(st.integers(0, 2**31)),
    }


def build_pipe(layout: dict) -> SimpleNamespace:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in layout["cross"])
    up = tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(layout["cross"]))
    unet = UNet2DConditionModel(
        block_out_channels=tuple(layout["channels"]), layers_per_block=layout["layers"], sample_size=8,
        down_block_types=down, up_block_types=up, cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
        use_linear_projection=layout["linear_projection"])
    n = len(layout["vae_channels"])
    vae = AutoencoderKL(block_out_channels=tuple(layout["vae_channels"]), layers_per_block=layout["vae_layers"],
                        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        latent_channels=4, norm_num_groups=4)
    g = torch.Generator().manual_seed(layout["seed"])
    with torch.no_grad():  # every tensor distinct, so a swapped key cannot go unnoticed
        for module in (unet, vae):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    return SimpleNamespace(unet=unet, vae=vae, text_encoder=_text_encoder())


@FUZZ_LAYOUTS
@given(layout=layouts())
def test_any_block_layout_round_trips_through_the_single_file_keys(layout: dict) -> None:
    pipe = build_pipe(layout)
    _assert_inverse(pipe, pipeline_to_ldm_state_dict(pipe))
