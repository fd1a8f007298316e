"""`mlp`: an exported neural speculation policy (a small MLP), run with numpy only.

The artifact is data: the usual JSON manifest (`nightjar-rl/policy` version 1, type `mlp`) plus a
safetensors file beside it holding the weights. Loading needs numpy and safetensors, never
stable-baselines3 or torch. `params` of the manifest:

    weights          the safetensors file name, inside the manifest's folder (no absolute path, no "..")
    weights_sha256   sha256 of that file (required); a different or modified file is refused
    layers           e.g. ["linear", "tanh", "linear", "tanh", "linear"]; linear layer i has tensors
                     "layers.{i}.weight" (out x in, float32) and "layers.{i}.bias" (out)
    output           "logits" (PPO/A2C action logits) | "q_values" (DQN); both have max_k + 1 entries
    observation      {"layout_version": N, "fields": [...]}: a layout this toolkit builds,
                     `obs_layout(max_k, N)` (nightjar_rl.contracts.observation); version 1 (the first
                     8 + max_k entries of version 2) reads that prefix of the observation
    normalization    null, or VecNormalize's observation statistics applied before the network:
                     x = clip((obs - mean) / sqrt(var + epsilon), -clip, clip) in float64, then float32
    action_space     {"type": "discrete", "n": max_k + 1}: action a is the speculation length k = a
    provenance       informative: algorithm, total_timesteps, scenario, seed, library versions ...
    seed             seed of the generator used by stochastic predictions

`predict(obs, deterministic=True)` is the argmax of the output: identical to SB3's
`predict(normalized_obs, deterministic=True)` for PPO/A2C (mode of the categorical) and DQN (greedy
Q). With deterministic=False, `logits` outputs sample from softmax(logits); `q_values` stay greedy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path, PurePath, PureWindowsPath

import numpy as np

from nightjar_rl.contracts.observation import LAYOUT_VERSIONS, OBS_LAYOUT_VERSION, obs_layout, obs_size
from nightjar_rl.io import atomic_writer
from nightjar_rl.policy.base import Policy, check_int


def _tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=x)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))).astype(np.float32)


def _leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.float32(0.01) * x).astype(np.float32)


def _silu(x: np.ndarray) -> np.ndarray:
    return (x / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


ACTIVATIONS = {"tanh": _tanh, "relu": _relu, "elu": _elu, "leaky_relu": _leaky_relu, "silu": _silu}
OUTPUTS = ("logits", "q_values")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MLPPolicy(Policy):
    """A feed-forward network over the observation; k = argmax of its max_k + 1 outputs."""

    type_name = "mlp"
    action_meaning = "k = 0..max_k"  # what action a means (subclasses map actions to plans: learned_per_row.py)
    n_actions_text = "max_k + 1"  # how n_actions is set, for errors

    @property
    def n_actions(self) -> int:
        """Outputs of the network = size of the discrete action space (max_k + 1 here: action a is k = a)."""
        return self.max_k + 1

    def __init__(
        self,
        max_k: int,
        weights: str | Mapping[str, np.ndarray],
        layers: list[str],
        weights_sha256: str | None = None,
        output: str = "logits",
        observation: Mapping | None = None,
        normalization: Mapping | None = None,
        action_space: Mapping | None = None,
        provenance: Mapping | None = None,
        seed: int = 0,
        base_dir: str | None = None,
    ):
        """`weights`: a safetensors file (relative paths resolve against `base_dir`, which
        `load_policy` sets to the manifest's folder) or a mapping of arrays (before saving)."""
        super().__init__(max_k)
        self.seed = check_int("seed", seed, 0)
        self.rng = np.random.default_rng(self.seed)
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.output = output
        n = self.n_actions
        self.observation = dict(observation) if observation is not None else {
            "layout_version": OBS_LAYOUT_VERSION, "fields": obs_layout(self.max_k)}
        self._check_observation(self.observation)
        self.action_space = dict(action_space) if action_space is not None else {"type": "discrete", "n": n}
        if self.action_space != {"type": "discrete", "n": n}:
            raise ValueError(f"action_space must be {{'type': 'discrete', 'n': {n}}} ({self.action_meaning}), "
                             f"got {self.action_space!r}")
        self.provenance = dict(provenance or {})
        self.normalization = None if normalization is None else self._check_normalization(normalization)
        if isinstance(weights, Mapping):
            self.weights_file, self.weights_sha256 = None, None
            tensors = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        else:
            tensors = self._read_weights(weights, weights_sha256, base_dir)
        self.layers = list(layers)
        self.tensors = tensors
        self._ops = self._compile(self.layers, tensors)

    # ---- validation -----------------------------------------------------------------------------
    def _check_observation(self, obs: Mapping) -> None:
        version = obs.get("layout_version")
        if isinstance(version, bool) or version not in LAYOUT_VERSIONS:
            raise ValueError(f"observation layout version {version!r} is not supported: this nightjar-rl "
                             f"reads layout versions {', '.join(map(str, LAYOUT_VERSIONS))} (retrain or re-export "
                             f"the policy)")
        expected = obs_layout(self.max_k, version)
        if list(obs.get("fields") or []) != expected:
            raise ValueError(f"observation fields {obs.get('fields')!r} differ from layout version "
                             f"{version} for max_k={self.max_k}: {expected}")
        self._input_size = len(expected)  # version 1 reads the version-1 prefix of the observation

    def _check_normalization(self, norm: Mapping) -> dict:
        size = self._input_size
        keys = {"mean", "var", "clip", "epsilon"}
        if not isinstance(norm, Mapping) or set(norm) != keys:
            raise ValueError(f"normalization must be null or a mapping with exactly {sorted(keys)}, got {norm!r}")
        mean, var = np.asarray(norm["mean"], dtype=np.float64), np.asarray(norm["var"], dtype=np.float64)
        if mean.shape != (size,) or var.shape != (size,) or not (np.isfinite(mean).all() and (var >= 0).all()):
            raise ValueError(f"normalization mean and var must be {size} finite numbers (var >= 0)")
        clip, eps = float(norm["clip"]), float(norm["epsilon"])
        if not (clip > 0 and eps > 0):
            raise ValueError(f"normalization clip and epsilon must be > 0, got {clip}, {eps}")
        self._mean, self._std, self._clip = mean, np.sqrt(var + eps), clip
        return {"mean": mean.tolist(), "var": var.tolist(), "clip": clip, "epsilon": eps}

    def _read_weights(self, weights: str, sha: str | None, base_dir: str | None) -> dict[str, np.ndarray]:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        if not isinstance(weights, str) or not weights:
            raise ValueError(f"weights must be a safetensors file name, got {weights!r}")
        name = PurePath(weights)
        if name.is_absolute() or PureWindowsPath(weights).is_absolute() or ".." in name.parts or "\\" in weights:
            raise ValueError(f"weights must be a file inside the manifest's folder (no absolute path, no '..'), "
                             f"got {weights!r}")
        if not isinstance(sha, str) or len(sha) != 64:
            raise ValueError(f"weights_sha256 (the sha256 of {weights!r}, 64 hex digits) is required, got {sha!r}")
        path = Path(base_dir) / name if base_dir is not None else Path(name)
        if not path.is_file():
            raise ValueError(f"weights file {path} not found (the manifest names {weights!r})")
        data = path.read_bytes()
        actual = sha256_bytes(data)
        if actual != sha.lower():
            raise ValueError(f"weights file {path} does not match the manifest: sha256 {actual[:12]}..., "
                             f"expected {sha[:12]}... (a different or modified file)")
        try:
            tensors = load(data)
        except SafetensorError as exc:
            raise ValueError(f"weights file {path} is not a readable safetensors file ({exc})") from None
        self.weights_file, self.weights_sha256 = weights, actual
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}

    def _compile(self, layers: list[str], tensors: dict[str, np.ndarray]) -> list:
        """(W^T, b) for linear layers and functions for activations, shapes checked end to end."""
        if not layers or layers[-1] != "linear":
            raise ValueError(f"layers must be a non-empty list ending with 'linear', got {layers!r}")
        ops, width, used = [], self._input_size, set()
        for i, kind in enumerate(layers):
            if kind == "linear":
                w, b = tensors.get(f"layers.{i}.weight"), tensors.get(f"layers.{i}.bias")
                if w is None or b is None:
                    raise ValueError(f"weights lack tensors layers.{i}.weight / layers.{i}.bias for layer {i}")
                if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
                    raise ValueError(f"layer {i}: weight {w.shape} / bias {b.shape} do not fit an input of {width}")
                ops.append((np.ascontiguousarray(w.T), b))
                width = w.shape[0]
                used.update((f"layers.{i}.weight", f"layers.{i}.bias"))
            elif kind in ACTIVATIONS:
                ops.append(ACTIVATIONS[kind])
            else:
                raise ValueError(f"layer {i}: unknown kind {kind!r}; known: linear, {', '.join(ACTIVATIONS)}")
        if width != self.n_actions:
            raise ValueError(f"the network has {width} outputs, expected {self.n_actions_text} = {self.n_actions}")
        if set(tensors) - used:
            raise ValueError(f"weights hold tensors no layer uses: {sorted(set(tensors) - used)}")
        return ops

    @property
    def learning(self) -> bool:
        """Always False: an exported policy does not learn (setting it, as evaluation does for
        learners, changes nothing, so its predictions stay deterministic)."""
        return False

    @learning.setter
    def learning(self, value: bool) -> None:
        pass

    @property
    def name(self) -> str:
        algo = self.provenance.get("algorithm")
        return f"mlp({algo})" if algo else "mlp"

    # ---- inference ------------------------------------------------------------------------------
    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """The network input: VecNormalize's transform (float64, then float32), or obs as float32. A
        version-1 network reads the version-1 prefix of a current observation."""
        obs = np.asarray(obs)
        size = obs_size(self.max_k)
        if obs.shape[-1] == size and self._input_size != size:
            obs = obs[..., :self._input_size]
        if self.normalization is None:
            return np.asarray(obs, dtype=np.float32)
        x = (np.asarray(obs, dtype=np.float64) - self._mean) / self._std
        return np.minimum(np.maximum(x, -self._clip), self._clip).astype(np.float32)

    def forward(self, obs: np.ndarray) -> np.ndarray:
        """Outputs (logits or Q-values) for one observation, or a batch of them (n x obs_size)."""
        x = self.normalize(obs)
        if x.shape[-1] != self._input_size:
            raise ValueError(f"observation has {np.shape(obs)[-1]} entries, expected {obs_size(self.max_k)}")
        for op in self._ops:
            if type(op) is tuple:
                x = x @ op[0]
                x += op[1]
            else:
                x = op(x)
        return x

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
        return self.action(obs, deterministic)

    def action(self, obs: np.ndarray, deterministic: bool = True) -> int:
        """The network's action: argmax of its outputs (SB3's deterministic action), or with
        deterministic=False a sample of softmax(logits)."""
        out = self.forward(obs)
        if deterministic or self.output == "q_values":
            return int(out.argmax())
        p = np.exp(out - out.max())
        return int(self.rng.choice(len(p), p=p / p.sum()))

    # ---- serialisation --------------------------------------------------------------------------
    def params(self) -> dict:
        return {
            "weights": self.weights_file,
            "weights_sha256": self.weights_sha256,
            "output": self.output,
            "layers": self.layers,
            "observation": self.observation,
            "normalization": self.normalization,
            "action_space": self.action_space,
            "provenance": self.provenance,
            "seed": self.seed,
        }

    def save_weights(self, manifest_path: str | Path) -> dict:
        """Write the weights as `<manifest stem>.safetensors` beside the manifest (atomically);
        returns the manifest fields naming it. Called by `save_policy` before it writes the JSON."""
        from safetensors.numpy import save

        path = Path(manifest_path).with_suffix(".safetensors")
        data = save(self.tensors, metadata={"format": "nightjar-rl/mlp", "layers": ",".join(self.layers)})
        with atomic_writer(path, binary=True) as fh:
            fh.write(data)
        self.weights_file, self.weights_sha256 = path.name, sha256_bytes(data)
        return {"weights": self.weights_file, "weights_sha256": self.weights_sha256}
