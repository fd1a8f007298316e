"""A user's own policy class by entry point ("module:Class"): from a spec, the CLI, an experiment run
locally, on the Ray executor and on --resume; bad entry points get one clear line."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest

from nightjar_rl.cli import main
from nightjar_rl.contracts import SpecPlan
from nightjar_rl.experiments.config import experiment_from_dict
from nightjar_rl.experiments.runner import run_experiment
from nightjar_rl.policy import make_policy, policy_from_dict, policy_to_dict
from nightjar_rl.policy.resolve import resolve_policy

from .conftest import run_on_ray

MODULE = "nj_user_policies"  # a module outside the package, as a user would write it
SOURCE = textwrap.dedent('''
    import numpy as np

    from nightjar_rl.contracts import SpecPlan
    from nightjar_rl.policy import Policy
    from nightjar_rl.policy.base import batch_of


    class SmallBatchK(Policy):
        """Speculate k tokens while the batch is at most `limit` rows, else not at all."""

        type_name = "nj_user_policies:SmallBatchK"

        def __init__(self, max_k: int, k: int = 2, limit: int = 2):
            super().__init__(max_k)
            self.k, self.limit = k, limit

        def predict(self, obs: np.ndarray, deterministic: bool = True) -> int:
            return self.k if batch_of(obs) <= self.limit else 0

        def params(self) -> dict:
            return {"k": self.k, "limit": self.limit}


    class UniformPlan(Policy):
        """Returns plans instead of ints: the runtime passes them to the engine as they are."""

        def predict(self, obs, deterministic=True):
            return SpecPlan.uniform(1)


    class NotAPolicy:
        pass
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # Ray workers inherit it
    return tmp_path


def test_specs_build_the_users_class(user_module):
    policy = make_policy(f"{MODULE}:SmallBatchK", max_k=4)
    assert (type(policy).__name__, policy.k, policy.max_k) == ("SmallBatchK", 2, 4)
    policy = make_policy({"type": f"{MODULE}:SmallBatchK", "k": 3, "limit": 8}, max_k=4)
    assert (policy.k, policy.limit) == (3, 8)
    assert resolve_policy(f"{MODULE}:SmallBatchK", 4).k == 2  # the CLI's --policy resolver
    assert policy_from_dict(policy_to_dict(policy)).limit == 8  # artifacts of imported user classes load


@pytest.mark.parametrize("spec, message", [
    (f"{MODULE}:Missing", f"module '{MODULE}' has no attribute 'Missing'"),
    (f"{MODULE}:NotAPolicy", "is not a nightjar_rl.policy.Policy subclass"),
    ("no_such_module_nj:Cls", "cannot import module 'no_such_module_nj'"),
    ({"type": f"{MODULE}:SmallBatchK", "bogus": 1}, "has no field 'bogus'"),
])
def test_bad_entry_points_are_one_line(user_module, spec, message):
    with pytest.raises(ValueError, match=message) as info:
        make_policy(spec, max_k=4)
    assert "\n" not in str(info.value)


def test_artifacts_never_import_code():
    data = {"format": "nightjar-rl/policy", "version": 1, "type": "nj_never_imported_mod:Cls", "max_k": 2, "params": {}}
    with pytest.raises(ValueError, match="artifacts never import code"):
        policy_from_dict(data)


def test_cli_runs_a_users_policy_and_one_that_returns_plans(user_module, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a b a b a b"}\n{"prompt": "hello hello"}\n{"prompt": "x y z"}\n')
    base = ["bench", "--model", "tiny-random", "--max-new-tokens", "8", "--max-seq-len", "128", "--max-speculation", "4",
            "--quiet", "--prompts", str(prompts), "--num-requests", "3"]
    for name in ("SmallBatchK", "UniformPlan"):
        log = tmp_path / f"{name}.csv"
        assert main([*base, "--policy", f"{MODULE}:{name}", "--log-steps", str(log)]) == 0
        steps = pd.read_csv(log)
        assert len(steps) > 0 and steps["k"].max() <= 4
        if name == "UniformPlan":
            assert set(steps.loc[steps["batch"] > 0, "k"]) == {1}
    assert main([*base, "--policy", "no_such_module_nj:Cls"]) == 2


SWEEP = {
    "name": "user", "scenario": "tiny-sim", "rates": [5, 50], "seeds": [0, 1], "num_requests": 4, "max_new_tokens": 8,
    "policies": ["fixed-0", {"name": "mine", "spec": {"type": f"{MODULE}:SmallBatchK", "k": 3, "limit": 1}}],
}


def test_experiment_runs_a_users_policy_locally_on_ray_and_on_resume(user_module, tmp_path):
    cfg = experiment_from_dict(SWEEP, "user")
    local = run_experiment(cfg, out_dir=tmp_path / "local", progress=False)
    mine = local.results[local.results["policy"] == "mine"]
    assert len(mine) == 4 and (mine["throughput_tok_s"] > 0).all() and mine["mean_k"].between(0, 3).all()
    resumed = run_experiment(cfg, out_dir=tmp_path / "local", progress=False, resume=local.run_dir)
    pd.testing.assert_frame_equal(resumed.results, local.results)
    remote = run_on_ray(cfg, tmp_path / "ray")
    pd.testing.assert_frame_equal(local.results.drop(columns="run"), remote.results.drop(columns="run"))


def test_plan_returning_policy_drives_the_env_driver(user_module):
    policy = make_policy(f"{MODULE}:UniformPlan", max_k=3)
    assert policy.predict(None) == SpecPlan.uniform(1)
