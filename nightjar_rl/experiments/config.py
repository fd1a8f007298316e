"""Typed experiment configs (experiments/*.yaml), validated at the edge with one-line errors.

Fields:

    name          str    experiment name (defaults to the file stem); part of the run name
    scenario      str    scenario name in envs/ or a YAML path (model, drafter, prompts, max_k...)
    rates         list   request rates (requests/s, > 0) of the evaluation sweep; `inf` (every request
                         scheduled at t=0, vLLM's --request-rate inf) only with a `concurrency` list
    concurrency   list   optional closed-loop sweep: max requests in flight (ints >= 1, vLLM's
                         --max-concurrency); the sweep is then rates x concurrency and the results get a
                         `concurrency` column (absent without this field: open loop, the scenario's
                         max_concurrency, if any, applies)
    seeds         list   workload seeds; every policy sees the same workload per (rate, seed)
    num_requests  int    requests per evaluation cell (default: the scenario's)
    max_new_tokens int   output budget per request (default: the scenario's)
    slo           map    goodput definition: {tpot_s: S, ttft_s: S or null}
    policies      list   [{name: LABEL, spec: SPEC}]; SPEC goes to nightjar_rl.policy.make_policy.
                         Learners (policy.learning is True) are trained first. A spec with
                         `type: sb3` is trained with stable-baselines3 and exported as an `mlp`
                         artifact (fields: nightjar_rl/experiments/sb3_config.py).
                         A spec field `profile: scenario` means the scenario's hardware profile
                         (sim scenarios), so oracle/sssd rules price steps on the simulated hardware.
    train         map    {episodes: N, rates: [...] (default: rates), concurrency: [...] (default:
                          concurrency), num_requests: N, seed: S, replicates: R, scenario: NAME}: episode
                          i uses rates[i % len] and concurrency[i % len]; each learner is trained R times
                          (replicate r: policy seed + r, workload seeds S + r*N ...); every replicate is
                          evaluated on every cell. `scenario` (default: the experiment's) trains the
                          learners on another scenario with the same max_speculation (the
                          experiment's num_requests / max_new_tokens overrides apply to it as to the
                          evaluation), for a held-out evaluation (e.g. trained on Poisson arrivals,
                          evaluated under bursts); an sb3 spec's own `scenario` takes precedence
    evaluate      map    {learn: false}: whether learners keep learning during evaluation
    executor      str|map  local (default) | ray | {kind: ray, address: ADDR|null, workers: N|null}:
                         where the training jobs and evaluation cells run; results do not depend on it
                         (not part of the run's config.yaml, so a run may be resumed on another executor)
    goals         map    optional targets the summary checks the headline against: {win: X,
                         low_loss: X, hindsight: X} (any subset; `{}`: the Nightjar study's, see
                         nightjar_rl.analysis.study.verdict). Without it the summary states results only.
                         Reporting only: not part of the run's config.yaml (nor is `confirm`)
    confirm       map    optional live confirmation after the sweep (nightjar_rl/experiments/confirm.py):
                         {scenario: LIVE, twin: SIM or null, top: N, policies: [NAME...] or null,
                         rates: [...], concurrency: [...] or null, repeats: R, seed: S,
                         num_requests: N, max_new_tokens: N, rescale_twin: false}: the sweep's best `top`
                         policies plus its first fixed k (or the named `policies`), served R times on one
                         seeded workload per load point on LIVE (and once on SIM), interleaved; with
                         rescale_twin, SIM also at the machine's speed timed around the live cells
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from nightjar_rl.decoding.drafters.registry import drafting_of
from nightjar_rl.env.backend import resolve_data_path
from nightjar_rl.env.scenario import Scenario, ScenarioError, load_scenario
from nightjar_rl.experiments.fields import ExperimentError, is_int, is_number, parse_concurrency, parse_rates
from nightjar_rl.experiments.sb3_config import is_sb3_spec, parse_sb3_spec
from nightjar_rl.io import read_yaml
from nightjar_rl.policy.registry import with_drafting
from nightjar_rl.schema import ConfigError, check, check_value, declarations, option


def _checked(name: str, value, declaration, where: str):
    """`value` checked against a field declared elsewhere (one ExperimentError line naming `name`)."""
    try:
        return check_value(name, value, declaration, where)
    except ConfigError as exc:
        raise ExperimentError(str(exc)) from None


@dataclass
class PolicyEntry:
    name: str
    spec: dict | str


@dataclass
class TrainConfig:
    episodes: int = option(4, "training episodes per learner", low=0)
    rates: list[float] | None = None  # None: the evaluation rates, cycled
    concurrency: list[int] | None = None  # None: the evaluation concurrency (if any), cycled
    num_requests: int | None = option(None, "requests per training episode (null: the evaluation's)", int, low=1)
    seed: int = option(10_000, "training workloads use seeds seed, seed+1, ... (apart from evaluation seeds)", low=0)
    replicates: int = option(1, "independent trainings per learner (replicate r: workload seeds seed + r*episodes "
                                "...)", low=1)
    scenario: str | None = option(None, "scenario the learners train on, a name or path (null: the experiment's); "
                                        "evaluation stays on the experiment's", str)


EXECUTORS = ("local", "ray")


@dataclass
class ExecutorConfig:
    kind: str = option("local", "where jobs run: local | ray", choices=EXECUTORS)
    address: str | None = option(None, "ray: a running cluster's address (null: start a local instance)", str)
    workers: int | None = option(None, "ray: CPUs of the local instance (null: all)", int, low=1)


@dataclass
class ConfirmConfig:
    scenario: str  # the live scenario
    rates: list[float]
    twin: str | None = None  # its sim twin: the prediction shown beside the live numbers
    top: int = 2  # the sweep's best `top` policies (by mean throughput relative to the per-load best)
    policies: list[str] | None = None  # or these, by name
    concurrency: list[int] | None = None  # closed loop (rates then default to [inf])
    repeats: int = 3  # live runs of the same workload per cell: the measured noise
    seed: int = 0
    num_requests: int | None = None
    max_new_tokens: int | None = None
    rescale_twin: bool = False  # also serve the twin at the machine's speed now (`experiments.drift`)


@dataclass
class ExperimentConfig:
    name: str
    scenario: str
    rates: list[float]
    seeds: list[int]
    policies: list[PolicyEntry]
    num_requests: int | None = None
    max_new_tokens: int | None = None
    slo: dict = field(default_factory=lambda: {"tpot_s": 0.25, "ttft_s": None})
    train: TrainConfig = field(default_factory=TrainConfig)
    learn_during_eval: bool = False
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    base_dir: str | None = None
    concurrency: list[int] | None = None  # closed-loop sweep (None: open loop)
    goals: dict | None = None  # targets the summary checks (None: results only)
    confirm: ConfirmConfig | None = None  # live confirmation after the sweep

    def to_dict(self) -> dict:
        """The fields that determine results (saved as the run's config.yaml, compared on resume)."""
        d = asdict(self)
        d.pop("base_dir")
        d.pop("executor")
        # fields added later are left out at their defaults: older run folders stay resumable
        if d["train"]["replicates"] == 1:
            d["train"].pop("replicates")
        if d["train"]["scenario"] is None:
            d["train"].pop("scenario")
        for part in (d, d["train"]):
            if part["concurrency"] is None:
                part.pop("concurrency")
        d.pop("goals")  # reporting only: a run may be resumed with other goals
        d.pop("confirm")  # runs after the sweep, on every resume: adding one to a finished run just runs it
        return d


_TOP = {"name", "scenario", "rates", "seeds", "policies", "num_requests", "max_new_tokens", "slo", "train", "evaluate",
        "executor", "concurrency", "goals", "confirm"}
GOAL_KEYS = ("win", "low_loss", "hindsight")
_CONFIRM = {"scenario", "twin", "top", "policies", "rates", "concurrency", "repeats", "seed", "num_requests",
            "max_new_tokens", "rescale_twin"}


def executor_from_value(value, where: str = "field 'executor'") -> ExecutorConfig:
    """`local` | `ray` | {kind, address, workers} -> ExecutorConfig (ExperimentError naming `where`)."""
    if value is None:
        return ExecutorConfig()
    data = {"kind": value} if isinstance(value, str) else value
    if not isinstance(data, dict) or not set(data) <= {"kind", "address", "workers"} or data.get("kind") not in EXECUTORS:
        raise ExperimentError(f"{where} must be one of {', '.join(EXECUTORS)} or a mapping {{kind: ray, address: ADDR, "
                              f"workers: N}}, got {value!r}")
    executor = ExecutorConfig(**data)
    try:
        check(executor, where)
    except ConfigError as exc:
        raise ExperimentError(str(exc)) from None
    if executor.kind == "local" and (executor.address is not None or executor.workers is not None):
        raise ExperimentError(f"{where}: 'address' and 'workers' need kind 'ray'")
    return executor


def goals_from_value(value, fail) -> dict | None:
    """`goals:` -> {win, low_loss, hindsight} with the given ones (numbers > 0), None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= set(GOAL_KEYS) or not all(
            is_number(v) and v > 0 for v in value.values()):
        raise fail(f"field 'goals' must be a mapping with any of {', '.join(GOAL_KEYS)} (numbers > 0), got {value!r}")
    return {k: float(v) for k, v in value.items()}


def confirm_from_value(value, fail) -> ConfirmConfig | None:
    """`confirm:` -> ConfirmConfig (None when absent); `fail(msg)` makes the error."""
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= _CONFIRM:
        raise fail(f"field 'confirm' must be a mapping with {', '.join(sorted(_CONFIRM))}, got {value!r}")
    scenario, twin = value.get("scenario"), value.get("twin")
    if not isinstance(scenario, str) or not scenario:
        raise fail(f"field 'confirm.scenario' must be a live scenario name or YAML path, got {scenario!r}")
    if twin is not None and (not isinstance(twin, str) or not twin):
        raise fail(f"field 'confirm.twin' must be a sim scenario name, YAML path or null, got {twin!r}")
    concurrency = None
    if value.get("concurrency") is not None:
        concurrency = parse_concurrency(value["concurrency"], lambda m: fail(f"field 'confirm.concurrency' {m}"))
    rates = value.get("rates", ["inf"] if concurrency else None)
    rates = parse_rates(rates, concurrency is not None, lambda m: fail(f"field 'confirm.rates' {m}"))
    names = value.get("policies")
    if names is not None and (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)):
        raise fail(f"field 'confirm.policies' must be a non-empty list of policy names or null, got {names!r}")
    rescale = value.get("rescale_twin", False)
    if not isinstance(rescale, bool) or (rescale and twin is None):
        raise fail(f"field 'confirm.rescale_twin' must be true or false (true needs a twin), got {rescale!r}")
    out = ConfirmConfig(scenario, rates, twin, policies=names, concurrency=concurrency, rescale_twin=rescale)
    for key, low in (("top", 1), ("repeats", 2), ("seed", 0), ("num_requests", 1), ("max_new_tokens", 1)):
        v = value.get(key)
        if v is None:
            continue
        if not is_int(v) or v < low:
            raise fail(f"field 'confirm.{key}' must be an integer >= {low}, got {v!r}")
        setattr(out, key, v)
    return out


def experiment_from_dict(data: dict, name: str = "experiment", base_dir: str | None = None) -> ExperimentConfig:
    """Validate a mapping into an ExperimentConfig (ExperimentError naming the first bad field)."""
    if not isinstance(data, dict):
        raise ExperimentError(f"experiment {name!r}: expected a mapping of fields, got {type(data).__name__}")
    name = data.get("name", name)
    if not isinstance(name, str) or not name or "__" in name:
        raise ExperimentError(f"experiment: field 'name' must be a non-empty string without '__', got {name!r}")

    def fail(msg: str) -> ExperimentError:
        return ExperimentError(f"experiment {name!r}: {msg}")

    unknown = set(data) - _TOP
    if unknown:
        raise fail(f"unknown field(s): {', '.join(sorted(unknown))}")
    for key in ("scenario", "rates", "seeds", "policies"):
        if key not in data:
            raise fail(f"field '{key}' is required")
    scenario = data["scenario"]
    if not isinstance(scenario, str) or not scenario:
        raise fail(f"field 'scenario' must be a scenario name or YAML path, got {scenario!r}")
    concurrency = None
    if data.get("concurrency") is not None:
        concurrency = parse_concurrency(data["concurrency"], lambda m: fail(f"field 'concurrency' {m}"))
    rates = parse_rates(data["rates"], concurrency is not None, lambda m: fail(f"field 'rates' {m}"))
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(is_int(s) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise fail(f"field 'seeds' must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    scenario_fields = declarations(Scenario)  # the overrides are the scenario's fields, declared there
    for key in ("num_requests", "max_new_tokens"):
        if data.get(key) is not None:
            _checked(key, data[key], scenario_fields[key], f"experiment {name!r}")
    slo = data.get("slo", {"tpot_s": 0.25, "ttft_s": None})
    if not isinstance(slo, dict) or not set(slo) <= {"tpot_s", "ttft_s"} or not (is_number(slo.get("tpot_s")) and slo["tpot_s"] > 0):
        raise fail(f"field 'slo' must be {{tpot_s: SECONDS > 0, ttft_s: SECONDS or null}}, got {slo!r}")
    if slo.get("ttft_s") is not None and not (is_number(slo["ttft_s"]) and slo["ttft_s"] > 0):
        raise fail(f"field 'slo.ttft_s' must be a number > 0 or null, got {slo['ttft_s']!r}")
    slo = {"tpot_s": float(slo["tpot_s"]), "ttft_s": None if slo.get("ttft_s") is None else float(slo["ttft_s"])}

    raw = data["policies"]
    if not isinstance(raw, list) or not raw:
        raise fail("field 'policies' must be a non-empty list of {name, spec} entries")
    policies: list[PolicyEntry] = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"name": entry, "spec": entry}
        if not isinstance(entry, dict) or "spec" not in entry or not set(entry) <= {"name", "spec"}:
            raise fail(f"field 'policies[{i}]' must be a policy spec string or a mapping {{name, spec}}, got {entry!r}")
        spec = entry["spec"]
        if isinstance(spec, bool):
            raise fail(f"field 'policies[{i}].spec' is a boolean ({spec!r}); quote it: YAML reads off/on as booleans")
        if not isinstance(spec, (str, dict)) or not spec:
            raise fail(f"field 'policies[{i}].spec' must be a string or a mapping, got {spec!r}")
        if is_sb3_spec(spec):
            parse_sb3_spec(spec, f"experiment {name!r}: field 'policies[{i}].spec")
        label = entry.get("name") or (spec if isinstance(spec, str) else None)
        if not isinstance(label, str) or not label or "/" in label:
            raise fail(f"field 'policies[{i}].name' must be a non-empty label without '/', got {label!r}")
        policies.append(PolicyEntry(label, spec))
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise fail(f"field 'policies' has duplicate names: {sorted({n for n in names if names.count(n) > 1})}")

    t = data.get("train") or {}
    if not isinstance(t, dict) or not set(t) <= {"episodes", "rates", "concurrency", "num_requests", "seed", "replicates",
                                                 "scenario"}:
        raise fail(f"field 'train' must be a mapping with episodes, rates, concurrency, num_requests, seed, replicates, "
                   f"scenario; got {t!r}")
    train = TrainConfig(**{k: t[k] for k in ("episodes", "num_requests", "seed", "replicates", "scenario") if k in t})
    try:
        check(train, f"experiment {name!r}: field 'train'")
    except ConfigError as exc:
        raise ExperimentError(str(exc).replace("field 'train': field '", "field 'train.")) from None
    if t.get("concurrency") is not None:
        train.concurrency = parse_concurrency(t["concurrency"], lambda m: fail(f"field 'train.concurrency' {m}"))
    if t.get("rates") is not None:
        closed = (train.concurrency or concurrency) is not None
        train.rates = parse_rates(t["rates"], closed, lambda m: fail(f"field 'train.rates' {m}"))

    confirm = confirm_from_value(data.get("confirm"), fail)
    if confirm is not None and confirm.policies is not None and not set(confirm.policies) <= set(names):
        raise fail(f"field 'confirm.policies' names policies not in 'policies': "
                   f"{', '.join(sorted(set(confirm.policies) - set(names)))}")

    ev = data.get("evaluate") or {}
    if not isinstance(ev, dict) or not set(ev) <= {"learn"} or not isinstance(ev.get("learn", False), bool):
        raise fail(f"field 'evaluate' must be a mapping {{learn: true|false}}, got {ev!r}")
    return ExperimentConfig(
        name=name, scenario=scenario, rates=rates, seeds=list(seeds), policies=policies,
        num_requests=data.get("num_requests"), max_new_tokens=data.get("max_new_tokens"), slo=slo,
        train=train, learn_during_eval=ev.get("learn", False),
        executor=executor_from_value(data.get("executor"), f"experiment {name!r}: field 'executor'"), base_dir=base_dir,
        concurrency=concurrency, goals=goals_from_value(data.get("goals"), fail),
        confirm=confirm,
    )


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"experiment config not found: {path}")
    data = read_yaml(path, "experiment", ExperimentError)
    return experiment_from_dict(data if data is not None else {}, path.stem, str(path.parent))


def scenario_near(name: str, base_dir: str | None) -> Scenario:
    """A scenario by name or path, or by a path relative to `base_dir` (an experiment file's folder)."""
    try:
        return load_scenario(name)
    except ScenarioError:
        if base_dir is None or not (Path(base_dir) / name).is_file():
            raise
        return load_scenario(Path(base_dir) / name)


def resolve_scenario(cfg: ExperimentConfig) -> Scenario:
    """The experiment's scenario (by name, path, or path relative to the experiment file), with the
    experiment's workload overrides applied."""
    return _with_workload(cfg, scenario_near(cfg.scenario, cfg.base_dir))


def resolve_train_scenario(cfg: ExperimentConfig, scenario: Scenario) -> Scenario:
    """The scenario the learners train on: `train.scenario` with the experiment's workload overrides
    (as the evaluation gets them), else the experiment's `scenario`; its max_k must be the experiment
    scenario's."""
    if cfg.train.scenario is None:
        return scenario
    try:
        train = _with_workload(cfg, scenario_near(cfg.train.scenario, cfg.base_dir))
    except ScenarioError as exc:
        raise ExperimentError(f"experiment {cfg.name!r}: field 'train.scenario' {exc}") from None
    if train.max_k != scenario.max_k:
        raise ExperimentError(f"experiment {cfg.name!r}: field 'train.scenario' {train.name!r} has max_k={train.max_k}, "
                              f"the experiment's scenario {scenario.name!r} has {scenario.max_k}; they must match")
    return train


def _with_workload(cfg: ExperimentConfig, scenario: Scenario) -> Scenario:
    changes = {key: value for key, value in (("num_requests", cfg.num_requests), ("max_new_tokens", cfg.max_new_tokens))
               if value is not None}
    return scenario.replace(**changes) if changes else scenario


def resolve_spec(spec, scenario: Scenario):
    """A policy spec priced as the scenario's simulator prices a step: `profile: scenario` replaced by the
    path of the scenario's hardware profile, and for a policy that prices drafting and does not say how,
    `drafting` set to the scenario's drafter's (a draft model's passes or lookups; `with_drafting`), as
    the CLI sets it from the engine's drafter."""
    if not isinstance(spec, dict):
        return spec
    if spec.get("profile") == "scenario":
        if not scenario.profile:
            raise ValueError("'profile: scenario' needs a sim scenario with a hardware profile")
        spec = {**spec, "profile": str(resolve_data_path(scenario.profile, scenario.base_dir).resolve())}
    return with_drafting(spec, drafting_of(scenario.engine.drafter))
