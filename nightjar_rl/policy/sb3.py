"""Export a trained stable-baselines3 model (PPO / A2C / DQN, MlpPolicy) as an `mlp` policy artifact
(or, with `per_row`, a learned per-row artifact: the same network plus the rule that turns its action
into a plan, `nightjar_rl.policy.learned_per_row`).

Only the deterministic action path is exported: for PPO/A2C the actor (mlp_extractor.policy_net then
action_net: logits), for DQN the Q-network (q_net.q_net: Q-values). Observation normalisation from a
`VecNormalize` wrapper is frozen into the manifest. The artifact loads without SB3 (numpy only) and
`predict(obs, deterministic=True)` equals SB3's `model.predict(vec_normalize.normalize_obs(obs),
deterministic=True)`; `check_export` verifies that on recorded observations.

This module does not import stable-baselines3 itself: it reads the torch modules of a model object.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nightjar_rl.policy.artifact import save_policy
from nightjar_rl.policy.learned_per_row import LEARNED_PER_ROW, rule_spec
from nightjar_rl.policy.mlp import MLPPolicy

# torch activation module -> (exported layer name, the attributes it must have for the export to be exact)
_ACTIVATIONS = {
    "Tanh": ("tanh", {}),
    "ReLU": ("relu", {}),
    "ELU": ("elu", {"alpha": 1.0}),
    "LeakyReLU": ("leaky_relu", {"negative_slope": 0.01}),
    "SiLU": ("silu", {}),
}


def _modules(model) -> tuple[list, str]:
    """The torch modules of the deterministic action path, and what the last one outputs."""
    algo = type(model).__name__
    space = model.action_space
    if type(space).__name__ != "Discrete":
        raise ValueError(f"only Discrete action spaces export (k, or a learned per-row rule's level), got {space}")
    if algo == "DQN":
        modules, output = list(model.q_net.q_net), "q_values"
        extractor = model.q_net.features_extractor
    elif algo in ("PPO", "A2C"):
        policy = model.policy
        modules, output = [*policy.mlp_extractor.policy_net, policy.action_net], "logits"
        extractor = policy.pi_features_extractor
    else:
        raise ValueError(f"cannot export a {algo} model: PPO, A2C and DQN are supported")
    if type(extractor).__name__ != "FlattenExtractor":
        raise ValueError(f"only MlpPolicy models export (features extractor {type(extractor).__name__})")
    return modules, output


def sb3_network(model) -> tuple[list[str], dict[str, np.ndarray], str]:
    """(layers, tensors, output) of an SB3 model, in the `mlp` artifact's naming."""
    import torch

    modules, output = _modules(model)
    layers: list[str] = []
    tensors: dict[str, np.ndarray] = {}
    for module in modules:
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear):
            i = len(layers)
            tensors[f"layers.{i}.weight"] = module.weight.detach().cpu().float().numpy().copy()
            bias = module.bias if module.bias is not None else torch.zeros(module.out_features)
            tensors[f"layers.{i}.bias"] = bias.detach().cpu().float().numpy().copy()
            layers.append("linear")
        elif kind in _ACTIVATIONS:
            name, attrs = _ACTIVATIONS[kind]
            for attr, value in attrs.items():
                if getattr(module, attr) != value:
                    raise ValueError(f"cannot export {kind} with {attr}={getattr(module, attr)} (only {value})")
            layers.append(name)
        else:
            raise ValueError(f"cannot export layer {kind}: linear layers and {', '.join(_ACTIVATIONS)} only")
    return layers, tensors, output


def normalization_of(vec_normalize) -> dict | None:
    """VecNormalize's observation statistics as manifest data (None without observation normalisation)."""
    if vec_normalize is None or not vec_normalize.norm_obs:
        return None
    rms = vec_normalize.obs_rms
    return {"mean": np.asarray(rms.mean, dtype=np.float64).tolist(), "var": np.asarray(rms.var, dtype=np.float64).tolist(),
            "clip": float(vec_normalize.clip_obs), "epsilon": float(vec_normalize.epsilon)}


def to_mlp_policy(model, vec_normalize=None, provenance: Mapping | None = None, per_row: Mapping | None = None,
                  max_k: int | None = None) -> MLPPolicy:
    """The exported policy in memory (weights not yet written): an `mlp` (action a is k = a), or with
    `per_row` (a learned per-row rule spec, `nightjar_rl.policy.learned_per_row.rule_spec`) that
    type over the network, for `max_k`."""
    layers, tensors, output = sb3_network(model)
    net = {"weights": tensors, "layers": layers, "output": output, "normalization": normalization_of(vec_normalize),
           "provenance": dict(provenance or {})}
    if per_row is None:
        return MLPPolicy(int(model.action_space.n) - 1, **net)
    kind, fields = rule_spec(per_row)
    if max_k is None:
        raise ValueError("a per-row export needs max_k (the scenario's)")
    return LEARNED_PER_ROW[kind](max_k, **fields, **net)


def export_sb3(model, path: str | Path, vec_normalize=None, provenance: Mapping | None = None,
               per_row: Mapping | None = None, max_k: int | None = None) -> Path:
    """Write `path` (manifest) and the safetensors file beside it. Returns the manifest path."""
    return save_policy(to_mlp_policy(model, vec_normalize, provenance, per_row, max_k), path)


def sb3_predictions(model, observations: np.ndarray, vec_normalize=None) -> np.ndarray:
    """SB3's deterministic actions for raw observations (normalised as during training)."""
    obs = np.asarray(observations, dtype=np.float32)
    if vec_normalize is not None:
        obs = vec_normalize.normalize_obs(obs)
    actions, _ = model.predict(obs, deterministic=True)
    return np.asarray(actions).reshape(-1)


def check_export(policy: MLPPolicy, model, observations: np.ndarray, vec_normalize=None) -> int:
    """Number of observations where the exported policy's deterministic action differs from SB3's."""
    ours = np.array([policy.action(o, deterministic=True) for o in np.asarray(observations)])
    return int((ours != sb3_predictions(model, observations, vec_normalize)).sum())
