"""One resolver for every way a policy is named: `make_policy(spec, max_k)`.

- a `Policy`: returned as it is (its max_k checked);
- a dict: a spec (`{"type": "fixed", "k": 3}`, see `nightjar_rl.policy.registry`) or an artifact
  dict (with "format", see `nightjar_rl.policy.artifact`);
- a string: a JSON object (`{"type": "disable_by_batch_size", "k": 4, "threshold": 8}`); a path to
  a file, either a policy artifact (any type, e.g. rules, bandits, `mlp`) or a schedule exported for
  vLLM / TensorRT-LLM / SGLang (`nightjar-rl export`) read back as a `table` policy; otherwise a
  spec string (`fixed-3`, `table-mlc_llm`, `nightjar`) or a user's class ("package.module:Class").

`max_k` is the policy's largest k. For the runtime it is the engine's instead (`resolve_policy`,
what `--policy` goes through): a saved policy may then have a smaller max_k (the driver observes
with the policy's own), never a larger one (the engine could not run the k it asks for).
`drafting`: how the engine's drafter is priced, filled into specs whose policy prices drafting and
that do not say (`registry.with_drafting`); artifacts keep what they recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from nightjar_rl.io import read_json
from nightjar_rl.policy.artifact import ARTIFACT_FORMAT, load_policy, policy_from_dict
from nightjar_rl.policy.base import Policy
from nightjar_rl.policy.export import table_from_export
from nightjar_rl.policy.registry import policy_from_spec, spec_as_dict, with_drafting


def make_policy(spec: Policy | Mapping | str, max_k: int, *, engine_max_k: bool = False,
                drafting: str | None = None) -> Policy:
    """The policy `spec` names (see module docstring), for `max_k`; with `engine_max_k`, `max_k`
    is the engine's largest k and a saved policy may have a smaller one."""
    if isinstance(spec, Policy):
        return _check_max_k(spec, max_k, engine_max_k, f"policy {spec.name}")
    if isinstance(spec, str):
        return _from_text(spec.strip(), max_k, engine_max_k, drafting)
    if isinstance(spec, Mapping) and "format" in spec:
        return _check_max_k(policy_from_dict(spec), max_k, engine_max_k, "policy artifact")
    return policy_from_spec(with_drafting(spec, drafting) if isinstance(spec, Mapping) else spec, max_k)


def resolve_policy(text: str, max_k: int, drafting: str | None = None) -> Policy:
    """`--policy TEXT` for an engine whose largest k is `max_k` and whose drafter is priced as
    `drafting` (see module docstring)."""
    return make_policy(text, max_k, engine_max_k=True, drafting=drafting)


def is_artifact_path(spec) -> bool:
    """Whether `spec` names a policy file (a `.json` path) rather than a spec string."""
    return isinstance(spec, str) and spec.strip().lower().endswith(".json")


def load_policy_file(path: str | Path, max_k: int) -> Policy:
    """A policy artifact (any type, through `load_policy`), or an exported engine schedule read
    back as a table policy for `max_k`."""
    data = read_json(path, "policy file")
    if isinstance(data, dict) and data.get("format") == ARTIFACT_FORMAT:
        return load_policy(path)
    return table_from_export(data, max_k, source=str(path))


def _from_text(text: str, max_k: int, engine_max_k: bool, drafting: str | None) -> Policy:
    if not text:
        raise ValueError("the policy spec is empty")
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"policy {text!r}: not valid JSON ({exc.msg})") from None
        return make_policy(spec, max_k, engine_max_k=engine_max_k, drafting=drafting)
    if Path(text).is_file():
        return _check_max_k(load_policy_file(text, max_k), max_k, engine_max_k, f"policy {text}")
    try:
        spec = spec_as_dict(text)
    except ValueError:
        if is_artifact_path(text) or "/" in text:
            raise ValueError(f"policy file {text!r} does not exist") from None
        raise
    return policy_from_spec(with_drafting(spec, drafting), max_k)


def _check_max_k(policy: Policy, max_k: int, engine_max_k: bool, what: str) -> Policy:
    if policy.max_k == max_k or (engine_max_k and policy.max_k < max_k):
        return policy
    if engine_max_k:
        raise ValueError(f"{what} has max_k={policy.max_k}, above the engine's largest k (--max-speculation {max_k})")
    raise ValueError(f"{what} has max_k={policy.max_k}, expected {max_k}")
