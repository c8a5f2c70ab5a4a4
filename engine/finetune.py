"""Training-loop pieces shared by the fine-tuning methods (ESD, Concept Ablation).

The rule these helpers enforce: a method never writes the model's weights. It trains
float32 *copies* of the few parameters it changes and runs the UNet with
``torch.func.functional_call``, which lets those copies stand in for the module's own
parameters for one call only. The model itself stays the frozen teacher, so a
cancelled or failed run leaves it bit-identical, and the result is just
``W_trained - W_start`` handed back as an ``EditDelta``'s deltas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.jobs import InputError, ProgressReporter, is_out_of_memory, out_of_memory_error

# Module classes whose parameters the fine-tuning methods may train (ESD's "Linear/Conv" rule).
TRAINABLE_MODULE_CLASSES = ("Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv")


def select_unet_parameters(unet: torch.nn.Module, keep: Callable[[str], bool]) -> list[str]:
    """Names of the parameters of every Linear/Conv module whose module name ``keep`` accepts."""
    names: list[str] = []
    for module_name, module in unet.named_modules():
        if type(module).__name__ in TRAINABLE_MODULE_CLASSES and keep(module_name):
            names.extend(f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False))
    return names


@dataclass
class Trainable:
    """Float32 trainable copies of some UNet parameters plus the values they started from."""

    masters: dict[str, torch.Tensor]  # UNet parameter name -> float32 leaf tensor with requires_grad
    starts: dict[str, torch.Tensor] = field(default_factory=dict)  # the same names -> float32 start values

    @property
    def count(self) -> int:
        return sum(t.numel() for t in self.masters.values())

    def overrides(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The tensors to hand to functional_call, cast to the model's dtype (differentiably)."""
        return {n: (t if t.dtype == dtype else t.to(dtype)) for n, t in self.masters.items()}

    def deltas(self) -> dict[str, torch.Tensor]:
        """``{"unet.<name>": W_trained - W_start}`` in float32 on the CPU, the EditDelta payload."""
        return {f"unet.{n}": (t.detach() - self.starts[n]).to("cpu", torch.float32)
                for n, t in self.masters.items()}


def make_trainable(unet: torch.nn.Module, names: Iterable[str]) -> Trainable:
    """Copy the named parameters as they are now (the live model is the teacher the student starts from)."""
    names = list(names)
    if not names:
        raise InputError("This method found no weights to train in this model.")
    masters, starts = {}, {}
    for name in names:
        current = unet.get_parameter(name).detach().to(torch.float32)
        starts[name] = current.clone()
        masters[name] = current.clone().requires_grad_(True)
    return Trainable(masters, starts)


def unet_eps(unet: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor,
             trainable: Trainable | None = None) -> torch.Tensor:
    """The UNet's noise prediction, with ``trainable``'s copies in place of its own weights when given."""
    if trainable is None:
        return unet(latents, timesteps, encoder_hidden_states=embeddings, return_dict=False)[0]
    return torch.func.functional_call(unet, trainable.overrides(unet.dtype), (latents, timesteps),
                                      {"encoder_hidden_states": embeddings, "return_dict": False})[0]


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: list[str]) -> torch.Tensor:
    """Text embeddings (batch, tokens, dim) of the prompts, from the live text encoder."""
    embeddings, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
    return embeddings


def ddim_scheduler(pipe: Any, steps: int) -> Any:
    """A fresh DDIM scheduler with ``steps`` timesteps (the pipeline's own scheduler is left alone)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=pipe.device)
    return scheduler


@dataclass
class DdimSnapshots:
    """What ``sample_ddim_states`` recorded for each requested (trajectory, step) pair, in request order."""

    latents: torch.Tensor  # x_t before DDIM step ``step`` was applied
    timesteps: torch.Tensor  # the DDPM timestep of that step
    eps_cond: torch.Tensor  # the frozen model's conditional prediction at (x_t, t)
    eps_uncond: torch.Tensor  # the frozen model's unconditional prediction at (x_t, t)
    final: torch.Tensor | None = None  # x_0 of every trajectory when run to the end, else None


@torch.no_grad()
def sample_ddim_states(pipe: Any, cond: torch.Tensor, uncond: torch.Tensor, requests: list[tuple[int, int]],
                       steps: int, guidance: float, generator: torch.Generator, reporter: ProgressReporter | None,
                       run_to_end: bool = False, batch_limit: int = 64) -> DdimSnapshots:
    """Run every trajectory with the frozen model in lockstep and keep the states ``requests`` asks for.

    ``cond[j]`` is trajectory j's prompt embedding, ``requests`` lists (trajectory, DDIM step index)
    pairs. One batched classifier-free-guided DDIM run replaces one sampling run per training
    iteration; it is valid because the trajectories come from the frozen model and so do not depend
    on the weights being trained. The CFG forward pass already computes the frozen conditional and
    unconditional predictions at each state, so they are kept for the loss at no extra cost.
    Trajectories drop out of the batch once their last requested step is reached.
    """
    n = cond.shape[0]
    scheduler = ddim_scheduler(pipe, steps)
    unet = pipe.unet
    device, dtype = pipe.device, unet.dtype
    shape = (n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = (torch.randn(shape, generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma).to(device)
    last_needed = [steps - 1 if run_to_end else -1] * n
    wanted: dict[tuple[int, int], list[int]] = {}
    for slot, (traj, step) in enumerate(requests):
        last_needed[traj] = max(last_needed[traj], step)
        wanted.setdefault((traj, step), []).append(slot)
    order = sorted(range(n), key=lambda j: -last_needed[j])  # active trajectories are a prefix of this order
    latents, cond, uncond = latents[order], cond[order], uncond[order]
    needed_sorted = [last_needed[j] for j in order]
    count = len(requests)
    out_latents = torch.empty((count, *shape[1:]), dtype=torch.float32, device=device)
    out_cond, out_uncond = torch.empty_like(out_latents), torch.empty_like(out_latents)
    out_t = torch.empty(count, dtype=torch.long, device=device)
    for step, t in enumerate(scheduler.timesteps):
        active = sum(1 for need in needed_sorted if need >= step)
        if active == 0:
            break
        x = latents[:active]
        eps_c, eps_u = [], []
        for lo in range(0, active, batch_limit):
            hi = min(active, lo + batch_limit)
            both = unet_eps(unet, torch.cat([x[lo:hi], x[lo:hi]]).to(dtype), t,
                            torch.cat([cond[lo:hi], uncond[lo:hi]]).to(dtype)).float()
            eps_c.append(both[: hi - lo])
            eps_u.append(both[hi - lo:])
        e_c, e_u = torch.cat(eps_c), torch.cat(eps_u)
        for pos in range(active):
            for slot in wanted.get((order[pos], step), ()):
                out_latents[slot], out_cond[slot], out_uncond[slot], out_t[slot] = x[pos], e_c[pos], e_u[pos], t
        eps = e_u + guidance * (e_c - e_u)
        latents[:active] = scheduler.step(eps, t, x).prev_sample
        if reporter is not None:
            reporter.step(f"sampling step {step + 1}/{steps} ({active} trajectories)")
    final = None
    if run_to_end:
        final = torch.empty_like(latents)
        final[order] = latents
    return DdimSnapshots(out_latents, out_t, out_cond, out_uncond, final)


def adam_loop(trainable: Trainable, loss_at: Callable[[int], torch.Tensor], iterations: int, lr: float,
              reporter: ProgressReporter, weight_decay: float = 0.0) -> list[float]:
    """Minimise ``loss_at(i)`` over the trainable copies with Adam(W), one progress report per iteration.

    Gradients come from ``torch.autograd.grad`` on the copies only, so nothing is accumulated in
    the model's own ``.grad`` fields. ``reporter.step`` raises ``Cancelled`` within one iteration.
    """
    params = list(trainable.masters.values())
    optimizer = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay
                 else torch.optim.Adam(params, lr=lr))
    losses: list[float] = []
    for i in range(iterations):
        loss = loss_at(i)
        if not torch.isfinite(loss):
            raise InputError("Training diverged (the loss became NaN or infinite); lower the learning rate.",
                             f"iteration {i}: loss {loss.item()}")
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        losses.append(float(loss.detach()))
        reporter.step(f"iteration {i + 1}/{iterations}, loss {losses[-1]:.4g}")
    for p in params:
        p.grad = None
    return losses


def run_guarded(job: Callable[[], Any], device: str) -> Any:
    """Run a training job; translate out-of-memory errors into the user's next step."""
    try:
        return job()
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise out_of_memory_error(exc, device) from exc
        raise
