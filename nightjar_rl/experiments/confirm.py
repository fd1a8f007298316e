"""Live confirmation of a simulated sweep: its best policies served on the live engine, with the noise
measured.

After the sweep, `run_confirmation` serves the chosen policies (the sweep's best `top` by mean
throughput relative to the per-load best, plus its first fixed-k policy as the baseline) on the live
scenario: one seeded workload per load point, `repeats` times, in interleaved order (repeat, load,
policy) so that drift in the machine's speed hits every policy alike. The twin scenario (if any) serves
each cell once (the simulator is deterministic): its prediction is shown beside the live numbers.
With `rescale_twin`, the twin serves each cell once more at the machine's speed timed before and after
the live cells (`nightjar_rl.experiments.drift`): `twin_now`, the prediction with this hour's drift
taken out (the profile's forwards scaled by the anchor's ratio at their row count, its host work
kept: `HardwareProfile.scaled_forwards`).
Learned policies are deployed as trained (replicate 0), without learning.

`confirmation_table` reduces the rows to one per load point x policy: live median, min and max,
mean ± 95% t interval over repeats, the twin's prediction and live/twin, and the ratio to the
baseline paired per repeat (same workload, adjacent in time) with its own t interval.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from nightjar_rl.analysis.load import CONCURRENCY, RATE, format_load
from nightjar_rl.analysis.stats import t_interval
from nightjar_rl.analysis.study import relative_score
from nightjar_rl.env.recorder import write_table
from nightjar_rl.io import atomic_write_json
from nightjar_rl.experiments.config import ConfirmConfig, scenario_near
from nightjar_rl.experiments.drift import SpeedDrift
from nightjar_rl.experiments.executor import CellJob, SweepContext, cell_job, portable_scenario

METRIC = "throughput_tok_s"
SPEED_HINT_AT = 0.3  # live/twin this far from 1 is the machine's speed (hour-to-hour drift and clock error stay within)
COLUMNS = ["backend", "scenario", "policy", "rate", "concurrency", "seed", "repeat", METRIC, "tpot_p50_s",
           "e2e_p50_s", "mean_k", "requests", "output_tokens", "duration_s"]


def choose_policies(cc: ConfirmConfig, results: pd.DataFrame, fixed: list[str]) -> list[str]:
    """The baseline (the sweep's first fixed-k policy, if any) and the sweep's best `cc.top` policies
    (or the configured names), baseline first."""
    known = list(dict.fromkeys(results["policy"]))
    if cc.policies is not None:
        unknown = [n for n in cc.policies if n not in known]
        if unknown:
            raise ValueError(f"field 'confirm.policies': not in the sweep: {', '.join(unknown)}")
        best = list(cc.policies)
    else:
        best = list(relative_score(results, known).index[:cc.top])
    baseline = [f for f in fixed if f in known][:1]
    return list(dict.fromkeys(baseline + best))


def _load_points(cc: ConfirmConfig) -> list[tuple[float, int | None]]:
    return [(rate, conc) for rate in cc.rates for conc in (cc.concurrency or [None])]


def prepare_confirmation(cc: ConfirmConfig, base_dir: str | None = None):
    """The live scenario, the twin (or None) and, with `rescale_twin`, its `SpeedDrift` (nothing timed yet)
    of a confirmation, with its request count and length. Making the drift checks that the twin's profile
    carries a speed anchor that tells its host work (ScenarioError), so `run_experiment` calls this before
    the sweep to refuse such a confirmation then rather than after."""
    changes = {k: v for k, v in (("num_requests", cc.num_requests), ("max_new_tokens", cc.max_new_tokens))
               if v is not None}

    def near(name: str):
        scenario = scenario_near(name, base_dir)
        return scenario.replace(**changes) if changes else scenario

    live, twin = near(cc.scenario), near(cc.twin) if cc.twin else None
    return live, twin, SpeedDrift(live, twin) if cc.rescale_twin and twin is not None else None


def run_confirmation(cc: ConfirmConfig, specs: dict, learned: set[str], slo: dict, run_dir: Path,
                     base_dir: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Serve `specs` ({name: spec or trained artifact}) on the live scenario `cc.repeats` times per load
    point (and once on the twin; with `cc.rescale_twin` once more on the twin priced at the machine's
    speed timed before and after the live cells, run_dir/speed_drift.json); write run_dir/confirm.csv
    and return its rows."""
    live, twin, drift = prepare_confirmation(cc, base_dir)
    loads, rows = _load_points(cc), []
    twins = (1 + (drift is not None)) if twin is not None else 0
    bar = tqdm(total=(cc.repeats + twins) * len(loads) * len(specs), desc="confirm live", unit="cell",
               disable=not progress)

    def serve(backend: str, scenario, repeats) -> None:
        ctx = SweepContext(portable_scenario(scenario), slo, run=run_dir.name, experiment=f"confirm_{backend}")
        load_before, first = os.getloadavg()[0], len(rows)
        for repeat in repeats:
            for rate, conc in loads:
                for policy, spec in specs.items():
                    bar.set_postfix_str(f"{backend} {policy} repeat {repeat}", refresh=False)
                    row, _, _ = cell_job(ctx, CellJob(policy, rate, cc.seed, 0, policy in learned, spec, conc))
                    rows.append({**row, "backend": backend, "repeat": repeat, "concurrency": conc,
                                 "profile_scale": scenario.profile_scale,
                                 "profile_scale_keeps_host": scenario.profile_scale_keeps_host,
                                 "profile_scale_by_rows": by_rows_text(scenario.profile_scale_by_rows),
                                 "load_avg_before": load_before,
                                 "load_avg_after": math.nan})
                    bar.update()
        for row in rows[first:]:
            row["load_avg_after"] = os.getloadavg()[0]

    if twin is not None:
        serve("sim", twin, range(1))  # the twin first: seconds
    if drift is not None:
        drift.measure("before")
    serve("live", live, range(cc.repeats))
    if drift is not None:
        drift.measure("after")
        serve("sim_rescaled", twin.replace(profile_scale=drift.ratio, profile_scale_keeps_host=True,
                                           profile_scale_by_rows=drift.ratio_by_rows), range(1))
        atomic_write_json(run_dir / "speed_drift.json", drift.to_dict())
        bar.write(drift.describe())
    bar.close()
    df = pd.DataFrame(rows)[COLUMNS + ["profile_scale", "profile_scale_keeps_host", "profile_scale_by_rows",
                                       "load_avg_before", "load_avg_after"]]
    write_table(df, run_dir / "confirm.csv")
    return df


def by_rows_text(by_rows: dict | None) -> str:
    """A twin's `profile_scale_by_rows` for a table cell ("1: 2.280, 16: 2.870"; "" without one)."""
    return ", ".join(f"{rows}: {ratio:.3f}" for rows, ratio in sorted(by_rows.items())) if by_rows else ""


def _axis(df: pd.DataFrame) -> str:
    return CONCURRENCY if df[CONCURRENCY].notna().any() else RATE


def confirmation_table(df: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """One row per load point x policy of the live rows (see the module docstring)."""
    axis = _axis(df)
    live = df[df["backend"] == "live"]
    predicted = {name: part.groupby([axis, "policy"])[METRIC].mean() for name, part in
                 (("twin", df[df["backend"] == "sim"]), ("twin_now", df[df["backend"] == "sim_rescaled"])) if len(part)}
    rows = []
    for load, part in live.groupby(axis, sort=False):
        base = part[part["policy"] == baseline].set_index("repeat")[METRIC] if baseline else None
        for policy, group in part.groupby("policy", sort=False):
            x = group.set_index("repeat")[METRIC]
            mean, half, n = t_interval(x)
            row = {axis: load, "policy": policy, "repeats": n, "median": x.median(), "min": x.min(), "max": x.max(),
                   "mean": mean, "half": half}
            for name, table in predicted.items():
                row[name] = table.get((load, policy), math.nan)
                row[f"live/{name}"] = row["median"] / row[name]
            if base is not None and len(base):
                row["vs_baseline"], row["vs_baseline_half"], _ = t_interval((x / base).dropna())
            rows.append(row)
    return pd.DataFrame(rows)


def confirmation_summary(df: pd.DataFrame, cc: ConfirmConfig, baseline: str | None) -> str:
    """The confirmation as text: the table, then per load point the live order, which differences
    are measurable (the paired interval excludes 1) and how large the repeat-to-repeat noise was."""
    table = confirmation_table(df, baseline)
    axis = _axis(df)
    live = df[df["backend"] == "live"]
    requests, tokens = int(live["requests"].max()), int(live["output_tokens"].max())
    head = (f"live confirmation on {cc.scenario}: {cc.repeats} repeats of one workload per load point "
            f"(seed {cc.seed}, {requests} requests, {tokens} output tokens in all), policies interleaved"
            + (f"; twin prediction from {cc.twin}" if cc.twin else "")
            + f"; load average {live['load_avg_before'].iloc[0]:.2f} -> {live['load_avg_after'].iloc[0]:.2f}")
    rescaled = df[df["backend"] == "sim_rescaled"]
    if len(rescaled):
        by_rows = rescaled["profile_scale_by_rows"].iloc[0] if "profile_scale_by_rows" in rescaled else ""
        scale = f"x {by_rows} by rows" if isinstance(by_rows, str) and by_rows else f"{rescaled['profile_scale'].iloc[0]:.3f}x"
        head += (f"\ntwin_now: the twin at this machine's speed during the live cells (the profile's forwards {scale}, "
                 f"its host work kept; timed before and after them: speed_drift.json)")
    shown = table.copy()
    shown[axis] = [format_load(axis, v) for v in shown[axis]]
    lines = [head, "throughput (output tokens/s): live median [min, max], mean ± 95% CI over repeats"
             + (f"; vs_baseline = policy / {baseline} paired per repeat" if baseline else ""),
             shown.to_string(index=False, float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")]
    for load, part in table.groupby(axis, sort=False):
        order = list(part.sort_values("median", ascending=False)["policy"])
        text = f"{format_load(axis, load)}: live order {' > '.join(order)}"
        if "twin" in part:
            twin_order = list(part.sort_values("twin", ascending=False)["policy"])
            text += f" (twin: {' > '.join(twin_order)}; {'same' if twin_order == order else 'different'})"
        if baseline and "vs_baseline" in part:
            for row in part[part["policy"] != baseline].itertuples(index=False):
                lo, hi = row.vs_baseline - row.vs_baseline_half, row.vs_baseline + row.vs_baseline_half
                verdict = ("faster" if lo > 1 else "slower") if (lo > 1 or hi < 1) else "not distinguishable"
                text += (f"; {row.policy} {row.vs_baseline:.3f} ± {row.vs_baseline_half:.3f}x {baseline} "
                         f"({verdict} at {cc.repeats} repeats)")
        spread = (part["max"] / part["min"] - 1.0).max()
        text += f"; repeat-to-repeat spread up to {100 * spread:.1f}%"
        lines.append(text)
    hint = speed_hint(table)
    return "\n".join(lines + ([hint] if hint else []))


def speed_hint(table: pd.DataFrame) -> str | None:
    """For a confirmation without `rescale_twin` whose live cells ran far from the twin's prediction
    (median live/twin off 1 by more than `SPEED_HINT_AT`): a line saying so and how to take the machine's
    speed out; else None."""
    if "live/twin" not in table or "live/twin_now" in table:
        return None
    ratio = float(table["live/twin"].median())
    if not math.isfinite(ratio) or abs(ratio - 1.0) <= SPEED_HINT_AT:
        return None
    return (f"the live engine ran at {ratio:.2f}x the twin's prediction (median over cells), far more than the twin's "
            f"own error: this machine is likely {'slower' if ratio < 1 else 'faster'} now than when the twin was "
            f"profiled. `confirm: {{rescale_twin: true}}` times its speed before and after the live cells and prices "
            f"the twin at it (twin_now; two model loads more; it needs the twin's profile to carry a speed anchor)")
