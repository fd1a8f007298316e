"""Scenarios: the data that defines an env, composed of typed parts declared once
(`nightjar_rl.schema`): the engine (`EngineConfig`: model pair, drafter, budgets, sampling), the
workload (prompts, arrivals), the env (horizon, reward) and the simulator backend.

A scenario is a YAML file in `envs/` (or a mapping). The engine's fields sit at the top level of the
file beside the others (`model: tiny-random`, `drafter: ngram`, `max_speculation: 4`; `max_k` is
accepted as another name for `max_speculation`). Every field is validated at load time and a bad one
raises `ScenarioError` with one line naming the field. The engine fields are `EngineConfig`'s (see
nightjar_rl/engine_config.py, or `nightjar-rl bench --help`); the others, with their defaults, are
declared on `Scenario` below. `Scenario.max_k` is the engine's max_speculation: actions are
0..max_k (0 = off).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from nightjar_rl.engine_config import EngineConfig
from nightjar_rl.hardware import ProfileError, scale_by_rows
from nightjar_rl.io import read_yaml
from nightjar_rl.schema import ConfigError, check, declarations, option
from nightjar_rl.serving.arrivals import ArrivalProcess, arrivals_from_dict
from nightjar_rl.serving.workload import WorkloadError

BACKENDS = ("live", "sim", "vllm")
ENGINE_FIELDS = tuple(declarations(EngineConfig))
ALIASES = {"max_k": "max_speculation"}  # older scenario files


class ScenarioError(ConfigError):
    """A scenario that cannot be used (message names the offending field)."""


@dataclass
class Scenario:
    name: str = option("scenario", "scenario name (defaults to the file stem)")
    description: str = ""
    engine: EngineConfig = field(default_factory=EngineConfig)
    # ---- workload ----
    prompts: dict = option({"path": "bundled", "families": None},
                           "{path: bundled | FILE.jsonl | sharegpt | humaneval | mix:..., families: [grounded, code, "
                           "chat] or null, sample: N and seed: S (how many a sampling source such as sharegpt draws)}")
    max_prompt_tokens: int | None = option(None, "keep only the last N prompt tokens (null: whole prompt)", int, low=1)
    max_new_tokens: int = option(64, "output budget per request", low=1)
    num_requests: int = option(32, "requests per episode (a cap for piecewise/trace arrivals)", low=1)
    arrivals: dict = option({"kind": "poisson", "rate": 1.0}, "{kind: poisson, rate: R} | {kind: piecewise, "
                            "schedule: [[secs, rate], ...]} | {kind: trace, path: FILE}")
    max_concurrency: int | None = option(None, "closed loop: at most this many requests in flight, each sent when "
                                         "its arrival has passed and a slot is free (vLLM's --max-concurrency); "
                                         "null: open loop", int, low=1)
    # ---- env ----
    horizon: dict = option({}, "{steps: N} and/or {seconds: S} of serving clock (truncation); {} = none")
    reward: str = option("throughput", "throughput | decode_throughput | goodput | latency")
    reward_kwargs: dict = option({}, "extra arguments of the reward (goodput: tpot_slo_s; any: per_row)")
    # ---- simulator ----
    backend: str = option("live", "live (the real engine) | sim (SimEngine: trace + profile, no model) | vllm "
                          "(vLLM's engine stepped in-process; needs vLLM)",
                          choices=BACKENDS)
    trace: str | None = option(None, "sim: trace .npz (`nightjar-rl trace record`), relative to the scenario file", str)
    profile: str | None = option(None, "sim: hardware profile JSON (`nightjar-rl profile`, `--roofline`)", str)
    profile_scale: float = option(1.0, "sim: every time the profile prices multiplied by this (the machine's speed "
                                  "ratio now / when profiled: `nightjar-rl profile --rescale`, a confirmation's "
                                  "`rescale_twin`; with profile_scale_keeps_host, only the forwards)", above=0.0)
    profile_scale_keeps_host: bool = option(False, "sim: profile_scale multiplies only the model forwards and keeps "
                                            "the profile's host work at its price (`HardwareProfile.scaled_forwards`; "
                                            "needs a speed_anchor with a one-token-per-row shape)")
    profile_scale_by_rows: dict | None = option(None, "sim, with profile_scale_keeps_host: the forwards' multiplier "
                                                "per batch size ({rows: ratio}, the speed anchor's one-token "
                                                "shapes: `speed_ratio_by_rows`), interpolated over rows and "
                                                "clamped; profile_scale then multiplies prefill and draft passes", dict)
    synthetic_acceptance: dict | None = option(None, "sim: {rates: [per-position acceptance], heterogeneity: x, "
                                               "confidence_concentration: kappa} replaces the trace's acceptance with a synthetic "
                                               "drafter's, priced as the scenario's drafter prices drafting (draft "
                                               "model or lookups); with confidence_concentration, the drafter states a calibrated "
                                               "confidence per proposed token (Beta concentration kappa)", dict)
    base_dir: str | None = None  # folder the scenario file was read from (resolves relative paths)

    # ---- derived objects --------------------------------------------------------------------
    @property
    def max_k(self) -> int:
        """The largest speculation length (the engine's max_speculation): actions are 0..max_k."""
        return self.engine.max_speculation

    def engine_config(self, seed: int = 0) -> EngineConfig:
        return dataclasses.replace(self.engine, seed=seed)

    def arrival_process(self) -> ArrivalProcess:
        try:
            return arrivals_from_dict(self.arrivals, self.base_dir)
        except WorkloadError as exc:
            raise ScenarioError(f"scenario {self.name!r}: {exc}") from None

    @property
    def horizon_steps(self) -> int | None:
        return self.horizon.get("steps")

    @property
    def horizon_seconds(self) -> float | None:
        return self.horizon.get("seconds")

    def replace(self, **changes) -> Scenario:
        """A validated copy with some fields changed (engine fields by their own names too)."""
        engine = {ALIASES.get(k, k): v for k, v in changes.items() if ALIASES.get(k, k) in ENGINE_FIELDS}
        rest = {k: v for k, v in changes.items() if ALIASES.get(k, k) not in ENGINE_FIELDS}
        if engine:
            rest["engine"] = dataclasses.replace(self.engine, **engine)
        return validate_scenario(dataclasses.replace(self, **rest))

    def to_dict(self) -> dict:
        """The flat mapping a scenario file holds (engine fields at the top level)."""
        out = {"name": self.name, "description": self.description}
        out.update({name: getattr(self.engine, name) for name in ENGINE_FIELDS})
        if self.engine.extra:
            out["extra"] = dict(self.engine.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                    if f.name not in ("name", "description", "engine", "base_dir")})
        return out


def validate_scenario(s: Scenario) -> Scenario:
    """Check every field; raise ScenarioError naming the first bad one. Returns `s`."""
    from nightjar_rl.contracts.rewards import REWARDS  # local: rewards import nothing from here

    where = f"scenario {s.name!r}"
    try:
        check(s, where)
        s.engine.validate(where)
    except ScenarioError:
        raise
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    n = s.name
    if s.max_new_tokens >= s.engine.max_seq_len:
        raise _fail(n, "field 'max_new_tokens' must be smaller than max_seq_len")
    if not set(s.prompts) <= {"path", "families", "sample", "seed"}:
        raise _fail(n, "field 'prompts' must be a mapping with 'path' and optional 'families', 'sample', 'seed'")
    for key, low in (("sample", 1), ("seed", 0)):
        value = s.prompts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise _fail(n, f"field 'prompts.{key}' must be an integer >= {low}, got {value!r}")
    path, fams = s.prompts.get("path", "bundled"), s.prompts.get("families")
    if not isinstance(path, str) or not path:
        raise _fail(n, f"field 'prompts.path' must be a workload (bundled, a .jsonl file, NAME[:ARG]), got {path!r}")
    if fams is not None and (not isinstance(fams, list) or not all(isinstance(f, str) for f in fams) or not fams):
        raise _fail(n, f"field 'prompts.families' must be a non-empty list of names, got {fams!r}")
    if not set(s.horizon) <= {"steps", "seconds"}:
        raise _fail(n, f"field 'horizon' must be a mapping with 'steps' and/or 'seconds', got {s.horizon!r}")
    try:
        check_value_in("horizon.steps", s.horizon.get("steps"), int, where, low=1)
        check_value_in("horizon.seconds", s.horizon.get("seconds"), float, where, above=0)
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    if s.reward not in REWARDS:
        raise _fail(n, f"field 'reward' must be one of {', '.join(REWARDS)}, got {s.reward!r}")
    try:
        REWARDS[s.reward](**s.reward_kwargs)
    except TypeError as exc:
        raise _fail(n, f"field 'reward_kwargs' does not fit reward {s.reward!r}: {exc}") from None
    for key in ("trace", "profile"):
        if s.backend == "sim" and getattr(s, key) is None:
            raise _fail(n, f"field '{key}' is required when backend is 'sim'")
    for key, default in (("profile_scale", 1.0), ("profile_scale_keeps_host", False), ("profile_scale_by_rows", None)):
        if getattr(s, key) != default and s.backend != "sim":
            raise _fail(n, f"field '{key}' needs backend 'sim'")
    if s.profile_scale_by_rows is not None:
        by_rows = s.profile_scale_by_rows
        if not s.profile_scale_keeps_host:
            raise _fail(n, "field 'profile_scale_by_rows' needs profile_scale_keeps_host: true")
        try:
            s.profile_scale_by_rows = scale_by_rows(by_rows)  # JSON's string keys become row counts
        except ProfileError:
            raise _fail(n, f"field 'profile_scale_by_rows' must map row counts (integers >= 1, each once) to positive "
                           f"numbers, got {by_rows!r}") from None
    if s.synthetic_acceptance is not None:
        from nightjar_rl.sim.engine import SyntheticAcceptance

        if s.backend != "sim":
            raise _fail(n, "field 'synthetic_acceptance' needs backend 'sim'")
        try:
            SyntheticAcceptance.from_dict(s.synthetic_acceptance, s.engine.drafter)
        except (TypeError, ValueError) as exc:
            raise _fail(n, f"field 'synthetic_acceptance': {exc}") from None
    s.arrival_process()  # validates the arrivals mapping
    return s


def check_value_in(name: str, value, kind: type, where: str, **bounds) -> None:
    """Check one optional nested value (e.g. horizon.steps) against a declaration made on the spot."""
    from nightjar_rl.schema import Declaration, check_value

    check_value(name, value, Declaration(kind, name, nullable=True, **bounds), where)


def _fail(name: str, msg: str) -> ScenarioError:
    return ScenarioError(f"scenario {name!r}: {msg}")


def scenario_from_dict(data: dict, name: str = "scenario", base_dir: str | Path | None = None) -> Scenario:
    """Build and validate a Scenario from a flat mapping (engine fields at the top level; unknown
    fields are errors)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"scenario {name!r}: expected a mapping of fields, got {type(data).__name__}")
    name = str(data.get("name", name))
    known = set(ENGINE_FIELDS) | set(ALIASES) | {"extra"} | {
        f.name for f in dataclasses.fields(Scenario) if f.name not in ("engine", "base_dir")}
    unknown = set(data) - known
    if unknown:
        raise _fail(name, f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    for alias, canonical in ALIASES.items():
        if alias in data and canonical in data:
            raise _fail(name, f"fields '{alias}' and '{canonical}' are the same setting: give one")
    values = {ALIASES.get(k, k): v for k, v in data.items()}
    engine = {k: values.pop(k) for k in list(values) if k in ENGINE_FIELDS or k == "extra"}
    if engine.get("extra") is not None and not isinstance(engine["extra"], dict):
        raise _fail(name, f"field 'extra' must be a mapping, got {engine['extra']!r}")
    values["name"] = name
    scenario = Scenario(**values, engine=EngineConfig(**engine), base_dir=str(base_dir) if base_dir else None)
    return validate_scenario(scenario)


def scenario_search_dirs() -> list[Path]:
    """Where scenario names are looked up: ./envs, then the repository's envs/ folder."""
    repo_envs = Path(__file__).resolve().parents[2] / "envs"
    return [Path.cwd() / "envs", repo_envs]


def resolve_scenario_path(ref: str | Path) -> Path:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ScenarioError(f"scenario file not found: {path}")
        return path
    for folder in scenario_search_dirs():
        for suffix in (".yaml", ".yml"):
            cand = folder / f"{ref}{suffix}"
            if cand.is_file():
                return cand
    known = sorted({p.stem for d in scenario_search_dirs() if d.is_dir() for p in d.glob("*.y*ml")})
    close = difflib.get_close_matches(str(ref), known, n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise ScenarioError(f"unknown scenario {str(ref)!r}; {hint}known: {', '.join(known) or 'none'}")


def load_scenario(ref: str | Path | dict | Scenario) -> Scenario:
    """A Scenario from a name in envs/, a YAML path, a mapping, or a Scenario (validated)."""
    if isinstance(ref, Scenario):
        return validate_scenario(ref)
    if isinstance(ref, dict):
        return scenario_from_dict(ref, str(ref.get("name", "scenario")))
    path = resolve_scenario_path(ref)
    data = read_yaml(path, "scenario", ScenarioError)
    if data is None:
        raise ScenarioError(f"scenario {path}: the file is empty (write at least the fields that differ from the "
                            f"defaults, e.g. model and drafter)")
    return scenario_from_dict(data, path.stem, path.parent)
