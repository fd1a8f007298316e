"""The experiment pipeline: train the learners on the scenario's env (live engine or simulator),
evaluate every policy on the same seeded workloads across the rate sweep, write tables and plots
under runs/<run name>/.

Run folder:
    config.yaml          the validated experiment config (compared on --resume)
    policies/NAME.json   trained learners (reused on resume)
    train.csv            one row per training episode
    results.csv          one row per policy x rate x seed (appended atomically as cells finish)
    k_by_batch.csv       decode steps and mean k per batch size, per cell
    summary.txt          the terminal summary
    throughput_vs_rate.png, latency_vs_rate.png, k_by_batch.png
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from tqdm.auto import tqdm

from nightjar_rl.analysis import format_summary, plot_k_by_batch, plot_metric_vs_rate
from nightjar_rl.analysis.tables import best_fixed_comparison
from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.recorder import append_rows, read_table, write_table
from nightjar_rl.env.scenario import Scenario, ScenarioError, load_scenario
from nightjar_rl.env.spec_decode_env import SpecDecodeEnv
from nightjar_rl.experiments.config import ExperimentConfig, ExperimentError
from nightjar_rl.experiments.evaluate import evaluate_cell
from nightjar_rl.experiments.train import train_policy
from nightjar_rl.io import atomic_write_text
from nightjar_rl.policy import load_policy, make_policy, save_policy

CELL_KEYS = ["policy", "rate", "seed"]
TABLE_COLUMNS = [
    "run", "scenario", "experiment", "policy", "learned", "rate", "seed", "requests", "output_tokens", "duration_s",
    "throughput_tok_s", "goodput_tok_s", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tpot_p95_s", "e2e_p50_s",
    "e2e_p95_s", "mean_k", "frac_k0", "acceptance_rate", "mean_accepted_length", "mean_batch", "steps",
]


@dataclass
class ExperimentResult:
    run_dir: Path
    results: pd.DataFrame
    k_by_batch: pd.DataFrame
    train: pd.DataFrame
    summary: str


def resolve_scenario(cfg: ExperimentConfig) -> Scenario:
    """The experiment's scenario (by name, path, or path relative to the experiment file), with the
    experiment's workload overrides applied."""
    try:
        scenario = load_scenario(cfg.scenario)
    except ScenarioError:
        if cfg.base_dir is None or not (Path(cfg.base_dir) / cfg.scenario).is_file():
            raise
        scenario = load_scenario(Path(cfg.base_dir) / cfg.scenario)
    changes = {}
    if cfg.num_requests is not None:
        changes["num_requests"] = cfg.num_requests
    if cfg.max_new_tokens is not None:
        changes["max_new_tokens"] = cfg.max_new_tokens
    return scenario.replace(**changes) if changes else scenario


def run_name(scenario: str, cfg: ExperimentConfig, stamp: int | None = None) -> str:
    """cleanrl-style: scenario__experiment__seed__time."""
    return f"{scenario}__{cfg.name}__{cfg.seeds[0]}__{int(stamp if stamp is not None else time.time())}"


def _prepare_run_dir(cfg: ExperimentConfig, scenario: Scenario, out_dir: str | Path, resume: str | Path | None) -> Path:
    saved = cfg.to_dict()
    if resume is not None:
        run_dir = Path(resume)
        config_file = run_dir / "config.yaml"
        if not config_file.is_file():
            raise ExperimentError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        previous = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        if previous != saved:
            changed = sorted(k for k in set(previous) | set(saved) if previous.get(k) != saved.get(k))
            raise ExperimentError(f"--resume {run_dir}: the config differs from the run's config.yaml in "
                                  f"field(s) {', '.join(changed)}; start a new run instead")
        return run_dir
    run_dir = Path(out_dir) / run_name(scenario.name, cfg)
    run_dir.mkdir(parents=True, exist_ok=False)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
    return run_dir


def build_policies(cfg: ExperimentConfig, max_k: int) -> dict:
    """Every configured policy, freshly built (a bad spec raises ExperimentError naming the entry)."""
    policies = {}
    for entry in cfg.policies:
        try:
            policies[entry.name] = make_policy(entry.spec, max_k)
        except ValueError as exc:
            raise ExperimentError(f"experiment {cfg.name!r}: field 'policies' entry {entry.name!r}: {exc}") from None
    return policies


def _trained_policies(cfg: ExperimentConfig, scenario: Scenario, backend, run_dir: Path, progress: bool):
    """Build every policy; train the learners (or load them from a previous run of this folder)."""
    policies, learned = build_policies(cfg, scenario.max_k), set()
    env = None
    for entry in cfg.policies:
        policy = policies[entry.name]
        if getattr(policy, "learning", False):
            learned.add(entry.name)
            path = run_dir / "policies" / f"{entry.name}.json"
            if path.is_file():
                policy = load_policy(path)
            else:
                env = env or SpecDecodeEnv(scenario, backend=backend)
                log = train_policy(policy, env, cfg.train.episodes, cfg.train.rates or cfg.rates, cfg.train.seed,
                                   cfg.train.num_requests, progress=progress, desc=f"train {entry.name}")
                log.insert(0, "policy", entry.name)
                append_rows(run_dir / "train.csv", log)
                save_policy(policy, path)
        policies[entry.name] = policy
    return policies, learned


def _finished_cells(run_dir: Path) -> set[tuple]:
    path = run_dir / "results.csv"
    if not path.is_file():
        return set()
    done = read_table(path)
    return {(p, float(r), int(s)) for p, r, s in done[CELL_KEYS].itertuples(index=False)}


def write_report(run_dir: Path, results: pd.DataFrame, kdf: pd.DataFrame, learned: set[str],
                 fixed: list[str] | None = None) -> str:
    """Summary text and the PNG plots of a run folder. Returns the summary. With `fixed` (names of
    fixed-k policies), each learned policy is also compared with the best fixed k."""
    import matplotlib.pyplot as plt

    summary = format_summary(results)
    for name in sorted(learned):
        if fixed and name in set(results["policy"]):
            table = best_fixed_comparison(results, name, fixed)
            summary += f"\n\n{name} vs fixed k (throughput ratios; > 1 = {name} faster):\n" + table.to_string(
                float_format=lambda v: f"{v:.3f}")
    atomic_write_text(run_dir / "summary.txt", summary + "\n")
    figs = {
        "throughput_vs_rate.png": plot_metric_vs_rate(results, "throughput_tok_s", "output tokens/s"),
        "latency_vs_rate.png": plot_metric_vs_rate(results, "e2e_p50_s", "end-to-end latency p50 (s)", logy=True),
    }
    chosen = kdf[kdf["policy"].isin(learned)] if learned else kdf
    if len(chosen):
        figs["k_by_batch.png"] = plot_k_by_batch(chosen, "k chosen by batch size" + (" (learned)" if learned else ""))
    for name, fig in figs.items():
        tmp = run_dir / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110)
        tmp.replace(run_dir / name)
        plt.close(fig)
    return summary


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path = "runs", resume: str | Path | None = None,
                   progress: bool = True) -> ExperimentResult:
    """Train, evaluate the sweep (skipping finished cells when resuming), write tables and plots."""
    scenario = resolve_scenario(cfg)
    build_policies(cfg, scenario.max_k)  # fail on bad specs before creating the run folder
    run_dir = _prepare_run_dir(cfg, scenario, out_dir, resume)
    backend = make_backend(scenario)  # a live target is loaded once, shared by all cells
    policies, learned = _trained_policies(cfg, scenario, backend, run_dir, progress)
    done = _finished_cells(run_dir)
    cells = [(name, rate, seed) for rate in cfg.rates for seed in cfg.seeds for name in policies
             if (name, rate, seed) not in done]
    bar = tqdm(cells, desc=f"evaluate {cfg.name}", unit="cell", disable=not progress)
    for name, rate, seed in bar:
        bar.set_postfix_str(f"{name} @ {rate:g}/s seed {seed}")
        policy = policies[name]
        snapshot = None
        if name in learned:
            snapshot = policy.state()  # every cell starts from the trained state
            policy.learning = cfg.learn_during_eval
        cell = evaluate_cell(policy, scenario, backend, rate, seed, scenario.num_requests,
                             scenario.max_new_tokens, cfg.slo, learn=name in learned and cfg.learn_during_eval)
        if snapshot is not None:
            policy.load_state(snapshot)
        row = {"run": run_dir.name, "scenario": scenario.name, "experiment": cfg.name, "policy": name,
               "learned": name in learned, "rate": rate, "seed": seed, **cell.summary}
        kdf = cell.k_by_batch.assign(policy=name, rate=rate, seed=seed)
        append_rows(run_dir / "k_by_batch.csv", kdf[["policy", "rate", "seed", "batch_size", "steps", "mean_k"]])
        append_rows(run_dir / "results.csv", pd.DataFrame([{c: row.get(c) for c in TABLE_COLUMNS}]))
    bar.close()
    results = read_table(run_dir / "results.csv")
    kdf = read_table(run_dir / "k_by_batch.csv").drop_duplicates(
        ["policy", "rate", "seed", "batch_size"], keep="last")
    write_table(kdf, run_dir / "k_by_batch.csv")
    train_path = run_dir / "train.csv"
    train = read_table(train_path) if train_path.is_file() else pd.DataFrame()
    fixed = [name for name, p in policies.items() if p.type_name == "fixed"]
    summary = write_report(run_dir, results, kdf, learned, fixed)
    return ExperimentResult(run_dir, results, kdf, train, summary)
