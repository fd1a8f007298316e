"""The `sb3` policy kind of experiment configs: train an RL policy with stable-baselines3, export it.

An entry of an experiment's `policies:` list whose spec has `type: sb3` is trained (not built by
`make_policy`), exported as an `mlp` artifact (run folder policies/NAME.json + .safetensors) and
evaluated like every other policy. Fields (validated here; errors name `policies[i].spec.FIELD`):

    type             sb3
    algo             PPO | DQN | A2C (required)
    total_timesteps  int >= 1 (required): environment steps (= engine steps) over all envs
    train_on         live | sim (default live): which backend the training scenario runs on; checked
                     against the scenario (`backend: sim` scenarios are the simulator). live envs
                     measure real step times and share one loaded model, so they always run in one
                     process (DummyVecEnv); they cannot use subprocesses (a CUDA context cannot be
                     forked, and parallel processes would distort the timings the reward is made of)
    scenario         training scenario (name or YAML path; default: the experiment's scenario). Its
                     max_k must equal the evaluation scenario's.
    n_envs           int >= 1 (default 1): envs stepped together (SB3 VecEnv)
    vec_env          auto | dummy | subproc (default auto: subproc for sim when n_envs > 1 and the
                     machine has more than 2 cores, else dummy; live is always dummy)
    rates            Poisson rates (requests/s) of training episodes, cycled per episode and offset
                     per env (default: the experiment's train.rates, else its rates); inf needs concurrency
    concurrency      closed loop: max requests in flight of training episodes (ints >= 1), cycled
                     per episode and offset per env like rates (default: the experiment's
                     train.concurrency, else its concurrency; none: open loop)
    num_requests     requests per training episode (default: train.num_requests, else the scenario's)
    seed             SB3 and workload seed (default: the experiment's train.seed); env i's episodes
                     use seeds seed + i, then continue from that generator
    reward           reward name for training (default: the training scenario's); see nightjar_rl/contracts/rewards.py
    reward_kwargs    its arguments, e.g. {per_row: true} (tokens/s per running request: the same
                     per-step optimum with a magnitude that does not grow with load)
    threads          torch CPU threads while training (default: 1 for sim, where the small network gains
                     nothing from more and thread contention slows it; live: the scenario's `threads`)
    learning_rate    number > 0 (default: SB3's for the algorithm)
    policy_kwargs    {net_arch: [64, 64] (or {pi: [...], vf: [...]} for PPO/A2C), activation_fn:
                     tanh | relu | elu | leaky_relu | silu}
    normalize        {obs: true, reward: true, clip_obs: 10.0, clip_reward: 10.0}: VecNormalize.
                     obs: running mean/var per field (batch sizes, rates and seconds per token differ
                     by orders of magnitude); the statistics are frozen into the exported artifact.
                     reward: divides rewards by the running std of the discounted return, so one
                     set of hyperparameters works whatever the hardware's tokens/s scale
    checkpoint_every timesteps between checkpoints (default: max(total_timesteps // 10, 1))
    per_row          a learned per-row policy instead of a k per step (nightjar_rl/policy/learned_per_row.py):
                     {type: learned_budget | learned_row_scorer, profile: scenario | PATH, levels: [...],
                     prior_acceptance, layout, drafting}; the action space becomes Discrete(len(levels)), the
                     envs step with the rule's plan, and the export is an artifact of that type
    start_level      per_row with PPO or A2C: one of the rule's levels that the untrained policy picks with
                     probability 0.9 (`sb3_train.prefer_action`), e.g. 1.0 for learned_budget: training
                     starts from the allocator itself and learns where to depart from it
    eval             {every: timesteps (0 = off; default checkpoint_every), episodes: 2, seed:
                     held-apart workload seed (default seed + 1000000), rates: list (default: rates)}
    (any other key)  a constructor argument of the SB3 algorithm (n_steps, batch_size, gamma,
                     ent_coef, buffer_size, exploration_fraction, ...), passed through as is
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

from nightjar_rl.experiments.fields import ExperimentError, is_int, is_number, parse_concurrency, parse_rates
from nightjar_rl.policy.learned_per_row import rule_spec

ALGOS = ("PPO", "DQN", "A2C")
TRAIN_ON = ("live", "sim")
VEC_ENVS = ("auto", "dummy", "subproc")
ACTIVATION_NAMES = ("tanh", "relu", "elu", "leaky_relu", "silu")
OWN_FIELDS = ("type", "algo", "total_timesteps", "train_on", "scenario", "n_envs", "vec_env", "rates", "concurrency",
              "num_requests",
              "seed", "threads", "per_row", "start_level", "reward", "reward_kwargs", "learning_rate", "policy_kwargs", "normalize", "checkpoint_every",
              "eval")
# SB3 constructor arguments this module sets itself (or that make no sense in a config)
RESERVED_SB3 = {"policy", "env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model", "policy_kwargs",
                "learning_rate", "replay_buffer_class", "rollout_buffer_class"}


@dataclass
class SB3Spec:
    algo: str
    total_timesteps: int
    train_on: str = "live"
    scenario: str | None = None
    n_envs: int = 1
    vec_env: str = "auto"
    rates: list[float] | None = None
    concurrency: list[int] | None = None
    num_requests: int | None = None
    seed: int | None = None
    threads: int | None = None
    reward: str | None = None
    reward_kwargs: dict | None = None
    learning_rate: float | None = None
    policy_kwargs: dict = field(default_factory=dict)
    normalize: dict = field(default_factory=lambda: dict(NORMALIZE_DEFAULTS))
    checkpoint_every: int | None = None
    eval: dict = field(default_factory=dict)
    per_row: dict | None = None
    start_level: float | None = None
    algo_kwargs: dict = field(default_factory=dict)

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or max(self.total_timesteps // 10, 1)


NORMALIZE_DEFAULTS = {"obs": True, "reward": True, "clip_obs": 10.0, "clip_reward": 10.0}


def is_sb3_spec(spec) -> bool:
    return isinstance(spec, dict) and str(spec.get("type", "")).strip().lower() == "sb3"


def _finite(v) -> bool:
    return is_number(v) and math.isfinite(v)


def sb3_algorithm(name: str):
    """The SB3 class for PPO / DQN / A2C (imports stable-baselines3)."""
    try:
        import stable_baselines3
    except ImportError:
        raise ExperimentError("sb3 policies need stable-baselines3: pip install 'nightjar-rl[train]'") from None
    return getattr(stable_baselines3, name)


def parse_sb3_spec(spec: dict, where: str = "sb3 spec") -> SB3Spec:
    """Validate an sb3 spec mapping; `where` prefixes errors, e.g. "experiment 'x': field 'policies[2].spec"."""

    def fail(key: str, msg: str) -> ExperimentError:
        return ExperimentError(f"{where}.{key}' {msg}")

    for key in ("algo", "total_timesteps"):
        if key not in spec:
            raise fail(key, "is required")
    algo = str(spec["algo"]).upper()
    if algo not in ALGOS:
        raise fail("algo", f"must be one of {', '.join(ALGOS)}, got {spec['algo']!r}")
    out = SB3Spec(algo=algo, total_timesteps=spec["total_timesteps"])
    if not is_int(out.total_timesteps) or out.total_timesteps < 1:
        raise fail("total_timesteps", f"must be an integer >= 1, got {spec['total_timesteps']!r}")
    for key, choices in (("train_on", TRAIN_ON), ("vec_env", VEC_ENVS)):
        if key in spec:
            if spec[key] not in choices:
                raise fail(key, f"must be one of {', '.join(choices)}, got {spec[key]!r}")
            setattr(out, key, spec[key])
    if out.train_on == "live" and out.vec_env == "subproc":
        raise fail("vec_env", "cannot be subproc with train_on: live (one process shares the model and "
                              "measures honest step times; a CUDA context cannot be forked); use dummy or auto")
    for key, low in (("n_envs", 1), ("num_requests", 1), ("seed", 0), ("threads", 1), ("checkpoint_every", 1)):
        if spec.get(key) is not None:
            if not is_int(spec[key]) or spec[key] < low:
                raise fail(key, f"must be an integer >= {low}, got {spec[key]!r}")
            setattr(out, key, spec[key])
    for key in ("scenario", "reward"):
        if spec.get(key) is not None:
            if not isinstance(spec[key], str) or not spec[key]:
                raise fail(key, f"must be a non-empty string, got {spec[key]!r}")
            setattr(out, key, spec[key])
    if spec.get("reward_kwargs") is not None:
        if not isinstance(spec["reward_kwargs"], dict):
            raise fail("reward_kwargs", f"must be a mapping, got {spec['reward_kwargs']!r}")
        out.reward_kwargs = dict(spec["reward_kwargs"])
    if spec.get("concurrency") is not None:
        out.concurrency = parse_concurrency(spec["concurrency"], lambda m: fail("concurrency", m))
    if spec.get("rates") is not None:
        out.rates = parse_rates(spec["rates"], out.concurrency is not None, lambda m: fail("rates", m))
    if spec.get("learning_rate") is not None:
        if not _finite(spec["learning_rate"]) or spec["learning_rate"] <= 0:
            raise fail("learning_rate", f"must be a number > 0, got {spec['learning_rate']!r}")
        out.learning_rate = float(spec["learning_rate"])
    out.policy_kwargs = _policy_kwargs(spec.get("policy_kwargs") or {}, algo, _sub(fail, "policy_kwargs"))
    out.normalize = _normalize(spec.get("normalize"), _sub(fail, "normalize"))
    out.eval = _eval(spec.get("eval") or {}, out, _sub(fail, "eval"))
    if spec.get("per_row") is not None:
        try:
            rule_spec(spec["per_row"])
        except ValueError as exc:
            raise fail("per_row", str(exc).removeprefix("per_row ")) from None
        out.per_row = dict(spec["per_row"])
    if spec.get("start_level") is not None:
        if out.per_row is None or algo not in ("PPO", "A2C"):
            raise fail("start_level", "needs a per_row policy trained with PPO or A2C")
        if not _finite(spec["start_level"]):
            raise fail("start_level", f"must be a number (one of the rule's levels), got {spec['start_level']!r}")
        out.start_level = float(spec["start_level"])
    extra = {k: v for k, v in spec.items() if k not in OWN_FIELDS}
    if extra:
        allowed = [p for p in inspect.signature(sb3_algorithm(algo)).parameters if p not in RESERVED_SB3]
        for key in extra:
            if key not in allowed:
                raise fail(key, f"is not a field of sb3 specs nor an argument of {algo}; "
                                f"{algo} takes: {', '.join(allowed)}")
        out.algo_kwargs = extra
    return out


def _sub(fail, parent: str):
    """fail(key, msg) for the fields of a nested mapping (an empty key names the mapping itself)."""
    return lambda key, msg: fail(f"{parent}.{key}" if key else parent, msg)


def _policy_kwargs(pk, algo: str, fail) -> dict:
    if not isinstance(pk, dict):
        raise fail("", f"must be a mapping, got {pk!r}")
    unknown = set(pk) - {"net_arch", "activation_fn"}
    if unknown:
        raise fail(min(unknown), "is not supported (policy_kwargs takes net_arch, activation_fn)")
    out = {}
    if "net_arch" in pk:
        arch = pk["net_arch"]

        def sizes(v) -> bool:
            return isinstance(v, list) and all(is_int(n) and n >= 1 for n in v)

        ok = sizes(arch) or (algo != "DQN" and isinstance(arch, dict) and set(arch) == {"pi", "vf"}
                             and all(sizes(v) for v in arch.values()))
        if not ok:
            shapes = "a list of layer sizes" + ("" if algo == "DQN" else " or {pi: [...], vf: [...]}")
            raise fail("net_arch", f"must be {shapes}, got {arch!r}")
        out["net_arch"] = arch
    if "activation_fn" in pk:
        if pk["activation_fn"] not in ACTIVATION_NAMES:
            raise fail("activation_fn", f"must be one of {', '.join(ACTIVATION_NAMES)}, got {pk['activation_fn']!r}")
        out["activation_fn"] = pk["activation_fn"]
    return out


def _normalize(value, fail) -> dict:
    out = dict(NORMALIZE_DEFAULTS)
    if value is None:
        return out
    if not isinstance(value, dict):
        raise fail("", f"must be a mapping {{obs, reward, clip_obs, clip_reward}}, got {value!r}")
    for key, v in value.items():
        if key not in out:
            raise fail(key, f"is unknown; normalize takes {', '.join(out)}")
        if key in ("obs", "reward") and not isinstance(v, bool):
            raise fail(key, f"must be true or false, got {v!r}")
        if key.startswith("clip") and not (_finite(v) and v > 0):
            raise fail(key, f"must be a number > 0, got {v!r}")
        out[key] = v
    return out


def _eval(value, spec: SB3Spec, fail) -> dict:
    if not isinstance(value, dict):
        raise fail("", f"must be a mapping {{every, episodes, seed, rates}}, got {value!r}")
    out = {"every": None, "episodes": 2, "seed": None, "rates": None}
    for key, v in value.items():
        if key not in out:
            raise fail(key, f"is unknown; eval takes {', '.join(out)}")
        if key == "rates":
            out[key] = parse_rates(v, spec.concurrency is not None, lambda m: fail("rates", m))
        elif not is_int(v) or v < (1 if key == "episodes" else 0):
            raise fail(key, f"must be an integer >= {1 if key == 'episodes' else 0}, got {v!r}")
        else:
            out[key] = v
    return out
