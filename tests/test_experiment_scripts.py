"""Every experiment script runs end to end in its quick mode (tiny random model or tiny-sim), so
none can rot: `python experiments/X.py --quick --out-dir TMP` exits 0 and writes results that parse.

Each script runs as a subprocess from the repository root on one torch thread (two spinning
threads on a busy 2-core machine make a tiny model ~100x slower). Numbers mean nothing here: a
few checks of what the scripts themselves verify (lossless outputs, exactly-once serving).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
HELPERS = {"quickmode.py"}  # imported by the scripts, not run
# scripts that cannot run here, with the reason
EXCLUDED = {
    "gpu/engine_check.sh": "needs CUDA and nvidia-smi: GPU tests, a profile and benches of an 8B-shaped model",
}


def _all_true(column: str) -> Callable[[pd.DataFrame], None]:
    def check(df: pd.DataFrame) -> None:
        assert df[column].astype(bool).all(), f"{column} is False in some rows:\n{df.to_string()}"

    return check


def _fidelity_cells(df: pd.DataFrame) -> None:
    """Every fixed-k cell replays per request exactly; the two --policies cells are there too."""
    at_k = df["policy"].str.startswith("fixed-")
    _all_true("per_request_identical")(df[at_k])
    assert set(df.loc[~at_k, "policy"]) == {"table-mlc_llm", "sim-trained-nightjar"}, df["policy"].unique()


def _summary_true(*keys: str) -> Callable[[dict], None]:
    def check(summary: dict) -> None:
        assert all(summary[k] is True for k in keys), summary

    return check


def _per_row_table(df: pd.DataFrame) -> None:
    assert set(df["loop"]) == {"closed", "open"}, df
    assert df["best_per_row"].notna().all() and df["paired_ratio"].gt(0).all(), df


@dataclass(frozen=True)
class Script:
    """How the test runs one script and what it must leave in its --out-dir."""

    name: str
    outputs: tuple[str, ...]  # glob patterns under the out dir; each must match a file that parses
    args: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # importable modules, else the test is skipped
    slow: bool = False  # about 15 s or more on the 2-core CPU
    check: dict[str, Callable] | None = None  # pattern -> check of the parsed file

    def param(self):
        marks = [pytest.mark.slow] if self.slow else []
        return pytest.param(self, id=self.name, marks=marks)


def _all_results(key: str, field: str) -> Callable[[dict], None]:
    def check(summary: dict) -> None:
        assert summary[key] and all(r[field] is True for r in summary[key]), summary

    return check


SCRIPTS = [
    Script("anchor_tracking", ("rounds.csv", "summary.json", "summary.md"), slow=True),
    Script("bench_cases", ("runs.csv", "summary.md", "summary.json"),
           check={"summary.json": _all_results("cases", "same_outputs")}),
    Script("bench_engine", ("runs.csv", "summary.md")),
    Script("bench_model_forward", ("runs.csv", "forwards.csv", "summary.md"),
           check={"summary.json": _summary_true("outputs_identical")}),
    Script("bench_parallel", ("*.csv",), check={"*.csv": _all_true("same_output")}),
    Script("bench_plan", ("result.json",)),
    Script("bench_policy_decision", ("result.json",)),
    Script("bench_ray", ("bench_ray.csv", "local0/*/results.csv", "ray0/*/results.csv"), needs=("ray",), slow=True),
    Script("bench_runtime_overhead", ("runs.csv", "summary.md", "steps.parquet")),
    Script("bench_server", ("summary.json", "server_steps.csv", "bench.json", "bench_generations.jsonl"),
           needs=("fastapi", "uvicorn", "httpx"), slow=True,
           check={"summary.json": _summary_true("completed_exactly_once", "outputs_identical_to_bench")}),
    Script("bench_sim_speed", ("result.json",)),
    Script("bench_vllm", ("runs.csv", "outputs.csv", "summary.json", "summary.md"), needs=("vllm",), slow=True),
    Script("bench_verify_layout", ("steps.csv", "summary.md", "summary.json"),
           check={"summary.json": _all_results("results", "same_tokens")}),
    Script("custom_policy", ("*/results.csv",), check={"*/results.csv": lambda df: (
        df.loc[df["policy"] == "acceptance-gated", "throughput_tok_s"] > 0).all() or None}),
    Script("bench_sssd", ("*/results.csv", "*/config.json"), check={"*/results.csv": _all_true("identical")}),
    Script("bf16_divergence", ("runs.csv", "summary.txt")),
    Script("draft_confidence", ("tokens.csv", "calibration.csv", "summary.csv"),
           check={"summary.csv": lambda df: (df["tokens_seen"] > 0).all() or None}),
    Script("run_notebooks", ("quickstart.ipynb", "figures/quickstart/*.png"), args=("quickstart",),
           needs=("nbclient", "ipykernel")),
    Script("per_row_study", ("per_row_study_tiny/summary.txt", "per_row_study_tiny/per_row_table.csv",
                             "per_row_study_tiny/speedup_vs_load_*.png", "per_row_study_tiny/*/*/*/results.csv"),
           check={"per_row_study_tiny/per_row_table.csv": _per_row_table}),
    Script("sim_fidelity", ("*/fidelity.csv", "*/ranking.csv"), check={"*/fidelity.csv": _fidelity_cells}),
    Script("profile_step", ("profile.csv", "summary.md")),
    Script("soak", ("*/windows.csv", "*/summary.json"), slow=True),
    Script("spot_check", ("spot_check.csv", "*study_tiny*/results.csv")),
    Script("workload_acceptance", ("acceptance.csv", "summary.csv", "tokens_per_step.png")),
]


def parse(path: Path):
    """The file's content, parsed by its suffix; fails when it is empty."""
    assert path.stat().st_size > 0, f"{path} is empty"
    if path.suffix == ".csv":
        df = pd.read_csv(path)
        assert len(df) > 0, f"{path} has no rows"
        return df
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        assert len(df) > 0, f"{path} has no rows"
        return df
    if path.suffix in (".json", ".ipynb"):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data, f"{path} is empty JSON"
        return data
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return path.read_bytes()


def test_every_script_is_covered():
    scripts = {p.relative_to(EXPERIMENTS).as_posix() for p in EXPERIMENTS.rglob("*") if p.suffix in (".py", ".sh")}
    covered = {f"{s.name}.py" for s in SCRIPTS} | HELPERS | set(EXCLUDED)
    assert scripts == covered, f"not run by this test: {sorted(scripts - covered)}; gone: {sorted(covered - scripts)}"


@pytest.mark.parametrize("script", [s.param() for s in SCRIPTS])
def test_script_quick_mode(script: Script, tmp_path):
    for module in script.needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{script.name} needs {module}")
    out = tmp_path / "out"
    runs_before = sorted((ROOT / "runs").glob("*")) if (ROOT / "runs").is_dir() else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(EXPERIMENTS / f"{script.name}.py"), "--quick", "--out-dir", str(out), *script.args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    for pattern in script.outputs:
        files = sorted(out.glob(pattern))
        assert files, f"{script.name}: no {pattern} under {out}: {sorted(p.relative_to(out) for p in out.rglob('*'))}"
        for path in files:
            data = parse(path)
            if script.check and pattern in script.check:
                script.check[pattern](data)
    runs_after = sorted((ROOT / "runs").glob("*")) if (ROOT / "runs").is_dir() else []
    assert runs_after == runs_before, f"{script.name} wrote into the repository's runs/"


def test_sim_fidelity_rescore_prices_a_stored_run_again(tmp_path):
    """`--rescore RUN_DIR` serves nothing live: it keeps the stored live columns and serves the twins
    again (the calibrated one refitted from the stored steps, the sim-trained policy loaded from the
    run's saved learner). With today's code and profile unchanged it gives back the stored run's twin
    columns, and a rescored run can be rescored in turn."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    script = str(EXPERIMENTS / "sim_fidelity.py")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, "--quick", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=240)

    folders = []
    for name in ("first", "again", "third"):
        proc = run("--out-dir", str(tmp_path / name), *(["--rescore", str(folders[-1])] if folders else []))
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        folders.append(next((tmp_path / name).glob("sim_fidelity__*")))
        assert (folders[-1] / "trained-nightjar.json").is_file() and "not found" not in proc.stdout
    first, again, third = (pd.read_csv(folder / "fidelity.csv") for folder in folders)
    assert list(again["policy"]) == list(first["policy"]) and "throughput_tok_s_sim_cal" in again
    twin = [c for c in first if "_sim" in c or "_err" in c or c.endswith(("_live", "_identical"))]
    pd.testing.assert_frame_equal(again[twin], first[twin], check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(third[twin], first[twin], check_exact=False, rtol=1e-9)
    assert json.loads((folders[1] / "args.json").read_text())["rescored_from"] == str(folders[0])
    # the calibrated twin carries the speed anchor timed before and after its calibration cells, and
    # a rescored run refits it with that same anchor (so `profile --rescale` prices it on another day)
    anchors = [json.loads((folder / "calibrated-profile.json").read_text())["speed_anchor"] for folder in folders]
    assert len(anchors[0]["measured"]) == 2 and anchors[0] == anchors[1] == anchors[2]
    (folders[2] / "calibration-steps.csv").unlink()  # a calibrated twin without its steps: refused
    proc = run("--out-dir", str(tmp_path / "fourth"), "--rescore", str(folders[2]))
    assert proc.returncode != 0 and "calibration-steps.csv is missing" in proc.stderr
    proc = run("--out-dir", str(tmp_path / "fifth"), "--rescore", str(tmp_path / "nowhere"))
    assert proc.returncode != 0 and "--rescore: no" in proc.stderr


def test_sim_fidelity_refuses_a_rescale_without_an_anchor_before_serving(tmp_path):
    """`--rescale` with a twin whose profile has no speed anchor fails in one line before any live cell
    is served (it used to fail after the warm-up cells: minutes of a vLLM run)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / "sim_fidelity.py"), "--quick", "--sim", "gpu-whatif-ngram",
                           "--rescale", "--warmup", "1", "--out-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: scenario 'gpu-whatif-ngram'")
    assert "no speed_anchor" in proc.stderr and "warm-up" not in proc.stderr + proc.stdout
    assert not list(tmp_path.glob("sim_fidelity__*"))  # nothing written
