"""The experiment pipeline: train the learners on the scenario's env (live engine or simulator),
evaluate every policy on the same seeded workloads across the rate sweep, write tables and plots
under runs/<run name>/.

Run folder:
    config.yaml          the validated experiment config (compared on --resume)
    policies/NAME.json   trained learners (NAME.repR.json: replicate R >= 1; reused on resume);
                         sb3 policies also write NAME.safetensors beside it
    checkpoints/, tb/, eval/, train_sb3.csv   sb3 training (nightjar_rl/experiments/sb3_train.py)
    train.csv            one row per training episode (policy, replicate, ...)
    results.csv          one row per policy x rate [x concurrency] x seed x replicate (appended atomically
                         as cells finish on any executor, in batches 5 s apart; sorted into the
                         canonical cell order at the end); a `concurrency` column only when the
                         config has a concurrency sweep
    k_by_batch.csv       decode steps and mean k per batch size, per cell
    requests.csv         one row per request per cell: cell keys, request and prompt ids, family, token
                         counts, TTFT/TPOT/e2e, drafted/accepted, finish reason (serving/report.py)
    provenance.json      resolved config and scenario, trace/profile/prompt file hashes, package versions
    summary.txt          the terminal summary (results against the config's own `goals:`, if any)
    confirm.csv          with a `confirm:` section: the live confirmation's cells (experiments/confirm.py)
    throughput_vs_rate.png, latency_vs_rate.png, k_by_batch.png   (closed-loop sweeps: *_vs_concurrency.png)
    speedup_vs_rate.png  throughput over the first fixed-k policy's, paired per seed (when the config has one)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from tqdm.auto import tqdm

from nightjar_rl.analysis import format_summary, plot_k_by_batch, plot_metric_vs_rate
from nightjar_rl.analysis.load import load_axis
from nightjar_rl.analysis.stats import ci_table, format_ci
from nightjar_rl.analysis.study import findings, headline, verdict
from nightjar_rl.analysis.tables import best_fixed_comparison, with_speedup
from nightjar_rl.env.recorder import TableAppender, append_rows, read_table, write_table
from nightjar_rl.env.scenario import Scenario
from nightjar_rl.experiments.config import (
    ExperimentConfig,
    experiment_from_dict,
    resolve_scenario,
    resolve_spec,
    resolve_train_scenario,
)
from nightjar_rl.experiments.confirm import (
    choose_policies,
    confirmation_summary,
    prepare_confirmation,
    run_confirmation,
)
from nightjar_rl.experiments.executor import (
    KBB_COLUMNS,
    CellJob,
    LocalExecutor,
    SB3Job,
    SweepContext,
    TrainJob,
    backend_for,
    cell_job,
    cell_key,
    make_executor,
    portable_scenario,
    sb3_job,
    train_job,
    with_concurrency,
)
from nightjar_rl.experiments.fields import ExperimentError
from nightjar_rl.experiments.sb3_config import is_sb3_spec, parse_sb3_spec
from nightjar_rl.io import atomic_write_json, atomic_write_text, read_json
from nightjar_rl.policy import make_policy, save_policy
from nightjar_rl.policy.artifact import policy_from_dict
from nightjar_rl.policy.registry import spec_as_dict
from nightjar_rl.policy.resolve import is_artifact_path
from nightjar_rl.serving.report import provenance

CELL_KEYS = ["policy", "rate", "seed", "replicate"]
TABLE_COLUMNS = [
    "run", "scenario", "experiment", "policy", "learned", "replicate", "rate", "seed", "requests", "output_tokens", "duration_s",
    "throughput_tok_s", "goodput_tok_s", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tpot_p95_s", "e2e_p50_s",
    "e2e_p95_s", "mean_k", "frac_k0", "acceptance_rate", "mean_accepted_length", "mean_batch", "steps",
    "k_switches_per_h", "row_switches_per_h",
]


@dataclass
class ExperimentResult:
    run_dir: Path
    results: pd.DataFrame
    k_by_batch: pd.DataFrame
    train: pd.DataFrame
    summary: str
    config: ExperimentConfig | None = None
    confirm: pd.DataFrame | None = None  # the live confirmation's rows (a `confirm:` section)

    @property
    def learned(self) -> list[str]:
        """Names of the learned policies in the results (first-seen order)."""
        df = self.results
        return list(dict.fromkeys(df.loc[df["learned"].astype(bool), "policy"])) if "learned" in df else []


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
    data = portable_scenario(scenario)
    files = {key: data.get(key) for key in ("trace", "profile", "datastore")}
    files["prompts"] = (data.get("prompts") or {}).get("path")
    atomic_write_json(run_dir / "provenance.json", provenance(saved, data, files))
    return run_dir


def build_policies(cfg: ExperimentConfig, scenario: Scenario) -> tuple[dict, dict]:
    """Every configured policy's spec, resolved against `scenario` once (`resolve_spec`), and the policy
    freshly built from it (SB3 specs are trained later, so only resolved): ({name: spec}, {name: policy}).
    A bad spec raises ExperimentError naming the entry."""
    specs, policies = {}, {}
    for entry in cfg.policies:
        try:
            specs[entry.name] = resolve_spec(entry.spec, scenario)
            if not is_sb3_spec(entry.spec):  # SB3: trained in _trained_policies (nightjar_rl.experiments.sb3_train)
                policies[entry.name] = make_policy(specs[entry.name], scenario.max_k)
        except ValueError as exc:
            raise ExperimentError(f"experiment {cfg.name!r}: field 'policies' entry {entry.name!r}: {exc}") from None
    return specs, policies


def replicate_spec(spec, policy, replicate: int):
    """The spec of learner replicate r: the policy's own seed + r (when it has one)."""
    if replicate == 0 or "seed" not in policy.params():
        return spec
    return {**spec_as_dict(spec), "seed": int(policy.params()["seed"]) + replicate}


def _policy_file(run_dir: Path, name: str, replicate: int) -> Path:
    return run_dir / "policies" / (f"{name}.json" if replicate == 0 else f"{name}.rep{replicate}.json")


def _trained_policies(cfg: ExperimentConfig, scenario: Scenario, ctx: SweepContext, train_ctx: SweepContext,
                      run_dir: Path, executor, progress: bool) -> tuple[dict, dict, set[str]]:
    """Specs of every policy (trained artifacts for learners, trained on the executor in `train_ctx`'s
    scenario or loaded from a previous run of this folder). Returns ({name: spec}, {(name, replicate):
    artifact}, learned)."""
    specs, built = build_policies(cfg, scenario)
    learned = {name for name, p in built.items() if getattr(p, "learning", False)}
    artifacts, jobs = {}, []
    t = cfg.train
    for name in (e.name for e in cfg.policies if e.name in learned):
        for r in range(t.replicates):
            path = _policy_file(run_dir, name, r)
            if path.is_file():
                artifacts[(name, r)] = read_json(path, "policy artifact")
                continue
            concurrency = t.concurrency or cfg.concurrency
            jobs.append(TrainJob(name, r, replicate_spec(specs[name], built[name], r), t.episodes,
                                 tuple(t.rates or cfg.rates), t.seed + r * t.episodes, t.num_requests,
                                 tuple(concurrency) if concurrency else None))
    bar = tqdm(total=len(jobs), desc=f"train {cfg.name}", unit="learner", disable=not progress or not jobs)
    for job, (artifact, log) in executor.map(train_job, train_ctx, jobs):
        if log:  # train.episodes 0: deployed as built (or as the artifact the spec holds)
            # a learner retrained after an interrupt (its log written, its policy not) replaces its rows
            append_rows(run_dir / "train.csv", pd.DataFrame(log),
                        replace={"policy": job.policy, "replicate": job.replicate})
        save_policy(policy_from_dict(artifact), _policy_file(run_dir, job.policy, job.replicate))
        artifacts[(job.policy, job.replicate)] = artifact
        bar.update()
    bar.close()
    _train_sb3(cfg, scenario, ctx, run_dir, executor, progress)
    for entry in cfg.policies:
        if is_sb3_spec(entry.spec):
            learned.add(entry.name)
            for r in range(t.replicates):  # cells load it by path (weights beside it)
                artifacts[(entry.name, r)] = str(_policy_file(run_dir, entry.name, r).resolve())
    return specs, artifacts, learned


def _train_sb3(cfg: ExperimentConfig, scenario: Scenario, ctx: SweepContext, run_dir: Path, executor,
               progress: bool) -> None:
    """Train every sb3 replicate not exported yet (on vectorised envs of its own). On the local executor
    one after another with a progress bar each; on Ray, replicates trained on the simulator run as
    parallel tasks (live training always stays in this process)."""
    remote = []
    for index, entry in enumerate(cfg.policies):
        if not is_sb3_spec(entry.spec):
            continue
        for r in range(cfg.train.replicates):
            path = _policy_file(run_dir, entry.name, r)
            if path.is_file():
                continue
            if isinstance(executor, LocalExecutor) or parse_sb3_spec(entry.spec).train_on == "live":
                # imported only here: training needs stable-baselines3, evaluating an exported policy does not
                from nightjar_rl.experiments.sb3_train import train_entry

                _, row = train_entry(entry.name, index, cfg, scenario, backend_for(ctx.scenario)[1], path,
                                     replicate=r, progress=progress)
                append_rows(run_dir / "train_sb3.csv", pd.DataFrame([row]))
            else:
                remote.append(SB3Job(entry.name, index, r, str(path), cfg))
    bar = tqdm(total=len(remote), desc=f"train sb3 {cfg.name} ({executor.name})", unit="replicate",
               disable=not progress or not remote)
    for _, row in executor.map(sb3_job, ctx, remote):
        append_rows(run_dir / "train_sb3.csv", pd.DataFrame([row]))
        bar.update()
    bar.close()


def sweep_cells(cfg: ExperimentConfig, specs: dict, artifacts: dict, learned: set[str]) -> list[CellJob]:
    """Every evaluation cell in the canonical order: rate, concurrency, seed, policy, replicate."""
    cells = []
    for rate in cfg.rates:
        for conc in cfg.concurrency or [None]:
            for seed in cfg.seeds:
                for name, spec in specs.items():
                    if name in learned:
                        cells += [CellJob(name, rate, seed, r, True, artifacts[(name, r)], conc)
                                  for r in range(cfg.train.replicates)]
                    else:
                        cells.append(CellJob(name, rate, seed, 0, False, spec, conc))
    return cells


def _cell_key(row) -> tuple:
    return cell_key(row.policy, row.rate, row.seed, getattr(row, "replicate", 0), getattr(row, "concurrency", None))


def _finished_cells(run_dir: Path) -> set[tuple]:
    """Cells results.csv already holds; ExperimentError naming the file and the row when it cannot
    be read back (a truncated or edited file), instead of a conversion error."""
    path = run_dir / "results.csv"
    if not path.is_file():
        return set()
    try:
        table = read_table(path)
    except ValueError as exc:  # pandas' ParserError / EmptyDataError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExperimentError(f"{path}: cannot be read ({first}); fix or remove it to resume") from None
    cells = set()
    for n, row in enumerate(table.itertuples(index=False), 1):
        try:
            cells.add(_cell_key(row))
        except (AttributeError, TypeError, ValueError):
            raise ExperimentError(f"{path}: data row {n} is incomplete (a truncated file?); remove it to re-run "
                                  f"its cell") from None
    return cells


def canonical_order(df: pd.DataFrame, cells: list[CellJob]) -> pd.DataFrame:
    """Rows sorted into the sweep's canonical cell order (stable for rows of the same cell)."""
    rank = {c.key: i for i, c in enumerate(cells)}
    keys = [rank.get(_cell_key(row), len(rank)) for row in df.itertuples(index=False)]
    return df.assign(_rank=keys).sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


def report_slices(results: pd.DataFrame) -> list[tuple[float | None, pd.DataFrame]]:
    """(rate, rows) of each part of a results table with one load axis: (None, the whole table), or one
    rate at a time when it varies in both rate and concurrency."""
    try:
        load_axis(results)
    except ValueError:
        return [(r, results[results["rate"] == r]) for r in sorted(results["rate"].unique())]
    return [(None, results)]


def _summary_text(results: pd.DataFrame, learned: set[str], fixed: list[str] | None, goals: dict | None) -> str:
    summary = format_summary(results)
    for name in sorted(learned):
        if fixed and name in set(results["policy"]):
            table = best_fixed_comparison(results, name, fixed)
            summary += f"\n\n{name} vs fixed k (throughput ratios; > 1 = {name} faster):\n" + table.to_string(
                float_format=lambda v: f"{v:.3f}")
    if results["seed"].nunique() > 1:
        ci = format_ci(ci_table(results, "throughput_tok_s"))
        summary += "\n\nthroughput (output tokens/s), mean ± 95% CI over seeds:\n" + ci.to_string()
        if fixed and fixed[0] in set(results["policy"]):
            speedup = format_ci(ci_table(with_speedup(results, fixed[0]), "speedup"), "{:.3f}")
            summary += (f"\n\nspeedup over {fixed[0]} (throughput ratio paired per seed), mean ± 95% CI over seeds:\n"
                        + speedup.to_string())
        if learned and fixed:
            table = headline(results, sorted(learned), fixed)
            summary += "\n\n" + "\n".join(findings(table) if goals is None else verdict(table, **goals))
    return summary


def write_report(run_dir: Path, results: pd.DataFrame, kdf: pd.DataFrame, learned: set[str],
                 fixed: list[str] | None = None, goals: dict | None = None) -> str:
    """Summary text and the PNG plots of a run folder (METRIC_vs_rate.png, or METRIC_vs_concurrency.png
    for a closed-loop sweep; a sweep of rates x concurrency gets a section and plots per rate,
    suffixed _rateR). Returns the summary. With `fixed` (names of fixed-k policies), each learned
    policy is also compared with the best fixed k, checked against `goals` only when given."""
    import matplotlib.pyplot as plt

    texts, figs = [], {}
    for rate, part in report_slices(results):
        text = _summary_text(part, learned, fixed, goals)
        texts.append(text if rate is None else f"== rate {rate:g}/s ==\n{text}")
        name = load_axis(part) + ("" if rate is None else f"_rate{rate:g}")
        figs[f"throughput_vs_{name}.png"] = plot_metric_vs_rate(part, "throughput_tok_s", "output tokens/s")
        figs[f"latency_vs_{name}.png"] = plot_metric_vs_rate(part, "e2e_p50_s", "end-to-end latency p50 (s)", logy=True)
        if fixed and fixed[0] in set(part["policy"]):
            figs[f"speedup_vs_{name}.png"] = plot_metric_vs_rate(with_speedup(part, fixed[0]), "speedup",
                                                                 f"speedup over {fixed[0]} (paired per seed)")
    summary = "\n\n".join(texts)
    atomic_write_text(run_dir / "summary.txt", summary + "\n")
    chosen = kdf[kdf["policy"].isin(learned)] if learned else kdf
    if len(chosen):
        figs["k_by_batch.png"] = plot_k_by_batch(chosen, "k chosen by batch size" + (" (learned)" if learned else ""))
    for name, fig in figs.items():
        tmp = run_dir / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110)
        tmp.replace(run_dir / name)
        plt.close(fig)
    return summary


@contextmanager
def _executor(cfg: ExperimentConfig, executor=None):
    """The given executor, or the config's (closed on exit)."""
    if executor is not None:
        yield executor
        return
    executor = make_executor(cfg.executor)
    try:
        yield executor
    finally:
        executor.close()


def _train_phase(cfg: ExperimentConfig, scenario: Scenario, out_dir, resume, executor, progress: bool):
    """Run folder, sweep context, and the trained policies: (run_dir, ctx, specs, artifacts, learned)."""
    train_scenario = resolve_train_scenario(cfg, scenario)  # checked before the run folder is made
    run_dir = _prepare_run_dir(cfg, scenario, out_dir, resume)
    ctx, train_ctx = (SweepContext(portable_scenario(s), cfg.slo, cfg.learn_during_eval, run_dir.name, cfg.name)
                      for s in (scenario, train_scenario))
    return (run_dir, ctx, *_trained_policies(cfg, scenario, ctx, train_ctx, run_dir, executor, progress))


@dataclass
class TrainedRun:
    run_dir: Path
    scenario: Scenario
    learned: set[str]
    replicates: int = 1

    def artifacts(self) -> dict[str, Path]:
        """Trained policies' artifacts in the run folder, by name (replicates r > 0: NAME.repR)."""
        return {name if r == 0 else f"{name}.rep{r}": _policy_file(self.run_dir, name, r)
                for name in sorted(self.learned) for r in range(self.replicates)}


def train_experiment(cfg: ExperimentConfig, out_dir: str | Path = "runs", resume: str | Path | None = None,
                     progress: bool = True, executor=None) -> TrainedRun:
    """The training half of an experiment (`nightjar-rl train`): create (or resume) the run folder,
    train the learners and the sb3 policies, export them under policies/. Trained policies are reused,
    so `run_experiment(cfg, resume=run_dir)` then evaluates without retraining."""
    scenario = resolve_scenario(cfg)
    build_policies(cfg, scenario)  # fail on bad specs before creating the run folder
    with _executor(cfg, executor) as ex:
        run_dir, _, _, _, learned = _train_phase(cfg, scenario, out_dir, resume, ex, progress)
    return TrainedRun(run_dir, scenario, learned, cfg.train.replicates)


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path = "runs", resume: str | Path | None = None,
                   progress: bool = True, executor=None) -> ExperimentResult:
    """Train, evaluate the sweep (skipping finished cells when resuming), write tables and plots.
    `executor` (an object with map/close, see nightjar_rl.experiments.executor) overrides the
    config's; results are the same on every executor."""
    scenario = resolve_scenario(cfg)
    build_policies(cfg, scenario)  # fail on bad specs before creating the run folder
    if cfg.confirm is not None:
        prepare_confirmation(cfg.confirm, cfg.base_dir)  # and on a confirmation that would fail after the sweep
    with _executor(cfg, executor) as ex:
        run_dir, ctx, specs, artifacts, learned = _train_phase(cfg, scenario, out_dir, resume, ex, progress)
        cells = sweep_cells(cfg, specs, artifacts, learned)
        done = _finished_cells(run_dir)
        todo = [c for c in cells if c.key not in done]
        bar = tqdm(total=len(todo), desc=f"evaluate {cfg.name} ({ex.name})", unit="cell", disable=not progress)
        closed = cfg.concurrency is not None
        kbb_columns, table_columns = with_concurrency(KBB_COLUMNS, closed), with_concurrency(TABLE_COLUMNS, closed)
        with TableAppender(every_s=5.0) as tables:  # k_by_batch first: a finished cell's details are on disk
            for job, (row, krows, req_rows) in ex.map(cell_job, ctx, todo):
                load = f"{job.rate:g}/s" + ("" if job.concurrency is None else f" C={job.concurrency}")
                bar.set_postfix_str(f"{job.policy} @ {load} seed {job.seed}", refresh=False)
                tables.add(run_dir / "k_by_batch.csv", pd.DataFrame(krows, columns=kbb_columns))
                tables.add(run_dir / "requests.csv", pd.DataFrame(req_rows))
                tables.add(run_dir / "results.csv", pd.DataFrame([{c: row.get(c) for c in table_columns}]))
                bar.update()
        bar.close()
    results = canonical_order(read_table(run_dir / "results.csv"), cells)
    write_table(results, run_dir / "results.csv")
    kdf = read_table(run_dir / "k_by_batch.csv")
    if "replicate" not in kdf.columns:
        kdf.insert(1, "replicate", 0)
    cell_columns = with_concurrency(["policy", "replicate", "rate", "seed", "batch_size"], "concurrency" in kdf.columns)
    kdf = canonical_order(kdf.drop_duplicates(cell_columns, keep="last"), cells)
    write_table(kdf, run_dir / "k_by_batch.csv")
    req_path = run_dir / "requests.csv"
    if req_path.is_file():  # a cell re-run after a kill wrote its rows again: keep the last
        rdf = read_table(req_path)
        keys = with_concurrency(["policy", "replicate", "rate", "seed", "request_id"], "concurrency" in rdf.columns)
        write_table(canonical_order(rdf.drop_duplicates(keys, keep="last"), cells), req_path)
    train_path = run_dir / "train.csv"
    train = read_table(train_path) if train_path.is_file() else pd.DataFrame()
    fixed = fixed_policies(cfg)
    summary = write_report(run_dir, results, kdf, learned, fixed, cfg.goals)
    confirm = None
    if cfg.confirm is not None:
        names = choose_policies(cfg.confirm, results, fixed)
        chosen = {n: artifacts[(n, 0)] if n in learned else specs[n] for n in names}
        confirm = run_confirmation(cfg.confirm, chosen, learned, cfg.slo, run_dir, cfg.base_dir, progress)
        baseline = names[0] if names[0] in fixed else None
        summary += "\n\n" + confirmation_summary(confirm, cfg.confirm, baseline)
        atomic_write_text(run_dir / "summary.txt", summary + "\n")
    return ExperimentResult(run_dir, results, kdf, train, summary, cfg, confirm)


def fixed_policies(cfg: ExperimentConfig) -> list[str]:
    """Names of the config's fixed-k policies, in config order."""
    def type_name(spec) -> str:
        if is_artifact_path(spec):
            return "artifact"  # a policy file (make_policy loads it): never a plain fixed k
        return str(spec_as_dict(spec).get("type", "")).replace("-", "_")

    return [e.name for e in cfg.policies if type_name(e.spec) == "fixed"]


def load_run(run_dir: str | Path) -> ExperimentResult:
    """A finished (or partial) run folder's tables, summary and config, as run_experiment returns them."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file() or not (run_dir / "results.csv").is_file():
        raise ExperimentError(f"{run_dir}: not a run folder (needs config.yaml and results.csv)")
    saved = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    saved["evaluate"] = {"learn": saved.pop("learn_during_eval", False)}
    cfg = experiment_from_dict(saved, run_dir.name)
    train_path, summary_path = run_dir / "train.csv", run_dir / "summary.txt"
    return ExperimentResult(
        run_dir, read_table(run_dir / "results.csv"), read_table(run_dir / "k_by_batch.csv"),
        read_table(train_path) if train_path.is_file() else pd.DataFrame(),
        summary_path.read_text(encoding="utf-8") if summary_path.is_file() else "", cfg)
