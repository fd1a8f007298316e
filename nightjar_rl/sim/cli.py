"""`nightjar-rl profile --roofline`: an analytic hardware profile for the simulator (no model run).
`nightjar-rl trace record` lives with the scenarios it records, in `nightjar_rl.env.trace_cli`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nightjar_rl.hardware import ProfileError
from nightjar_rl.sim.roofline import (
    GPU_PRESETS,
    GPUSpec,
    ModelShape,
    from_mapping,
    model_shape,
    roofline_profile,
)


def _load_spec(ref: str, presets: dict, cls, what: str):
    if ref in presets:
        return presets[ref]
    path = Path(ref)
    if not path.is_file():
        raise ProfileError(f"{what} {ref!r}: not a preset ({', '.join(presets)}) nor a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{what} {path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{what} {path}: expected a JSON object")
    return from_mapping(cls, data, f"{what} {path}")


def _shape(ref: str) -> ModelShape:
    if Path(ref).is_file():
        return _load_spec(ref, {}, ModelShape, "model shape")
    return model_shape(ref)


def cmd_profile_roofline(a: argparse.Namespace) -> dict:
    """The roofline profile the `profile --roofline` flags describe."""
    gpu = _load_spec(a.gpu, GPU_PRESETS, GPUSpec, "GPU spec")
    target = _shape(a.model.removeprefix("random:"))
    draft = _shape(a.draft.removeprefix("random:")) if a.draft else None
    return roofline_profile(gpu, target, draft, overhead_ms=a.overhead_ms).to_dict()


def add_roofline_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("roofline (analytic profile, no model run)")
    g.add_argument("--roofline", action="store_true",
                   help="write an analytic profile: pass time = max(bytes / bandwidth, FLOPs / peak) + overhead")
    g.add_argument("--gpu", default="h100", help=f"GPU preset ({', '.join(GPU_PRESETS)}) or a GPUSpec JSON file")
    g.add_argument("--overhead-ms", type=float, default=0.0, help="per-step scheduling overhead to add (ms)")
