"""`main.py export`: write a model with its edits as a diffusers folder, single file, LoRA or edit file."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import add_edit_arguments, add_model_argument, load_model_from_args, print_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", conflict_handler="resolve",
        help="export the model with its edits (diffusers folder, single file, LoRA or edit file)",
        description="Apply --edit files to --model and write the result. Every export is reloaded and checked "
                    "before it is renamed into place; a failure or Ctrl-C leaves nothing at --out.")
    add_model_argument(p)
    add_edit_arguments(p)
    p.add_argument("--format", required=True, choices=["diffusers", "single-file", "lora", "edit"],
                   help="diffusers: a model folder with a model card; single-file: one .safetensors in the original "
                        "SD layout (A1111, ComfyUI); lora: a kohya LoRA of the edit; edit: an Erasure Studio edit "
                        "file holding the combined edit")
    p.add_argument("--out", type=Path, required=True, help="target folder (diffusers) or .safetensors file")
    # Replaces add_model_argument's --dtype: the model is always loaded in fp32 so that the edits are
    # applied at full precision; this is the precision of what is written.
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"],
                   help="precision of the written weights (default fp32; edit files are always fp32)")
    p.add_argument("--rank", type=int, default=None,
                   help="LoRA: a fixed rank per layer (default: chosen per layer by --energy)")
    p.add_argument("--energy", type=float, default=0.999,
                   help="LoRA: share of the edit's energy (squared singular values) to keep (default 0.999)")
    p.add_argument("--sld", dest="sld_policy", default="skip", choices=["skip", "refuse"],
                   help="what to do with inference-time (SLD) edits, which cannot be written into weights: "
                        "leave them out with a warning (default) or refuse")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.export import ExportRequest, export
    from engine.export.writer import human_size

    request = ExportRequest(format=args.format, out=args.out, dtype=args.dtype, rank=args.rank,
                            energy=args.energy, sld_policy=args.sld_policy)
    request.validate()  # before the model is loaded: a typo should not cost a load
    model = load_model_from_args(argparse.Namespace(**{**vars(args), "dtype": "fp32"}))
    result = export(model, request, progress=print_progress)
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"wrote {result.path} ({human_size(result.bytes)}) in {result.details.get('seconds', 0):.1f} s")
    print(f"check: {result.check}")
    if result.format == "lora":
        print(f"LoRA: {result.details['layers']} layers, reconstruction error {result.details['error_overall']:.2e} "
              f"overall, {result.details['error_worst']:.2e} worst ({result.details['worst_layer']})")
    return 0
