"""The policy types and their specs: `policy_from_spec(spec, max_k)` builds a policy from a spec.

A spec is a dict with a "type" and that type's constructor fields, or a short string:

    {"type": "fixed", "k": 3}                       "fixed-3"      "off" (= fixed-0)
    {"type": "disable_by_batch_size", "k": 4, "threshold": 8}
    {"type": "table", "preset": "mlc_llm"}          "table-mlc_llm"
    {"type": "table", "table": {"1-8": 4, "9+": 0}}
    {"type": "hf_heuristic", "start_k": 5}          "hf_heuristic"  "hf_heuristic-5"
    {"type": "oracle", "profile": "envs/profiles/x.json"}   "oracle-envs/profiles/x.json"
    {"type": "sssd", "profile": "envs/profiles/x.json"}     "sssd-envs/profiles/x.json"   {"type": "sssd", "knee": 8}
    {"type": "nightjar", "epsilon": 0.2}            "nightjar"     "ucb1"    "thompson"
    {"type": "hysteresis", "policy": "nightjar", "dwell": 4}
    per-row (a SpecPlan per step, from the observation's per-row features; policy/per_row.py):
    {"type": "adaptive_budget", "profile": "envs/profiles/x.json"}   "adaptive-budget-envs/profiles/x.json"
    {"type": "per_request_k", "up": 0.7, "down": 0.4, "dwell": 8}    "per-request-k"
    {"type": "per_row_bandit", "bandit": {"epsilon": 0.2}}          "per-row-bandit"
    learned per-row (trained by stable-baselines3, saved as artifacts; policy/learned_per_row.py):
    {"type": "learned_budget", "profile": ..., "levels": [...], "weights": ..., ...}   (an `mlp` + its rule)
    {"type": "learned_row_scorer", ...}
    "mypkg.policies:MyPolicy"    {"type": "mypkg.policies:MyPolicy", "alpha": 0.5}
                                 (a user's class by entry point, Gymnasium's "module:Class" convention)

A user's class is imported from the Python path (never from a file path) and built as
`Class(max_k=max_k, **fields)`; it must subclass `nightjar_rl.policy.Policy` (one `predict(obs) ->
k or SpecPlan`). Its spec is a plain string, so it travels to Ray workers and into `--resume`
manifests like a built-in's (the workers need the module importable too: install it, or put its
folder on PYTHONPATH).

Hyphens and underscores in type names are interchangeable. Unknown types and fields raise
ValueError naming them. Saved policies (artifact files and dicts, exported engine schedules) are
read by `nightjar_rl.policy.resolve.make_policy`, which takes every form a policy can be named in.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from nightjar_rl.entry_points import import_entry_point, is_entry_point
from nightjar_rl.policy.bandits import NightjarBandit, ThompsonBandit, UCB1Bandit
from nightjar_rl.policy.base import Policy
from nightjar_rl.policy.baselines import DisableByBatchSize, FixedK
from nightjar_rl.policy.hf_heuristic import HFHeuristic
from nightjar_rl.policy.hysteresis import Hysteresis
from nightjar_rl.policy.learned_per_row import LearnedBudget, LearnedRowScorer
from nightjar_rl.policy.mlp import MLPPolicy
from nightjar_rl.policy.oracle import GoodputOracle
from nightjar_rl.policy.per_row import AdaptiveBudget, PerRequestK, PerRowBandit
from nightjar_rl.policy.sssd import SSSDBudgetPolicy
from nightjar_rl.policy.table import BatchSizeTable

POLICY_TYPES: dict[str, type[Policy]] = {
    cls.type_name: cls
    for cls in (
        FixedK,
        DisableByBatchSize,
        BatchSizeTable,
        HFHeuristic,
        GoodputOracle,
        NightjarBandit,
        UCB1Bandit,
        ThompsonBandit,
        Hysteresis,
        SSSDBudgetPolicy,
        MLPPolicy,
        AdaptiveBudget,
        PerRequestK,
        PerRowBandit,
        LearnedBudget,
        LearnedRowScorer,
    )
}
ALIASES = {"off": ("fixed", {"k": 0})}
# the field a "type-ARG" string fills, and how to parse ARG
PRIMARY_FIELD = {
    "fixed": ("k", int),
    "table": ("preset", str),
    "hf_heuristic": ("start_k", int),
    "oracle": ("profile", str),
    "sssd": ("profile", str),
    "adaptive_budget": ("profile", str),
}


def _norm(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def _constructor_params(cls: type[Policy]) -> list[inspect.Parameter]:
    """The parameters a spec fills: those of `cls.__init__`, then of each parent's `__init__` while the one
    before passes `**kwargs` on (a bandit's fields and the bucketed bandit's; a learned per-row policy's
    and the `mlp` network's). self, max_k and the **kwargs themselves excluded, first occurrence kept."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())
        for p in params:
            if p.name not in ("self", "max_k") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out.setdefault(p.name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(out.values())


def policy_fields(cls: type[Policy]) -> list[str]:
    """Constructor fields a spec may set for `cls` (max_k excluded: it comes from the caller)."""
    return [p.name for p in _constructor_params(cls)]


def required_fields(cls: type[Policy]) -> list[str]:
    return [p.name for p in _constructor_params(cls) if p.default is inspect.Parameter.empty]


def parse_spec_string(text: str) -> dict:
    """'fixed-3' -> {'type': 'fixed', 'k': 3}; 'nightjar' -> {'type': 'nightjar'}."""
    text = text.strip()
    if _norm(text) in ALIASES:
        name, fields = ALIASES[_norm(text)]
        return {"type": name, **fields}
    parts = text.split("-")
    for i in range(len(parts), 0, -1):
        head = _norm("_".join(parts[:i]))
        if head not in POLICY_TYPES:
            continue
        arg = "-".join(parts[i:])
        if not arg:
            return {"type": head}
        if head not in PRIMARY_FIELD:
            raise ValueError(
                f"policy {text!r}: type {head!r} takes no argument in string form; use a dict spec"
            )
        field, conv = PRIMARY_FIELD[head]
        try:
            return {"type": head, field: conv(arg)}
        except ValueError:
            raise ValueError(f"policy {text!r}: {field} must be {conv.__name__}, got {arg!r}") from None
    raise ValueError(f"unknown policy {text!r}; known types: {', '.join(sorted(POLICY_TYPES))}, off")


def load_entry_point(spec: str) -> type[Policy]:
    """Import the policy class named by "package.module:Class"."""
    module_name, _, attr = spec.strip().partition(":")
    cls = import_entry_point(spec, "policy")
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        what = "has no attribute" if cls is None else "is not a nightjar_rl.policy.Policy subclass:"
        raise ValueError(f"policy {spec!r}: module {module_name!r} {what} {attr!r}")
    return cls


def spec_as_dict(spec: str | Mapping) -> dict:
    """A spec string or dict as a dict with a "type" (artifact paths are not specs: check first)."""
    if is_entry_point(spec):
        return {"type": spec.strip()}
    return parse_spec_string(spec) if isinstance(spec, str) else dict(spec)


def with_drafting(spec: Mapping, drafting: str | None) -> dict:
    """`spec` (a dict with a registered "type") with `drafting` filled in, when its type prices the
    drafter's work (a `drafting` field: the oracle, the adaptive-budget allocator, the learned per-row
    rules) and the spec does not say; a hysteresis wrapper's inner `policy` spec likewise; otherwise as it
    is (entry-point classes are not filled). `drafting`: how the engine's drafter is priced
    (`hardware.DRAFTING`), or None (nothing to fill)."""
    out = dict(spec)
    cls = POLICY_TYPES.get(_norm(out.get("type", "")))
    if drafting is None or cls is None:
        return out
    if "drafting" not in out and "drafting" in policy_fields(cls):
        out["drafting"] = drafting
    if cls is Hysteresis and isinstance(out.get("policy"), Mapping):
        out["policy"] = with_drafting(out["policy"], drafting)
    return out


def build_policy(type_name: str, params: Mapping, max_k: int) -> Policy:
    """Construct policy `type_name` (a registered name or "module:Class") from its fields, validating
    the field names."""
    name = type_name.strip() if is_entry_point(type_name) else _norm(type_name)
    if is_entry_point(name):
        cls = load_entry_point(name)
    elif name not in POLICY_TYPES:
        raise ValueError(f"unknown policy type {type_name!r}; known types: {', '.join(sorted(POLICY_TYPES))}, "
                         f"or a class as 'package.module:Class'")
    else:
        cls = POLICY_TYPES[name]
    allowed = policy_fields(cls)
    for key in params:
        if key not in allowed:
            raise ValueError(
                f"policy type {name!r} has no field {key!r}; its fields are: {', '.join(allowed)}"
            )
    missing = [f for f in required_fields(cls) if f not in params]
    if missing:
        raise ValueError(f"policy type {name!r} needs field(s) {', '.join(missing)}")
    kwargs = dict(params)
    if cls is Hysteresis:
        return Hysteresis(policy_from_spec(kwargs.pop("policy"), max_k), **kwargs)
    return cls(max_k=max_k, **kwargs)


def policy_from_spec(spec: Mapping | str, max_k: int) -> Policy:
    """Build a policy from a spec dict or string (see module docstring)."""
    if isinstance(spec, str):
        spec = spec_as_dict(spec)
    if not isinstance(spec, Mapping):
        raise ValueError(f"a policy spec must be a dict or a string, got {type(spec).__name__}")
    if "type" not in spec:
        raise ValueError(f"policy spec {dict(spec)!r} has no 'type' field")
    fields = {k: v for k, v in spec.items() if k != "type"}
    if "max_k" in fields and fields.pop("max_k") != max_k:
        raise ValueError(f"policy spec field 'max_k'={spec['max_k']!r} disagrees with max_k={max_k}")
    return build_policy(spec["type"], fields, max_k)
