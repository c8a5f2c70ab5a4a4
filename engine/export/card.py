"""The model card (README.md) written into an exported diffusers folder.

Whoever receives the folder should see, without Erasure Studio, what was erased, how,
how strongly, from which base model, and how well it worked (efficacy, generality,
specificity when the edit was evaluated).
"""

from __future__ import annotations

import json
from typing import Any

from engine.export.common import StackContent, base_model_name, entry_summary

_METRIC_HINTS = {
    "efficacy": "share of images that still show the erased concept (lower is better)",
    "generality": "same for synonyms and paraphrases (lower is better)",
    "specificity": "accuracy on other concepts relative to the unedited model (higher is better)",
}


def model_card(model: Any, content: StackContent, manifest: dict[str, Any], dtype: str,
               warnings: list[str]) -> str:
    """Markdown with a YAML header that the Hugging Face Hub and other tools understand."""
    targets = [str(t) for t in (manifest.get("concepts") or {}).get("targets", [])]
    title = f"{base_model_name(model)} with {', '.join(targets) or 'no concept'} erased"
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags:",
        "- stable-diffusion",
        "- concept-erasure",
        "- erasure-studio",
        "---",
        "",
        f"# {title}",
        "",
        ("Exported by Erasure Studio as a diffusers folder "
        f"({dtype} safetensors). The edits below are baked into the weights."),
        "",
        "## Base model",
        "",
        f"- Model: {base_model_name(model)}",
        f"- Architecture: {model.architecture}",
        f"- Fingerprint of the original weights the edits change: `{manifest.get('fingerprint', '')[:16]}`",
        "",
        "## What was erased",
        "",
    ]
    if not content.weight_entries:
        lines += ["Nothing: this is the unedited base model.", ""]
    for i, entry in enumerate(content.weight_entries, 1):
        summary = entry_summary(entry)
        lines += [f"### {i}. {summary['method']} at strength {summary['strength']:g}", ""]
        for key, value in (summary["concepts"] or {}).items():
            if value:
                shown = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
                lines.append(f"- {key.capitalize()}: {shown}")
        if summary["params"]:
            lines.append("- Parameters: " + ", ".join(f"`{k}={_short(v)}`" for k, v in summary["params"].items()))
        lines.append(f"- Weights changed: {len(entry.edit.deltas)}")
        lines.append("")
        lines += _metrics_section(summary["metrics"])
    if warnings:
        lines += ["## Left out", ""] + [f"- {w}" for w in warnings] + [""]
    lines += [
        "## Loading",
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline",
        "pipe = StableDiffusionPipeline.from_pretrained(\"path/to/this/folder\", local_files_only=True)",
        "# half precision (on a GPU): add dtype=torch.float16",
        "```",
        "",
        "## Manifest",
        "",
        "```json",
        json.dumps(manifest, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def _metrics_section(metrics: Any) -> list[str]:
    if not metrics:
        return ["No evaluation figures were recorded for this edit.", ""]
    if not isinstance(metrics, dict):
        return [f"Evaluation: {_short(metrics)}", ""]
    lines = ["| Evaluation | Value | Meaning |", "|---|---|---|"]
    for key, value in metrics.items():
        lines.append(f"| {key} | {_short(value)} | {_METRIC_HINTS.get(str(key).lower(), '')} |")
    return lines + [""]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 200 else text[:197] + "..."
    return str(value)
