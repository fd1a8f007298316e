"""Where an experiment's jobs run: in this process (`local`, the default) or as Ray tasks (`ray`).

A job is plain data: a `SweepContext` (the scenario as a mapping, the SLO, the learning flags) plus
a `TrainJob` (one learner replicate to train), an `SB3Job` (one sb3 replicate trained on the
simulator) or a `CellJob` (one policy x rate [x concurrency] x seed x
replicate cell to evaluate). Workers rebuild the scenario's backend once per process (`backend_for`), build
the policy from its spec or trained artifact, and return plain rows, so results do not depend on
where a job ran. Executors yield `(job, result)` pairs as jobs finish; the runner writes each
result atomically as it arrives (resumable) and sorts the table into the canonical cell order at
the end (identical tables from every executor).

Ray is an optional extra (`pip install "nightjar-rl[ray]"`), imported only when used. With no
address, a local Ray instance is started (`workers` CPUs); with an address, Ray connects to that
running cluster, whose nodes must have nightjar-rl installed and the scenario's data files at the
same absolute paths.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from nightjar_rl.env.backend import make_backend, resolve_data_path
from nightjar_rl.env.scenario import Scenario, scenario_from_dict
from nightjar_rl.experiments.config import ExecutorConfig
from nightjar_rl.experiments.evaluate import evaluate_cell
from nightjar_rl.experiments.fields import ExperimentError
from nightjar_rl.policy import make_policy
from nightjar_rl.policy.artifact import policy_to_dict
from nightjar_rl.serving.report import request_table
from nightjar_rl.serving.workload import WORKLOAD_SOURCES

KBB_COLUMNS = ["policy", "replicate", "rate", "seed", "batch_size", "steps", "mean_k"]


def with_concurrency(columns: list[str], closed_loop: bool) -> list[str]:
    """`columns` with `concurrency` after `rate` for a closed-loop sweep (unchanged otherwise, so open-loop
    tables keep their columns)."""
    if not closed_loop:
        return list(columns)
    i = columns.index("rate") + 1
    return [*columns[:i], "concurrency", *columns[i:]]


@dataclass(frozen=True)
class SweepContext:
    """What every job of one experiment shares (plain data, cheap to ship to workers)."""

    scenario: dict  # Scenario.to_dict() with data paths made absolute
    slo: dict
    learn_during_eval: bool = False
    run: str = ""
    experiment: str = ""


@dataclass(frozen=True)
class TrainJob:
    policy: str  # the experiment's label
    replicate: int
    spec: Any  # make_policy spec (already seeded for this replicate)
    episodes: int
    rates: tuple[float, ...] | None
    seed: int  # first training workload seed
    num_requests: int | None
    concurrency: tuple[int, ...] | None = None  # closed loop: max requests in flight, cycled per episode


@dataclass(frozen=True)
class CellJob:
    policy: str
    rate: float
    seed: int
    replicate: int = 0
    learned: bool = False
    spec: Any = field(default=None, compare=False)  # spec string/dict, or a trained artifact dict
    concurrency: int | None = None  # closed loop: max requests in flight (None: open loop)

    @property
    def key(self) -> tuple:
        return cell_key(self.policy, self.rate, self.seed, self.replicate, self.concurrency)


def cell_key(policy: str, rate, seed, replicate, concurrency=None) -> tuple:
    """The identity of an evaluation cell (a results row's, as read back from a table: NaN
    concurrency = open loop)."""
    open_loop = concurrency is None or (isinstance(concurrency, float) and math.isnan(concurrency))
    return (policy, float(rate), int(seed), int(replicate), None if open_loop else int(concurrency))


def portable_scenario(scenario: Scenario) -> dict:
    """The scenario as a mapping a worker can rebuild anywhere: trace/profile/prompt paths absolute."""
    data = scenario.to_dict()
    for key in ("trace", "profile", "datastore"):
        if data.get(key):
            data[key] = str(resolve_data_path(data[key], scenario.base_dir).resolve())
    prompts = dict(data.get("prompts") or {})
    if prompts.get("path") is not None and str(prompts["path"]).partition(":")[0] not in WORKLOAD_SOURCES:
        prompts["path"] = str(resolve_data_path(prompts["path"], scenario.base_dir).resolve())
        data["prompts"] = prompts
    arrivals = dict(data.get("arrivals") or {})
    if arrivals.get("path"):
        arrivals["path"] = str(resolve_data_path(arrivals["path"], scenario.base_dir).resolve())
        data["arrivals"] = arrivals
    return data


@lru_cache(maxsize=4)
def _backend(key: str):
    data = json.loads(key)
    scenario = scenario_from_dict(data, data.get("name", "scenario"))
    return scenario, make_backend(scenario)


def backend_for(scenario: dict) -> tuple[Scenario, Any]:
    """(Scenario, backend) for a portable scenario mapping, built once per process (a live target
    model is loaded once and shared by every job of the process)."""
    return _backend(json.dumps(scenario, sort_keys=True))


def train_job(ctx: SweepContext, job: TrainJob) -> tuple[dict, list[dict]]:
    """Train one learner replicate. Returns (artifact dict, one log row per episode)."""
    from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
    from nightjar_rl.experiments.train import train_policy

    scenario, backend = backend_for(ctx.scenario)
    policy = make_policy(job.spec, scenario.max_k)
    env = SpecDecodeEnv(scenario, backend=backend)
    log = train_policy(policy, env, job.episodes, list(job.rates) if job.rates else None, job.seed,
                       job.num_requests, progress=False, concurrency=list(job.concurrency) if job.concurrency else None)
    log.insert(0, "replicate", job.replicate)
    log.insert(0, "policy", job.policy)
    return policy_to_dict(policy), log.to_dict("records")


@dataclass(frozen=True)
class SB3Job:
    """One replicate of an sb3 entry trained on the simulator (live training stays in the runner's
    process: it shares the loaded model and its timings must not compete with other jobs)."""

    policy: str
    index: int  # the entry's position in the experiment's policies
    replicate: int
    artifact: str  # run_dir/policies/NAME[.repR].json
    config: Any  # the ExperimentConfig


def sb3_job(ctx: SweepContext, job: SB3Job) -> dict:
    """Train and export one sb3 replicate. Returns its train_sb3.csv row (the runner writes it)."""
    from nightjar_rl.experiments.sb3_train import train_entry

    scenario, backend = backend_for(ctx.scenario)
    _, row = train_entry(job.policy, job.index, job.config, scenario, backend, Path(job.artifact), job.replicate,
                         progress=False)
    return row


def cell_job(ctx: SweepContext, job: CellJob) -> tuple[dict, list[dict], list[dict]]:
    """Evaluate one cell. Returns (the results row, k-by-batch rows, per-request rows)."""
    scenario, backend = backend_for(ctx.scenario)
    policy = make_policy(job.spec, scenario.max_k)
    learn = job.learned and ctx.learn_during_eval
    if job.learned:
        policy.learning = learn
        learn = policy.learning  # an exported `mlp` policy stays False: it never learns
    cell = evaluate_cell(policy, scenario, backend, job.rate, job.seed, scenario.num_requests,
                         scenario.max_new_tokens, ctx.slo, learn=learn, concurrency=job.concurrency)
    load = {"rate": job.rate} if job.concurrency is None else {"rate": job.rate, "concurrency": job.concurrency}
    row = {"run": ctx.run, "scenario": scenario.name, "experiment": ctx.experiment, "policy": job.policy,
           "learned": job.learned, "replicate": job.replicate, **load, "seed": job.seed, **cell.summary}
    kdf = cell.k_by_batch.assign(policy=job.policy, replicate=job.replicate, **load, seed=job.seed)
    keys = {"policy": job.policy, "replicate": job.replicate, **load, "seed": job.seed}
    reqs = request_table(cell.serve_result, backend.prompt_pool.family_of())
    req_rows = [{**keys, **r} for r in reqs.to_dict("records")]
    return row, kdf[with_concurrency(KBB_COLUMNS, job.concurrency is not None)].to_dict("records"), req_rows


class LocalExecutor:
    """Runs jobs one after another in this process."""

    name = "local"

    def map(self, fn: Callable, ctx: SweepContext, jobs: Iterable) -> Iterator[tuple[Any, Any]]:
        for job in jobs:
            yield job, fn(ctx, job)

    def close(self) -> None:
        pass


def import_ray():
    """The `ray` module, or ExperimentError with the install line when it is missing."""
    try:
        import ray
    except ImportError:
        raise ExperimentError('executor ray needs Ray: pip install "nightjar-rl[ray]" (or pip install ray)') from None
    return ray


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def run_chunk(fn: Callable, ctx: SweepContext, jobs: list) -> list:
    """Run several jobs in one worker task; results in job order."""
    return [fn(ctx, job) for job in jobs]


class RayExecutor:
    """Runs jobs as Ray tasks (one CPU each, several jobs per task) and yields them as they finish."""

    name = "ray"
    max_chunk = 8

    def __init__(self, address: str | None = None, workers: int | None = None):
        self.ray = import_ray()
        self.address, self.workers = address, workers
        self._started = False
        if not self.ray.is_initialized():
            kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if address is None:
                path = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p)
                kwargs.update(num_cpus=workers, runtime_env={"env_vars": {"PYTHONPATH": path}})
            try:
                self.ray.init(address=address, **kwargs)
            except Exception as exc:  # noqa: BLE001 (Ray raises many kinds; report one line)
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise ExperimentError(f"executor ray: could not start {where}: "
                                      f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                                      ) from None
            self._started = True
        self._remote: dict = {}

    def map(self, fn: Callable, ctx: SweepContext, jobs: Iterable) -> Iterator[tuple[Any, Any]]:
        """Jobs go out in chunks (about 4 per CPU, so a task's overhead is shared by several cells)
        and come back, job by job, as their chunk finishes."""
        ray, jobs = self.ray, list(jobs)
        if not jobs:
            return
        remote, ctx_ref = self._remote_for(run_chunk), ray.put(ctx)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = max(1, min(self.max_chunk, len(jobs) // (4 * cpus)))
        pending = {remote.remote(fn, ctx_ref, jobs[i:i + size]): jobs[i:i + size] for i in range(0, len(jobs), size)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    chunk = pending.pop(ref)
                    yield from zip(chunk, ray.get(ref))
        finally:
            for ref in pending:
                ray.cancel(ref)

    def _remote_for(self, fn: Callable):
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1)(fn)
        return self._remote[fn]

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_executor(cfg: ExecutorConfig) -> LocalExecutor | RayExecutor:
    """The executor an experiment config names."""
    if cfg.kind == "ray":
        return RayExecutor(cfg.address, cfg.workers)
    return LocalExecutor()
