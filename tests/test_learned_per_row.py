"""Learned per-row policies (issue 20): the action -> budget/cutoff -> allocation rules on hand-computed
cases, SB3 training through the rule on tiny-sim, the SB3-free artifact against SB3 itself, and the
learned policies inside a tiny per-row study."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nightjar_rl.contracts import SpecPlan
from nightjar_rl.contracts.observation import Observation, RowBatch, obs_size
from nightjar_rl.env.backend import make_backend
from nightjar_rl.env.scenario import load_scenario
from nightjar_rl.env.workload import sample_requests
from nightjar_rl.experiments.fields import ExperimentError
from nightjar_rl.experiments.sb3_config import parse_sb3_spec
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.policy import LearnedBudget, LearnedRowScorer, load_policy, make_policy, save_policy
from nightjar_rl.policy.base import make_observation
from nightjar_rl.policy.learned_per_row import BudgetScale, LearnedPerRow, SurvivalThreshold, plan_rule
from nightjar_rl.runtime.driver import PolicyDriver
from nightjar_rl.serving.arrivals import PoissonArrivals
from nightjar_rl.serving.session import ServingSession

MAX_K = 2


def hand_profile() -> HardwareProfile:
    # as tests/test_per_row.py: 2 rows, 10 ms at 1 token per row, 16 ms at 3; n-gram lookup 0.5 ms per drafting row
    return HardwareProfile({"2": {"1": 10.0, "3": 16.0}}, ngram_lookup_ms_per_row=0.5)


def rows(alphas, proposals=None) -> RowBatch:
    n = len(alphas)
    return RowBatch(tuple(f"r{i}" for i in range(n)), np.array(alphas, dtype=float), np.ones(n, int),
                    np.array(proposals if proposals is not None else [-1] * n), np.zeros(n, int), np.full(n, 100),
                    np.full(n, 10))


def obs_with(batch: RowBatch) -> Observation:
    return Observation(np.zeros(obs_size(MAX_K), np.float32), batch)


def plan(**lengths) -> SpecPlan:
    return SpecPlan.per_row(lengths)


def constant_network(n_actions: int, action: int) -> dict:
    """A one-layer network whose argmax is always `action` (zero weights, a one-hot bias)."""
    bias = np.zeros(n_actions, np.float32)
    bias[action] = 1.0
    return {"weights": {"layers.0.weight": np.zeros((n_actions, obs_size(MAX_K)), np.float32), "layers.0.bias": bias},
            "layers": ["linear"]}


# ---- the rules by hand ------------------------------------------------------------------------------------
def test_budget_action_to_budget_to_allocation_on_a_hand_computed_case():
    """Rows with alpha 0.9 and 0.5: the allocator's B* is 2 (tests/test_per_row.py: E/T = .2, .2417, .2748,
    .2716, .2624 for B = 0..4), slots by survival .9 (r0), .81 (r0), .5 (r1), .25 (r1). Scales 0, .5, 1, 1.5,
    2, 3 -> B = 0, 1, 2, 3, 4, min(6, 4 usable) -> lengths [0,0], [1,0], [2,0], [2,1], [2,2], [2,2]."""
    rule = BudgetScale(MAX_K, hand_profile(), levels=[0, 0.5, 1, 1.5, 2, 3])
    obs = obs_with(rows([0.9, 0.5]))
    expected = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (2, 2)]
    assert [rule.plan(obs, a) for a in range(6)] == [plan(r0=x, r1=y) for x, y in expected]
    # scale 1 is adaptive_budget itself
    assert rule.plan(obs, 2) == make_policy({"type": "adaptive_budget", "profile": hand_profile().to_dict()},
                                            MAX_K).predict(obs)
    # without rows: the allocator's uniform k at batch 2, alpha 0.6 is 2 (E/T .2, 3.2/14 = .2286, 3.92/17 = .2306),
    # scaled half-up and capped at max_k
    vector = make_observation(MAX_K, batch_size=2, fi_acceptance=0.6, fi_known=1)
    assert [rule.plan(vector, a) for a in (0, 1, 2, 4, 5)] == [0, 1, 2, 2, 2]
    assert rule.plan(obs_with(rows([])), 2) == 0
    with pytest.raises(ValueError, match="action must be an int in"):
        rule.plan(obs, 6)


def test_threshold_action_to_allocation_on_a_hand_computed_case():
    """Survival [[.9, .81], [.5, .25]]: cutoffs 1, .85, .5, .2, 0 -> [0,0], [1,0], [2,1], [2,2], [2,2]; a row
    whose proposal holds 1 token has survival 0 at depth 2 and never drafts it, whatever the cutoff."""
    rule = SurvivalThreshold(MAX_K, hand_profile(), levels=[1.0, 0.85, 0.5, 0.2, 0.0])
    obs = obs_with(rows([0.9, 0.5]))
    expected = [(0, 0), (1, 0), (2, 1), (2, 2), (2, 2)]
    assert [rule.plan(obs, a) for a in range(5)] == [plan(r0=x, r1=y) for x, y in expected]
    assert rule.plan(obs_with(rows([0.9, 0.5], proposals=[1, -1])), 4) == plan(r0=1, r1=2)
    # without rows: depths j with alpha^j >= cutoff, alpha 0.6: .6, .36
    vector = make_observation(MAX_K, batch_size=2, fi_acceptance=0.6, fi_known=1)
    assert [rule.plan(vector, a) for a in range(5)] == [0, 0, 1, 2, 2]
    with pytest.raises(ValueError, match="levels must be finite and in"):
        SurvivalThreshold(MAX_K, hand_profile(), levels=[1.5])


@pytest.mark.parametrize("cls,action,expected", [(LearnedBudget, 3, (2, 1)), (LearnedRowScorer, 1, (1, 0))])
def test_learned_policy_is_its_network_then_its_rule_and_round_trips(tmp_path, cls, action, expected):
    levels = [0, 0.5, 1, 1.5] if cls is LearnedBudget else [1.0, 0.85, 0.5]
    policy = cls(MAX_K, hand_profile(), levels=levels, **constant_network(len(levels), action))
    obs = obs_with(rows([0.9, 0.5]))
    assert policy.action(obs) == action and policy.predict(obs) == plan(r0=expected[0], r1=expected[1])
    path = save_policy(policy, tmp_path / "learned.json")
    loaded = load_policy(path)
    assert type(loaded) is cls
    assert loaded.rule.levels == levels and loaded.predict(obs) == policy.predict(obs)
    assert (tmp_path / "learned.safetensors").is_file() and loaded.learning is False
    with pytest.raises(ValueError, match=rf"network has 5 outputs, expected len\(levels\) = {len(levels)}"):
        cls(MAX_K, hand_profile(), levels=levels, **constant_network(5, 0))


def test_per_row_field_of_sb3_specs_is_checked():
    base = {"type": "sb3", "algo": "PPO", "total_timesteps": 10, "train_on": "sim"}
    spec = parse_sb3_spec({**base, "per_row": {"type": "learned-budget", "profile": "scenario"}})
    assert spec.per_row == {"type": "learned-budget", "profile": "scenario"}
    with pytest.raises(ExperimentError, match=r"per_row' type must be one of learned_budget, learned_row_scorer"):
        parse_sb3_spec({**base, "per_row": {"type": "adaptive_budget", "profile": "scenario"}})
    with pytest.raises(ExperimentError, match=r"per_row' has no field 'budget'"):
        parse_sb3_spec({**base, "per_row": {"type": "learned_budget", "profile": "scenario", "budget": 3}})
    with pytest.raises(ExperimentError, match=r"per_row' needs field 'profile'"):
        parse_sb3_spec({**base, "per_row": {"type": "learned_budget"}})


# ---- SB3: training through the rule, and the export against SB3 --------------------------------------------
def train_tiny(run_dir, kind: str):
    from nightjar_rl.experiments.sb3_train import train_sb3

    spec = parse_sb3_spec({"type": "sb3", "algo": "PPO", "train_on": "sim", "total_timesteps": 256, "n_envs": 2,
                           "n_steps": 64, "batch_size": 64, "n_epochs": 2, "checkpoint_every": 256, "eval": {"every": 0},
                           "per_row": {"type": kind, "profile": "scenario"}})
    scenario = load_scenario("tiny-sim")
    return train_sb3(spec, scenario, run_dir, kind, rates=[50.0, 200.0], num_requests=4, seed=3, progress=False)


@pytest.fixture(scope="module", params=["learned_budget", "learned_row_scorer"])
def trained(request, tmp_path_factory):
    pytest.importorskip("stable_baselines3")
    run_dir = tmp_path_factory.mktemp(request.param)
    return request.param, run_dir, train_tiny(run_dir, request.param)


def test_training_runs_on_tiny_sim_and_the_export_equals_sb3(trained):
    """A few hundred PPO steps on tiny-sim whose envs step with the rule's plans; the SB3-free artifact's
    action equals SB3's deterministic action (and its plan the rule's plan of that action) on observations
    of a fresh episode."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from nightjar_rl.experiments.sb3_train import latest_checkpoint, make_env
    from nightjar_rl.policy.sb3 import sb3_predictions

    kind, run_dir, result = trained
    assert result.timesteps >= 256 and result.export_mismatches == 0
    policy = load_policy(result.artifact)
    assert policy.type_name == kind and policy.max_k == 4 and policy.provenance["algorithm"] == "PPO"
    steps, model_zip, stats = latest_checkpoint(run_dir / "checkpoints" / kind)
    scenario = load_scenario("tiny-sim")
    rule = plan_rule({"type": kind, "profile": policy.params()["profile"]}, scenario.max_k)
    env = make_env(scenario, None, [200.0], 6, rule=rule)
    vec_normalize = VecNormalize.load(str(stats), DummyVecEnv([lambda: env]))
    model = PPO.load(model_zip, device="cpu")
    observations, rng = [], np.random.default_rng(0)
    obs, _ = env.reset(seed=11)
    for _ in range(200):
        observations.append(obs)
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(rule.n_actions)))
        if terminated or truncated:
            obs, _ = env.reset()
    assert any(o.rows is not None and len(o.rows) > 1 for o in observations)
    sb3 = sb3_predictions(model, np.array(observations), vec_normalize)
    ours = [policy.action(o) for o in observations]
    assert ours == sb3.tolist()
    assert all(policy.predict(o) == rule.plan(o, int(a)) for o, a in zip(observations, sb3))


def test_learned_policies_in_a_tiny_per_row_study(trained, tmp_path):
    """Learned per-row artifacts are policies of a study like the others: the study compares them with the
    allocator per load (learned_table.csv, a goal line)."""
    from nightjar_rl.experiments.per_row_study import run_per_row_study

    kind, _, result = trained
    study = {"name": "learned_tiny", "scenarios": ["tiny-sim"], "verify_layout": "packed", "concurrency": [1, 4],
             "seeds": [0, 1], "num_requests": 6, "max_new_tokens": 8, "slo": {"tpot_s": 0.05},
             "per_step": ["k0", "k2"], "per_row": ["adaptive_budget", kind],
             "learned": {"policies": [kind], "against": "adaptive_budget"},
             "policies": [{"name": "k0", "spec": "fixed-0"}, {"name": "k2", "spec": "fixed-2"},
                          {"name": "adaptive_budget", "spec": {"type": "adaptive_budget", "profile": "scenario"}},
                          {"name": kind, "spec": str(result.artifact)}],
             "train": {"episodes": 0}, "evaluate": {"learn": False}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = run_per_row_study(path, tmp_path / "runs", progress=False)
    table = pd.read_csv(out.out_dir / "learned_table.csv")
    assert table["best_per_row"].eq(kind).all() and table["best_per_step"].eq("adaptive_budget").all()
    assert table["paired_ratio"].gt(0).all() and not table["paired_ratio"].isna().any()
    assert "learned per-row >= adaptive_budget within the intervals at every load:" in out.summary
    bad = {**study, "learned": {"policies": [kind], "against": kind}}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ExperimentError, match="field 'learned' must be"):
        run_per_row_study(path, tmp_path / "runs2", progress=False)


def test_unknown_acceptance_uses_the_prior():
    """Rows with nothing known yet are scored at prior_acceptance (0.5 here), not at zero."""
    rule = SurvivalThreshold(MAX_K, hand_profile(), levels=[0.4])
    assert rule.plan(obs_with(rows([math.nan, 0.3])), 0) == plan(r0=1, r1=0)


def test_shipped_learned_per_row_artifacts_load_without_sb3_and_plan_per_row():
    """Every policies/per-row-*.json is a learned per-row policy that loads with numpy alone (no
    stable-baselines3 imported) and plans per row on the observations of its scenario's simulator."""
    root = Path(__file__).resolve().parents[1]
    shipped = sorted((root / "policies").glob("per-row-*.json"))
    assert shipped, "no learned per-row policy shipped under policies/"
    for path in shipped:
        code = (f"import sys; from nightjar_rl.policy import load_policy; load_policy({str(path)!r}); "
                "assert 'stable_baselines3' not in sys.modules, 'stable_baselines3 was imported'")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
        policy = load_policy(path)
        assert isinstance(policy, LearnedPerRow) and policy.max_k == 4
        scenario = load_scenario(policy.provenance["scenario"].removesuffix("-packed"))
        backend = make_backend(scenario)
        requests = sample_requests(backend.prompt_pool, PoissonArrivals(math.inf), 32, 16, np.random.default_rng(0))
        driver = PolicyDriver(ServingSession(backend.make_engine(0), requests, 32), scenario.max_k, policy)
        driver.start()
        plans = []
        for _ in range(6):
            plans.append(driver.decide())
            driver.act(plans[-1])
        assert any(isinstance(p, SpecPlan) and len(p.lengths) > 1 for p in plans), plans
