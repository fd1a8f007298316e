"""Exported policy artifacts: one small JSON file per policy, every policy type.

```
{
  "format": "nightjar-rl/policy",
  "version": 1,
  "type": "nightjar",              # registry type (nightjar_rl.policy.registry.POLICY_TYPES)
  "max_k": 8,
  "name": "nightjar(...)",         # informative only
  "params": {...},                 # constructor fields, as in a make_policy spec
  "state": {...}                   # learned / tracked state (bandit arm statistics, HF's current k)
}
```

See policies/README.md for the per-type fields. Files are written atomically (temp file +
os.replace). Loading validates everything and raises ValueError naming the problem.

Neural policies (type `mlp`) keep their weights in a safetensors file beside the manifest: a policy
with a `save_weights(manifest_path)` method writes it first, and types whose constructor takes a
`base_dir` get the manifest's folder, so the file name in `params` resolves against it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nightjar_rl.io import atomic_write_text, read_json
from nightjar_rl.policy.base import Policy
from nightjar_rl.policy.registry import POLICY_TYPES, build_policy, is_entry_point, policy_fields

ARTIFACT_FORMAT = "nightjar-rl/policy"
ARTIFACT_VERSION = 1


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


_NUMBER_LIST = re.compile(r"\[[-0-9.eE+,\s]*\]")


def _dumps(data: dict) -> str:
    """Indented JSON with lists of numbers kept on one line (arm statistics stay readable)."""
    text = json.dumps(data, indent=1, default=_jsonable)
    return _NUMBER_LIST.sub(
        lambda m: " ".join(m.group(0).split()).replace("[ ", "[").replace(" ]", "]"), text
    )


def policy_to_dict(policy: Policy) -> dict:
    if not policy.type_name:
        raise ValueError(f"{type(policy).__name__} has no type_name and cannot be exported")
    return {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "type": policy.type_name,
        "max_k": policy.max_k,
        "name": policy.name,
        "params": policy.params(),
        "state": policy.state(),
    }


def policy_from_dict(data: Mapping, source: str = "policy artifact", base_dir: str | Path | None = None) -> Policy:
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{source}: format is {data.get('format')!r}, expected {ARTIFACT_FORMAT!r}")
    if data.get("version") != ARTIFACT_VERSION:
        raise ValueError(
            f"{source}: artifact version {data.get('version')!r} is not supported (reads {ARTIFACT_VERSION})"
        )
    for key in ("type", "max_k", "params"):
        if key not in data:
            raise ValueError(f"{source}: missing field {key!r}")
    params, state = data["params"], data.get("state", {})
    if not isinstance(params, Mapping) or not isinstance(state, Mapping):
        raise ValueError(f"{source}: 'params' and 'state' must be objects")
    type_name = str(data["type"])
    if is_entry_point(type_name) and type_name.partition(":")[0] not in sys.modules:
        raise ValueError(f"{source}: type {type_name!r} is a user class whose module is not imported; artifacts "
                         f"never import code: import it first, or name it in --policy / a spec")
    cls = POLICY_TYPES.get(type_name)
    if base_dir is not None and cls is not None and "base_dir" in policy_fields(cls):
        params = {**params, "base_dir": str(base_dir)}
    try:
        policy = build_policy(data["type"], params, data["max_k"])
        policy.load_state(dict(state))
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return policy


def save_policy(policy: Policy, path: str | Path) -> Path:
    """Write `policy` as a JSON artifact (atomically). Returns the path."""
    data = policy_to_dict(policy)
    if hasattr(policy, "save_weights"):  # neural policies: weights file beside the manifest, written first
        data["params"].update(policy.save_weights(path))
    return atomic_write_text(path, _dumps(data) + "\n")


def load_policy(path: str | Path) -> Policy:
    """Load a policy artifact (ValueError with one line naming the problem)."""
    return policy_from_dict(read_json(path, "policy artifact"), source=str(path), base_dir=Path(path).parent)
