"""Train a speculation policy with stable-baselines3, then export it as an `mlp` policy artifact.

`train_sb3` reads top to bottom (cleanrl style): seeding, envs, algorithm (new or resumed),
callbacks, learn, export. The spec is `nightjar_rl.experiments.sb3_config.SB3Spec`. Outputs, inside
the run folder:

    checkpoints/NAME/model_<steps>_steps.zip     SB3 checkpoints (resumable), every checkpoint_every steps
    checkpoints/NAME/vecnormalize_<steps>_steps.pkl   the VecNormalize statistics of that checkpoint
    checkpoints/NAME/replay_buffer.pkl           DQN only: the replay buffer of the latest checkpoint
    checkpoints/NAME/model_<steps>_steps.manifest.json   sha256 of that checkpoint's files, signed (HMAC) with
                                                 this user's key (`nightjar_rl.io.local_key`)
    tb/NAME_1/events.out.tfevents.*              TensorBoard (SB3's rollout/train/eval/time scalars)
    eval/NAME/evaluations.npz                    evaluation callback results on held-apart seeds
    policies/NAME.json + NAME.safetensors        the exported policy (loads without SB3)

Resuming: when checkpoints/NAME holds a checkpoint, training continues from the newest one (model,
VecNormalize statistics, replay buffer) and its step count up to total_timesteps; the episode that
was running when training stopped is not resumed (each env starts a fresh workload). Resume unpickles
only a checkpoint whose signed manifest checks out (`trusted_checkpoint_files`): files it did not
write, or wrote under another user's key, are refused before anything is loaded.

Vectorised envs: `n_envs` envs step together. Live envs run in this process (DummyVecEnv) and share
one loaded target model: their reward is measured wall time, which parallel processes on the same
device would distort, and a CUDA context cannot be forked into subprocesses. Simulator envs may run
in subprocesses (SubprocVecEnv, forkserver start) where that pays: more than 2 cores and n_envs > 1.
A script that trains with subprocess envs needs the `if __name__ == "__main__":` guard (the
`nightjar-rl` command has it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize
from tqdm.auto import tqdm

from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.scenario import Scenario, ScenarioError, load_scenario
from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
from nightjar_rl.experiments.config import ExperimentConfig, resolve_spec, resolve_train_scenario
from nightjar_rl.experiments.fields import ExperimentError
from nightjar_rl.experiments.sb3_config import SB3Spec, parse_sb3_spec, sb3_algorithm
from nightjar_rl.io import atomic_write_json, check_signed_manifest, signed_manifest
from nightjar_rl.policy import load_policy
from nightjar_rl.policy.learned_per_row import PlanRule, plan_rule
from nightjar_rl.policy.sb3 import check_export, export_sb3

ACTIVATION_FNS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "elu": torch.nn.ELU,
                  "leaky_relu": torch.nn.LeakyReLU, "silu": torch.nn.SiLU}
EVAL_SEED_OFFSET = 1_000_000  # default held-apart evaluation seeds: seed + this
RECORDED_OBS = 1000  # raw observations kept from training to check the export against SB3


# ---- envs ---------------------------------------------------------------------------------------
class WorkloadWrapper(gym.Wrapper):
    """Sets each episode's workload: Poisson `rates` and closed-loop `concurrency` (max requests in
    flight) cycled per episode (starting at `offset`, so parallel envs see different loads) and
    `num_requests`. With `seeds` (evaluation) episodes cycle through fixed seeds too, and `restart()`
    replays the same sequence of (rate, seed) episodes."""

    def __init__(self, env: gym.Env, rates: list[float] | None, num_requests: int | None, offset: int = 0,
                 seeds: list[int] | None = None, concurrency: list[int] | None = None):
        super().__init__(env)
        self.rates, self.num_requests, self.offset, self.seeds = rates, num_requests, offset, seeds
        self.concurrency = concurrency
        self.episode = 0

    def restart(self) -> None:
        self.episode = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        i = self.episode + self.offset
        self.episode += 1
        options = dict(options or {})
        if self.rates:
            options.setdefault("rate", self.rates[i % len(self.rates)])
        if self.concurrency:
            options.setdefault("max_concurrency", self.concurrency[i % len(self.concurrency)])
        if self.num_requests is not None:
            options.setdefault("num_requests", self.num_requests)
        if seed is None and self.seeds:
            seed = self.seeds[(self.episode - 1) % len(self.seeds)]
        return self.env.reset(seed=seed, options=options)


class PlanActions(gym.Wrapper):
    """Discrete(len(levels)) actions of a learned per-row policy: each steps the env with the plan its
    rule makes of the current observation (`PlanRule.plan`, what the exported policy's `predict` does)."""

    def __init__(self, env: gym.Env, rule: PlanRule):
        super().__init__(env)
        self.rule = rule
        self.action_space = gym.spaces.Discrete(rule.n_actions)
        self._obs = None

    def reset(self, **kwargs):
        self._obs, info = self.env.reset(**kwargs)
        return self._obs, info

    def step(self, action):
        result = self.env.step(self.rule.plan(self._obs, int(action)))
        self._obs = result[0]
        return result


def make_env(scenario: Scenario, target, rates, num_requests, offset: int = 0, seeds=None, concurrency=None,
             threads: int | None = None, rule: PlanRule | None = None) -> gym.Env:
    """One monitored env (module-level so that subprocess envs can pickle it; `threads`: torch threads
    of a subprocess env's process, the trainer's own; `rule`: a learned per-row policy's actions)."""
    if threads is not None:
        torch.set_num_threads(threads)
    env = SpecDecodeEnv(scenario, target=target)
    if rule is not None:
        env = PlanActions(env, rule)
    return WorkloadWrapper(Monitor(env), rates, num_requests, offset, seeds, concurrency)


def use_subprocesses(spec: SB3Spec) -> bool:
    if spec.train_on == "live" or spec.n_envs == 1:
        return False
    return spec.vec_env == "subproc" or (spec.vec_env == "auto" and (os.cpu_count() or 1) > 2)


def make_vec_env(spec: SB3Spec, scenario: Scenario, target, rates, num_requests, concurrency=None, rule=None):
    fns = [functools.partial(make_env, scenario, None if use_subprocesses(spec) else target, rates, num_requests, i,
                             concurrency=concurrency, threads=torch.get_num_threads() if use_subprocesses(spec) else None,
                             rule=rule)
           for i in range(spec.n_envs)]
    if use_subprocesses(spec):
        return SubprocVecEnv(fns, start_method="forkserver")
    return DummyVecEnv(fns)


def per_row_rule(spec: SB3Spec, scenario: Scenario) -> tuple[dict | None, PlanRule | None]:
    """(the per_row spec with `profile: scenario` resolved, its rule) of a learned per-row spec, else (None, None)."""
    if spec.per_row is None:
        return None, None
    try:
        per_row = resolve_spec(spec.per_row, scenario)
        rule = plan_rule(per_row, scenario.max_k)
    except ValueError as exc:
        raise ExperimentError(f"sb3 spec field 'per_row': {exc}") from None
    if spec.start_level is not None and (spec.start_level not in rule.levels or len(rule.levels) < 2):
        raise ExperimentError(f"sb3 spec field 'start_level' must be one of the rule's levels {rule.levels} "
                              f"(at least two), got {spec.start_level}")
    return per_row, rule


START_PROBABILITY = 0.9  # what `start_level` gives its action in the untrained policy


def prefer_action(model, action: int, probability: float = START_PROBABILITY) -> None:
    """Set an untrained PPO/A2C policy's action head so it picks `action` with `probability` and each of
    the other n - 1 actions with (1 - probability) / (n - 1), whatever the observation: weights zero, bias
    a logit gap of log(probability (n - 1) / (1 - probability)). Training moves the weights from there."""
    net = model.policy.action_net
    n = net.out_features
    if n < 2 or not 0 < probability < 1:
        raise ValueError(f"prefer_action needs at least 2 actions and a probability in (0, 1), got {n}, {probability}")
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.bias[action] = math.log(probability * (n - 1) / (1.0 - probability))


# ---- checkpoints --------------------------------------------------------------------------------
_CKPT = re.compile(r"model_(\d+)_steps\.zip$")


def latest_checkpoint(folder: Path) -> tuple[int, Path, Path] | None:
    """(steps, model zip, VecNormalize pickle) of the newest complete checkpoint in `folder`."""
    found = []
    for path in Path(folder).glob("model_*_steps.zip"):
        m = _CKPT.search(path.name)
        stats = path.with_name(f"vecnormalize_{m.group(1)}_steps.pkl") if m else None
        if m and stats.is_file():
            found.append((int(m.group(1)), path, stats))
    return max(found) if found else None


def manifest_path(folder: Path, steps: int) -> Path:
    """The signed manifest of checkpoint `steps` (sha256 of each of its files, see `CheckpointCallback`)."""
    return Path(folder) / f"model_{steps}_steps.manifest.json"


def trusted_checkpoint_files(folder: Path, steps: int) -> set[Path]:
    """The files of checkpoint `steps` that resume may load (unpickle): those its signed manifest
    names, each unchanged since this user's nightjar-rl wrote it. ExperimentError in one line when
    the manifest is missing, not signed with this user's key, or a file differs."""
    path = manifest_path(folder, steps)
    if not path.is_file():
        zip_path = Path(folder) / f"model_{steps}_steps.zip"
        raise ExperimentError(f"refusing to resume from {zip_path}: it has no signed "
                              f"manifest ({path.name}), so it was not written by this user's nightjar-rl")
    try:
        files = set(check_signed_manifest(path))
    except ValueError as exc:
        raise ExperimentError(f"refusing to resume: {exc}") from None
    needed = {Path(folder) / f"model_{steps}_steps.zip", Path(folder) / f"vecnormalize_{steps}_steps.pkl"}
    if not needed <= files:
        raise ExperimentError(f"refusing to resume: {path} does not name the checkpoint's model and statistics")
    return files


class CheckpointCallback(BaseCallback):
    """Every `every` timesteps (and at the end): VecNormalize statistics, the DQN replay buffer
    (latest only), then the model zip, each written to a temp name and renamed, so a checkpoint whose
    zip exists is complete."""

    def __init__(self, folder: Path, every: int):
        super().__init__()
        self.folder, self.every = Path(folder), every
        self.last = 0

    def _on_training_start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self.last >= self.every:
            self.save()
        return True

    def save(self) -> None:
        steps, f = self.num_timesteps, self.folder
        self.model.get_vec_normalize_env().save(str(f / ".vecnormalize.tmp"))
        os.replace(f / ".vecnormalize.tmp", f / f"vecnormalize_{steps}_steps.pkl")
        staged = {f"vecnormalize_{steps}_steps.pkl": f / f"vecnormalize_{steps}_steps.pkl"}
        if hasattr(self.model, "replay_buffer") and self.model.replay_buffer is not None:
            self.model.save_replay_buffer(f / ".replay_buffer.tmp.pkl")
            staged["replay_buffer.pkl"] = f / ".replay_buffer.tmp.pkl"
        self.model.save(f / ".model.tmp.zip")
        staged[f"model_{steps}_steps.zip"] = f / ".model.tmp.zip"
        atomic_write_json(manifest_path(f, steps), signed_manifest(staged))  # before the zip marks it complete
        for name, tmp in staged.items():
            if tmp.name != name:
                os.replace(tmp, f / name)
        self.last = steps


class HeldApartEval(EvalCallback):
    """EvalCallback that replays the same held-apart (rate, seed) episodes at every evaluation."""

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            self.eval_env.env_method("restart")
        return super()._on_step()


class RecordObservations(BaseCallback):
    """Keeps the last `size` raw (unnormalised) observations seen in training."""

    def __init__(self, size: int = RECORDED_OBS):
        super().__init__()
        self.observations: deque = deque(maxlen=size)

    def _on_step(self) -> bool:
        self.observations.extend(self.model.get_vec_normalize_env().get_original_obs())
        return True


class TqdmCallback(BaseCallback):
    def __init__(self, total: int, desc: str, disable: bool):
        super().__init__()
        self.total, self.desc, self.disable = total, desc, disable

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, initial=self.num_timesteps, desc=self.desc, unit="step",
                        disable=self.disable, leave=False)

    def _on_step(self) -> bool:
        self.bar.total = max(self.bar.total, self.num_timesteps)  # on-policy algorithms finish their last rollout
        self.bar.update(self.num_timesteps - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


# ---- training -----------------------------------------------------------------------------------
@dataclass
class SB3Result:
    artifact: Path
    timesteps: int  # the model's step count at the end
    resumed_from: int  # step count of the checkpoint training resumed from (0: fresh)
    elapsed_s: float
    timesteps_per_s: float  # this session's steps / wall seconds (envs + learning)
    eval_mean_reward: float  # last held-apart evaluation (nan if none ran)
    export_mismatches: int  # recorded observations where the export disagrees with SB3 (expect 0)

    def as_row(self) -> dict:
        return {**self.__dict__, "artifact": str(self.artifact)}


@contextmanager
def torch_threads(n: int | None):
    """Run with `n` torch CPU threads (None: unchanged), restoring the previous count afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sb3_policy_kwargs(spec: SB3Spec) -> dict:
    kwargs = dict(spec.policy_kwargs)
    if "activation_fn" in kwargs:
        kwargs["activation_fn"] = ACTIVATION_FNS[kwargs["activation_fn"]]
    return kwargs


def train_sb3(spec: SB3Spec, scenario: Scenario, run_dir: str | Path, name: str, *, target=None,
              rates: list[float] | None = None, num_requests: int | None = None, seed: int = 0,
              progress: bool = True, callbacks: list[BaseCallback] = (), concurrency: list[int] | None = None
              ) -> SB3Result:
    """Train (or resume) the policy `name` on `scenario` and export it to run_dir/policies/NAME.json.
    `rates`, `num_requests`, `seed`, `concurrency` are the defaults for the spec's unset fields.
    `target` is the loaded model shared by the in-process live envs."""
    run_dir = Path(run_dir)
    rates = spec.rates or rates
    concurrency = spec.concurrency or concurrency
    num_requests = spec.num_requests or num_requests
    seed = spec.seed if spec.seed is not None else seed

    # 1. seeding: python, numpy, torch; envs get seed + i on their first reset. Threads: see the spec.
    set_random_seed(seed)
    threads = spec.threads or (1 if spec.train_on == "sim" else None)
    with torch_threads(threads):
        return _train(spec, scenario, run_dir, name, target, rates, num_requests, seed, progress, callbacks,
                      concurrency)


def _train(spec: SB3Spec, scenario: Scenario, run_dir: Path, name: str, target, rates, num_requests, seed: int,
           progress: bool, callbacks, concurrency) -> SB3Result:
    ckpt_dir, tb_dir = run_dir / "checkpoints" / name, run_dir / "tb"
    algo_cls = sb3_algorithm(spec.algo)

    # 2. envs: training (VecNormalize obs/reward) and held-apart evaluation (obs statistics synced); a
    # learned per-row policy's envs step with its rule's plans
    norm = spec.normalize
    per_row, rule = per_row_rule(spec, scenario)
    venv = make_vec_env(spec, scenario, target, rates, num_requests, concurrency, rule)
    venv.seed(seed)
    ev = spec.eval
    eval_every = spec.checkpoint_interval if ev["every"] is None else ev["every"]
    eval_seed = ev["seed"] if ev["seed"] is not None else seed + EVAL_SEED_OFFSET
    eval_seeds = [eval_seed + j for j in range(ev["episodes"])]
    eval_venv = VecNormalize(
        DummyVecEnv([functools.partial(make_env, scenario, target, ev["rates"] or rates, num_requests, 0, eval_seeds,
                                       concurrency, rule=rule)]),
        training=False, norm_obs=norm["obs"], norm_reward=False, clip_obs=norm["clip_obs"])

    # 3. algorithm: resume from the newest checkpoint, or start fresh
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        resumed_from, zip_path, stats_path = last
        trusted = trusted_checkpoint_files(ckpt_dir, resumed_from)  # checked before anything is unpickled
        venv = VecNormalize.load(str(stats_path), venv)
        model = algo_cls.load(zip_path, env=venv, device="cpu", tensorboard_log=str(tb_dir))
        if ckpt_dir / "replay_buffer.pkl" in trusted and hasattr(model, "load_replay_buffer"):
            model.load_replay_buffer(ckpt_dir / "replay_buffer.pkl")
        venv.seed(seed + resumed_from)  # fresh workloads, not the ones before the interruption
    else:
        resumed_from = 0
        venv = VecNormalize(venv, norm_obs=norm["obs"], norm_reward=norm["reward"], clip_obs=norm["clip_obs"],
                            clip_reward=norm["clip_reward"], gamma=spec.algo_kwargs.get("gamma", 0.99))
        extra = {"learning_rate": spec.learning_rate} if spec.learning_rate is not None else {}
        model = algo_cls("MlpPolicy", venv, policy_kwargs=sb3_policy_kwargs(spec), tensorboard_log=str(tb_dir),
                         seed=seed, device="cpu", verbose=0, **extra, **spec.algo_kwargs)
        if spec.start_level is not None:  # start from one of the rule's levels (e.g. the allocator itself)
            prefer_action(model, rule.levels.index(spec.start_level))

    # 4. callbacks: checkpoints, held-apart evaluation, recorded observations, progress bar
    calls = max(1, spec.n_envs)
    checkpoint = CheckpointCallback(ckpt_dir, spec.checkpoint_interval)
    evaluation = HeldApartEval(eval_venv, n_eval_episodes=ev["episodes"], eval_freq=max(eval_every // calls, 1)
                               if eval_every else -1, log_path=str(run_dir / "eval" / name), deterministic=True,
                               verbose=0)
    recorder = RecordObservations()
    bar = TqdmCallback(spec.total_timesteps, f"train {name} ({spec.algo})", disable=not progress)

    # 5. learn (the step count continues from a resumed checkpoint)
    start = time.perf_counter()
    remaining = max(spec.total_timesteps - model.num_timesteps, 0)
    if remaining:
        model.learn(total_timesteps=remaining, callback=CallbackList([checkpoint, evaluation, recorder, bar, *callbacks]),
                    tb_log_name=name, reset_num_timesteps=resumed_from == 0)
        checkpoint.save()
    elapsed = time.perf_counter() - start

    # 6. export: manifest + safetensors, checked against SB3 on the observations seen in training
    provenance = {
        "algorithm": spec.algo, "timesteps": int(model.num_timesteps), "total_timesteps": spec.total_timesteps,
        "scenario": scenario.name, "train_on": spec.train_on, "seed": seed, "n_envs": spec.n_envs,
        "rates": rates, "concurrency": concurrency, "num_requests": num_requests, "reward": scenario.reward,
        "reward_kwargs": scenario.reward_kwargs,
        "normalize": norm, "policy_kwargs": spec.policy_kwargs, "algo_kwargs": spec.algo_kwargs,
        "run": run_dir.name, "checkpoint": f"checkpoints/{name}/model_{model.num_timesteps}_steps.zip",
        "stable_baselines3": stable_baselines3.__version__, "torch": torch.__version__,
    }
    artifact = export_sb3(model, run_dir / "policies" / f"{name}.json", venv, provenance, per_row, scenario.max_k)
    mismatches = check_export(load_policy(artifact), model, np.array(recorder.observations), venv) \
        if recorder.observations else 0
    venv.close()
    eval_venv.close()
    evals = evaluation.evaluations_results
    return SB3Result(artifact, int(model.num_timesteps), resumed_from, elapsed,
                     (model.num_timesteps - resumed_from) / elapsed if elapsed > 0 else float("nan"),
                     float(np.mean(evals[-1])) if evals else float("nan"), mismatches)


# ---- inside an experiment ------------------------------------------------------------------------
def training_scenario(spec: SB3Spec, cfg: ExperimentConfig, eval_scenario: Scenario, where: str) -> Scenario:
    """The scenario the policy trains on: the spec's, else the experiment's `train.scenario`, else the
    evaluation scenario, with the spec's reward overrides; its backend must match `train_on` and its
    max_k the evaluation scenario's."""
    scenario, source = eval_scenario, "the experiment's 'scenario'"
    if spec.scenario is not None:
        ref, source = spec.scenario, f"{where}.scenario'"
        if cfg.base_dir is not None and (Path(cfg.base_dir) / ref).is_file():
            ref = Path(cfg.base_dir) / ref
        try:
            scenario = load_scenario(ref)
        except ScenarioError as exc:
            raise ExperimentError(f"{where}.scenario' {exc}") from None
    elif cfg.train.scenario is not None:
        scenario, source = resolve_train_scenario(cfg, eval_scenario), f"experiment {cfg.name!r}: field 'train.scenario'"
    changes = {k: v for k, v in (("reward", spec.reward), ("reward_kwargs", spec.reward_kwargs)) if v is not None}
    if changes:
        try:
            scenario = scenario.replace(**changes)
        except (ScenarioError, ValueError) as exc:
            raise ExperimentError(f"{where}.reward' {exc}") from None
    if scenario.backend != spec.train_on:
        raise ExperimentError(f"{where}.train_on' is {spec.train_on} but the training scenario {scenario.name!r} "
                              f"(from {source}) runs on the {scenario.backend} backend (set train_on, or a "
                              f"scenario with backend: {spec.train_on})")
    if scenario.max_k != eval_scenario.max_k:
        raise ExperimentError(f"{where}.scenario' {scenario.name!r} has max_k={scenario.max_k}, the evaluation "
                              f"scenario {eval_scenario.name!r} has {eval_scenario.max_k}; they must match")
    return scenario


def train_entry(name: str, index: int, cfg: ExperimentConfig, eval_scenario: Scenario, backend,
                artifact: Path, replicate: int = 0, progress: bool = True) -> tuple[Path, dict]:
    """Train replicate `replicate` of the experiment's sb3 policy `name` (entry `index`) and export it
    to `artifact` (run_dir/policies/NAME.json, or NAME.repR.json: seed + R). Returns (artifact, its
    train_sb3.csv row); the runner writes the row, wherever the training ran.
    `backend` is the evaluation scenario's: a live one shares its loaded target model with the
    training envs when both use the same model."""
    where = f"experiment {cfg.name!r}: field 'policies[{index}].spec"
    spec = parse_sb3_spec(cfg.policies[index].spec, where)
    spec = dataclasses.replace(spec, seed=(spec.seed if spec.seed is not None else cfg.train.seed) + replicate)
    scenario = training_scenario(spec, cfg, eval_scenario, where)
    same_model = all(getattr(scenario.engine, f) == getattr(eval_scenario.engine, f) for f in ("model", "dtype", "device"))
    shared = None  # sim envs load no model
    if spec.train_on == "live":  # one target for every in-process env (and the evaluation, when it is the same)
        shared = backend.target if getattr(backend, "needs_model", False) and same_model else make_backend(scenario).target
    run_dir, stem = artifact.parent.parent, artifact.stem
    result = train_sb3(spec, scenario, run_dir, stem, target=shared, rates=cfg.train.rates or cfg.rates,
                       num_requests=cfg.train.num_requests, progress=progress,
                       concurrency=cfg.train.concurrency or cfg.concurrency)
    return result.artifact, {"policy": name, "replicate": replicate, "algo": spec.algo, "scenario": scenario.name,
                             **result.as_row()}
