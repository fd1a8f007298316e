"""The per-row study (issue 20): per-row policies against per-step ones, per scenario, closed and open loop.

A study file (experiments/per_row_study.yaml) is an experiment config (`nightjar_rl.experiments.config`)
with `scenarios` (a list: one line per scenario) instead of `scenario`, plus:

    verify_layout  str    the simulator's verify pricing for every scenario (packed: rows + drafted tokens)
    max_batch_size int    every scenario's engine row limit (e.g. 512 for closed loop at C = 512); omit: each
                          scenario's own
    open_loop      map    {rates: [...]}: also run open loop at these Poisson rates (omit: closed loop only)
    per_step       list   policy names of the per-step baselines
    per_row        list   policy names of the per-row policies
    goals          map    {win, low_loss, high_from, low_upto} (`nightjar_rl.analysis.per_row.PER_ROW_GOALS`)
    learned        map    {policies: [...], against: NAME} (optional): learned per-row policies (also listed in
                          per_row), compared per load with the hand-written allocator NAME, paired per seed
                          (`learned_table.csv` and a goal line: `nightjar_rl.analysis.per_row.learned_verdict`)

Each (scenario, loop) is one ordinary experiment run (`run_experiment`, resumable with the same out
dir) over the scenario with `verify_layout` and `max_batch_size` applied (written as a scenario file under the
out dir).
The report (`summary.txt`, `per_row_table.csv`, one `speedup_vs_load_<scenario>_<loop>.png` each)
compares, at every load point, the best per-row with the best per-step policy (paired per seed, 95%).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from nightjar_rl.analysis.per_row import (
    PER_ROW_GOALS,
    learned_verdict,
    per_row_table,
    per_row_verdict,
    plot_speedup_vs_load,
)
from nightjar_rl.env.scenario import ScenarioError, load_scenario
from nightjar_rl.experiments.config import experiment_from_dict
from nightjar_rl.experiments.executor import portable_scenario
from nightjar_rl.experiments.fields import ExperimentError
from nightjar_rl.experiments.runner import run_experiment
from nightjar_rl.env.recorder import write_table
from nightjar_rl.io import atomic_write_text

STUDY_KEYS = {"scenarios", "verify_layout", "max_batch_size", "open_loop", "per_step", "per_row", "goals", "learned"}


@dataclass
class PerRowStudy:
    out_dir: Path
    results: dict[tuple[str, str], pd.DataFrame]  # (scenario, loop) -> the run's results table
    table: pd.DataFrame  # per_row_table rows of every (scenario, loop)
    summary: str


def load_study(path: str | Path) -> dict:
    """The study file as a mapping, its study fields checked (the rest is checked as an experiment)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: a per-row study is a mapping of fields")
    data.setdefault("name", path.stem)
    data["_base_dir"] = str(path.resolve().parent)
    scenarios = data.get("scenarios")
    if not isinstance(scenarios, list) or not scenarios or not all(isinstance(s, str) and s for s in scenarios):
        raise ExperimentError(f"{path}: field 'scenarios' must be a non-empty list of scenario names or paths")
    names = {p.get("name") for p in data.get("policies", []) if isinstance(p, dict)}
    for key in ("per_step", "per_row"):
        group = data.get(key)
        if not isinstance(group, list) or not group or not set(group) <= names:
            raise ExperimentError(f"{path}: field {key!r} must be a non-empty list of names from 'policies', got {group!r}")
    learned = data.get("learned")
    if learned is not None and not (isinstance(learned, dict) and set(learned) == {"policies", "against"}
                                    and isinstance(learned["policies"], list) and learned["policies"]
                                    and set(learned["policies"]) <= set(data["per_row"])
                                    and learned["against"] in set(data["per_row"]) - set(learned["policies"])):
        raise ExperimentError(f"{path}: field 'learned' must be {{policies: [names from per_row], against: another "
                              f"per_row name}}, got {learned!r}")
    goals = data.get("goals") or {}
    if not isinstance(goals, dict) or not set(goals) <= set(PER_ROW_GOALS):
        raise ExperimentError(f"{path}: field 'goals' takes {', '.join(PER_ROW_GOALS)}, got {goals!r}")
    rows = data.get("max_batch_size")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ExperimentError(f"{path}: field 'max_batch_size' must be an integer >= 1, got {rows!r}")
    open_loop = data.get("open_loop")
    if open_loop is not None and (not isinstance(open_loop, dict) or set(open_loop) != {"rates"}):
        raise ExperimentError(f"{path}: field 'open_loop' must be {{rates: [...]}}, got {open_loop!r}")
    return data


def _scenario_file(ref: str, layout: str | None, base_dir: str, out_dir: Path, rows: int | None = None) -> str:
    """A scenario file with `verify_layout` and `max_batch_size` (`rows`) applied and data paths absolute,
    under `out_dir/scenarios`."""
    try:
        scenario = load_scenario(ref)
    except ScenarioError:
        if not (Path(base_dir) / ref).is_file():
            raise
        scenario = load_scenario(Path(base_dir) / ref)
    if layout is not None:
        scenario = scenario.replace(verify_layout=layout)
    if rows is not None:
        scenario = scenario.replace(max_batch_size=rows)
    data = portable_scenario(scenario)
    name = "-".join([scenario.name] + ([layout] if layout else []) + ([f"b{rows}"] if rows is not None else []))
    data["name"] = name
    path = out_dir / "scenarios" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return str(path)


def experiment_dicts(study: dict, out_dir: Path) -> list[tuple[str, str, dict]]:
    """(scenario, loop, experiment mapping) for every scenario, closed loop then (if given) open loop."""
    common = {k: v for k, v in study.items() if k not in STUDY_KEYS and not k.startswith("_")}
    jobs = []
    for ref in study["scenarios"]:
        path = _scenario_file(ref, study.get("verify_layout"), study["_base_dir"], out_dir, study.get("max_batch_size"))
        stem = Path(path).stem
        if common.get("concurrency"):
            closed = {**common, "name": f"{study['name']}-closed", "scenario": path, "rates": ["inf"]}
            jobs.append((stem, "closed", closed))
        if study.get("open_loop"):
            rates = study["open_loop"]["rates"]
            train = {k: v for k, v in (common.get("train") or {}).items() if k != "concurrency"}
            opened = {**common, "name": f"{study['name']}-open", "scenario": path, "rates": rates,
                      "train": {**train, "rates": rates}}
            opened.pop("concurrency", None)
            jobs.append((stem, "open", opened))
    return jobs


def run_per_row_study(path: str | Path, out_dir: str | Path = "runs", progress: bool = True) -> PerRowStudy:
    """Run (or resume) every (scenario, loop) of the study and write its report under `out_dir/<name>`."""
    study = load_study(path)
    root = Path(out_dir) / study["name"]
    goals = {**PER_ROW_GOALS, **(study.get("goals") or {})}
    results, tables, learned_tables, lines = {}, [], [], []
    learned = study.get("learned")
    for scenario, loop, data in experiment_dicts(study, root):
        cfg = experiment_from_dict(data, base_dir=study["_base_dir"])
        runs = root / scenario / loop
        previous = sorted(runs.glob("*/config.yaml")) if runs.is_dir() else []
        res = run_experiment(cfg, runs, resume=previous[-1].parent if previous else None, progress=progress)
        df = res.results
        results[(scenario, loop)] = df
        table = per_row_table(df, study["per_step"], study["per_row"])
        tables.append(table.assign(scenario=scenario, loop=loop))
        fig = plot_speedup_vs_load(df, study["per_step"], study["per_row"], title=f"{scenario}, {loop} loop")
        fig.savefig(root / f"speedup_vs_load_{scenario}_{loop}.png", dpi=90)
        verdict = per_row_verdict(table, **goals) if loop == "closed" else per_row_verdict(
            table, goals["win"], goals["low_loss"], high_from=float("inf"), low_upto=-1.0)
        lines += [f"== {scenario}, {loop} loop ({res.run_dir}) ==", _format(table), *verdict, ""]
        if learned:
            vs = per_row_table(df, [learned["against"]], learned["policies"])
            learned_tables.append(vs.assign(scenario=scenario, loop=loop))
            lines += [f"-- learned per-row vs {learned['against']} --", _format(vs, "allocator", "best learned"),
                      learned_verdict(vs, learned["against"]), ""]
    table = pd.concat(tables, ignore_index=True)
    write_table(table, root / "per_row_table.csv")
    if learned_tables:
        write_table(pd.concat(learned_tables, ignore_index=True), root / "learned_table.csv")
    summary = "\n".join(lines).rstrip() + "\n"
    atomic_write_text(root / "summary.txt", summary)
    return PerRowStudy(root, results, table, summary)


def _format(table: pd.DataFrame, step: str = "best per-step", row: str = "best per-row") -> str:
    t = table.copy()
    axis = t.columns[0]
    out = pd.DataFrame({
        axis: t[axis].map(lambda v: f"{v:g}"),
        step: t["best_per_step"] + " " + t["step_mean"].map("{:.1f}".format) + " ± " + t["step_half"].map("{:.1f}".format),
        row: t["best_per_row"] + " " + t["row_mean"].map("{:.1f}".format) + " ± " + t["row_half"].map("{:.1f}".format),
        "paired ratio": t["paired_ratio"].map("{:.3f}".format) + " ± " + t["paired_half"].map("{:.3f}".format),
        "apart": t["apart"],
        f"p95 TPOT ms ({step.split()[-1].removeprefix('per-')}/{row.split()[-1].removeprefix('per-')})": t["step_tpot_p95_ms"].map("{:.2f}".format) + " / " + t["row_tpot_p95_ms"].map("{:.2f}".format),
        "row switches/h": t["row_switches_per_h"].map("{:.0f}".format),
    })
    return out.to_string(index=False)
