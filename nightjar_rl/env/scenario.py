"""Scenarios: the data that defines an env (model pair, drafter, prompts, arrivals, horizon, reward).

A scenario is a YAML file in `envs/` (or a mapping). Every field is validated at load time and a bad
one raises `ScenarioError` with one line naming the field. Fields (defaults in `Scenario`):

    name            str    scenario name (defaults to the file stem)
    model           str    target: smollm2-135m | tiny-random[-SEED] | HF name/path
    drafter         str    none | ngram | draft | sssd (see nightjar_rl.stack.DRAFTERS)
    decoder         str    standard | parallel (see nightjar_rl.stack.DECODERS)
    datastore       str    sssd drafter: datastore .npz (null: none)
    draft           str    draft model for drafter=draft (HF name/path, tiny-random-N, early-exit:L)
    dtype, device   str    float32 (exact greedy) | bfloat16; device null = cuda if present, else cpu
    threads         int    torch CPU threads (null: torch's choice)
    max_batch_size  int    engine slots
    max_seq_len     int    context per request
    max_k           int    largest speculation length; actions are 0..max_k (0 = off)
    prompts         map    {path: bundled | FILE.jsonl, families: [grounded, code, chat]}
    max_prompt_tokens int  keep only the last N prompt tokens (null: whole prompt)
    max_new_tokens  int    output budget per request
    num_requests    int    requests per episode (a cap for piecewise/trace arrivals)
    arrivals        map    {kind: poisson, rate: R} | {kind: piecewise, schedule: [[secs, rate], ...]}
                           | {kind: trace, path: FILE}
    max_concurrency int    closed loop: at most this many requests in flight, each sent when its arrival
                           has passed and a slot is free (vLLM's --max-concurrency); null: open loop
    horizon         map    {steps: N} and/or {seconds: S} of serving clock (truncation); {} = none
    reward          str    throughput | decode_throughput | goodput | latency
    reward_kwargs   map    extra arguments of the reward (goodput: tpot_slo_s; any: per_row, see rewards.py)
    ngram_max/min   int    n-gram drafter window
    backend         str    live (the real engine; default) | sim (SimEngine: trace + profile, no model)
    trace           str    sim: trace .npz (`nightjar-rl trace record`), relative to the scenario file
    profile         str    sim: hardware profile JSON (`nightjar-rl profile`, `--roofline`)
    synthetic_acceptance map  sim: {rates: [per-position acceptance], heterogeneity: x} replaces the
                           trace's acceptance with a synthetic draft model's (see nightjar_rl.sim.engine)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nightjar_rl.serving.arrivals import ArrivalProcess, arrivals_from_dict
from nightjar_rl.serving.workload import WorkloadError
from nightjar_rl.stack import DECODERS, DRAFTERS, EngineConfig

BACKENDS = ("live", "sim")


class ScenarioError(ValueError):
    """A scenario that cannot be used (message names the offending field)."""


@dataclass
class Scenario:
    name: str = "scenario"
    description: str = ""
    model: str = "smollm2-135m"
    drafter: str = "ngram"
    draft: str | None = None
    decoder: str = "standard"
    datastore: str | None = None
    dtype: str = "float32"
    device: str | None = None
    threads: int | None = None
    max_batch_size: int = 16
    max_seq_len: int = 1024
    max_k: int = 8
    prompts: dict = field(default_factory=lambda: {"path": "bundled", "families": None})
    max_prompt_tokens: int | None = None
    max_new_tokens: int = 64
    num_requests: int = 32
    arrivals: dict = field(default_factory=lambda: {"kind": "poisson", "rate": 1.0})
    max_concurrency: int | None = None
    horizon: dict = field(default_factory=dict)
    reward: str = "throughput"
    reward_kwargs: dict = field(default_factory=dict)
    ngram_max: int = 3
    ngram_min: int = 1
    backend: str = "live"
    trace: str | None = None
    profile: str | None = None
    synthetic_acceptance: dict | None = None
    base_dir: str | None = None  # folder the scenario file was read from (resolves relative paths)

    # ---- derived objects --------------------------------------------------------------------
    def engine_config(self, seed: int = 0) -> EngineConfig:
        return EngineConfig(
            model=self.model, drafter=self.drafter, draft=self.draft, dtype=self.dtype, device=self.device,
            max_batch_size=self.max_batch_size, max_seq_len=self.max_seq_len, max_speculation=self.max_k,
            ngram_max=self.ngram_max, ngram_min=self.ngram_min, seed=seed, threads=self.threads,
            decoder=self.decoder, extra={"datastore": self.datastore} if self.datastore else {},
        )

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
        """A validated copy with some fields changed."""
        return validate_scenario(dataclasses.replace(self, **changes))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("base_dir")
        return d


_FIELDS = {f.name for f in dataclasses.fields(Scenario)} - {"base_dir"}
_POSITIVE_INTS = ("max_batch_size", "max_seq_len", "max_new_tokens", "num_requests", "ngram_max", "ngram_min")


def _fail(name: str, msg: str) -> ScenarioError:
    return ScenarioError(f"scenario {name!r}: {msg}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_scenario(s: Scenario) -> Scenario:
    """Check every field; raise ScenarioError naming the first bad one. Returns `s`."""
    from nightjar_rl.contracts.rewards import REWARDS  # local: rewards import nothing from here

    n = s.name
    for key in ("name", "model", "drafter", "decoder", "dtype", "reward", "backend"):
        if not isinstance(getattr(s, key), str) or not getattr(s, key):
            raise _fail(n, f"field '{key}' must be a non-empty string, got {getattr(s, key)!r}")
    if s.drafter not in DRAFTERS:
        raise _fail(n, f"field 'drafter' must be one of {', '.join(DRAFTERS)}, got {s.drafter!r}")
    if s.decoder not in DECODERS:
        raise _fail(n, f"field 'decoder' must be one of {', '.join(DECODERS)}, got {s.decoder!r}")
    if s.datastore is not None and (not isinstance(s.datastore, str) or not s.datastore):
        raise _fail(n, f"field 'datastore' must be a file path or null, got {s.datastore!r}")
    if s.drafter == "draft" and not (isinstance(s.draft, str) and s.draft):
        raise _fail(n, "field 'draft' is required when drafter is 'draft' (a model name or early-exit:LAYERS)")
    if s.dtype not in ("float32", "bfloat16", "float16"):
        raise _fail(n, f"field 'dtype' must be float32, bfloat16 or float16, got {s.dtype!r}")
    for key in _POSITIVE_INTS:
        if not _is_int(getattr(s, key)) or getattr(s, key) < 1:
            raise _fail(n, f"field '{key}' must be an integer >= 1, got {getattr(s, key)!r}")
    if not _is_int(s.max_k) or s.max_k < 0:
        raise _fail(n, f"field 'max_k' must be an integer >= 0, got {s.max_k!r}")
    if s.ngram_min > s.ngram_max:
        raise _fail(n, "field 'ngram_min' must be <= ngram_max")
    for key in ("threads", "max_prompt_tokens", "max_concurrency"):
        v = getattr(s, key)
        if v is not None and (not _is_int(v) or v < 1):
            raise _fail(n, f"field '{key}' must be an integer >= 1 or null, got {v!r}")
    if s.device is not None and not isinstance(s.device, str):
        raise _fail(n, f"field 'device' must be a string or null, got {s.device!r}")
    if s.max_new_tokens >= s.max_seq_len:
        raise _fail(n, "field 'max_new_tokens' must be smaller than max_seq_len")
    if not isinstance(s.prompts, dict) or not set(s.prompts) <= {"path", "families"}:
        raise _fail(n, "field 'prompts' must be a mapping with 'path' and optional 'families'")
    path, fams = s.prompts.get("path", "bundled"), s.prompts.get("families")
    if not isinstance(path, str) or not path:
        raise _fail(n, f"field 'prompts.path' must be 'bundled' or a JSONL file, got {path!r}")
    if fams is not None and (not isinstance(fams, list) or not all(isinstance(f, str) for f in fams) or not fams):
        raise _fail(n, f"field 'prompts.families' must be a non-empty list of names, got {fams!r}")
    if not isinstance(s.horizon, dict) or not set(s.horizon) <= {"steps", "seconds"}:
        raise _fail(n, f"field 'horizon' must be a mapping with 'steps' and/or 'seconds', got {s.horizon!r}")
    steps, secs = s.horizon.get("steps"), s.horizon.get("seconds")
    if steps is not None and (not _is_int(steps) or steps < 1):
        raise _fail(n, f"field 'horizon.steps' must be an integer >= 1, got {steps!r}")
    if secs is not None and (not isinstance(secs, (int, float)) or isinstance(secs, bool)
                             or not (secs > 0 and math.isfinite(secs))):
        raise _fail(n, f"field 'horizon.seconds' must be a number > 0, got {secs!r}")
    if s.reward not in REWARDS:
        raise _fail(n, f"field 'reward' must be one of {', '.join(REWARDS)}, got {s.reward!r}")
    if not isinstance(s.reward_kwargs, dict):
        raise _fail(n, f"field 'reward_kwargs' must be a mapping, got {s.reward_kwargs!r}")
    try:
        REWARDS[s.reward](**s.reward_kwargs)
    except TypeError as exc:
        raise _fail(n, f"field 'reward_kwargs' does not fit reward {s.reward!r}: {exc}") from None
    if s.backend not in BACKENDS:
        raise _fail(n, f"field 'backend' must be one of {', '.join(BACKENDS)}, got {s.backend!r}")
    for key in ("trace", "profile"):
        v = getattr(s, key)
        if v is not None and (not isinstance(v, str) or not v):
            raise _fail(n, f"field '{key}' must be a file path or null, got {v!r}")
        if s.backend == "sim" and v is None:
            raise _fail(n, f"field '{key}' is required when backend is 'sim'")
    if s.synthetic_acceptance is not None:
        from nightjar_rl.sim.engine import SyntheticAcceptance  # local: the sim imports the engine

        if s.backend != "sim":
            raise _fail(n, "field 'synthetic_acceptance' needs backend 'sim'")
        try:
            SyntheticAcceptance.from_dict(s.synthetic_acceptance if isinstance(s.synthetic_acceptance, dict) else {})
        except (TypeError, ValueError) as exc:
            raise _fail(n, f"field 'synthetic_acceptance': {exc}") from None
    s.arrival_process()  # validates the arrivals mapping
    return s


def scenario_from_dict(data: dict, name: str = "scenario", base_dir: str | Path | None = None) -> Scenario:
    """Build and validate a Scenario from a mapping (unknown fields are errors)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"scenario {name!r}: expected a mapping of fields, got {type(data).__name__}")
    unknown = set(data) - _FIELDS
    if unknown:
        raise _fail(name, f"unknown field(s): {', '.join(sorted(unknown))}")
    values = dict(data)
    values.setdefault("name", name)
    return validate_scenario(Scenario(**values, base_dir=str(base_dir) if base_dir else None))


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
    raise ScenarioError(f"unknown scenario {str(ref)!r}; known: {', '.join(known) or 'none'}")


def load_scenario(ref: str | Path | dict | Scenario) -> Scenario:
    """A Scenario from a name in envs/, a YAML path, a mapping, or a Scenario (validated)."""
    if isinstance(ref, Scenario):
        return validate_scenario(ref)
    if isinstance(ref, dict):
        return scenario_from_dict(ref, str(ref.get("name", "scenario")))
    path = resolve_scenario_path(ref)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return scenario_from_dict(data if data is not None else {}, path.stem, path.parent)
