"""Prompt files, arrivals and the serving loop's clock."""

import numpy as np
import pytest

from nightjar_rl.decoding import NgramDrafter, Request, SpeculativeEngine
from nightjar_rl.runtime import serve
from nightjar_rl.serving import WorkloadError, load_prompts, poisson_arrivals, summarize


def test_bundled_prompts_have_three_families():
    records = load_prompts()
    assert {r.family for r in records} == {"grounded", "code", "chat"}
    assert len({r.id for r in records}) == len(records)


def test_family_filter_and_unknown_family():
    assert {r.family for r in load_prompts(families=["code"])} == {"code"}
    with pytest.raises(WorkloadError, match=r"no prompts of family poetry \(its families: chat, code, grounded\)"):
        load_prompts(families=["poetry"])


def test_poisson_arrivals_are_seeded_and_have_the_right_rate():
    a = poisson_arrivals(2000, 5.0, np.random.default_rng(7))
    b = poisson_arrivals(2000, 5.0, np.random.default_rng(7))
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert abs(2000 / a[-1] - 5.0) < 0.5
    assert np.all(poisson_arrivals(4, None, np.random.default_rng(0)) == 0)
    with pytest.raises(WorkloadError):
        poisson_arrivals(3, -1.0, np.random.default_rng(0))


def test_serving_clock_jumps_to_arrivals_and_times_requests(tiny_target):
    engine = SpeculativeEngine(tiny_target, NgramDrafter(), max_batch_size=4, max_seq_len=64)
    requests = [Request("early", [1, 2, 3], 5, 0.0), Request("late", [4, 5, 6], 5, 1000.0)]
    result = serve(engine, requests, k=2, progress=False)
    df = result.requests.set_index("request_id")
    assert df.loc["late", "first_token"] >= 1000.0 > df.loc["early", "finish"]
    assert (df["ttft"] > 0).all() and (df["e2e"] >= df["ttft"]).all()
    assert result.duration >= 1000.0
    summary = summarize(result)
    assert summary["requests"] == 2 and summary["output_tokens"] == 10


def test_serve_drives_a_policy_and_feeds_it_every_step(tiny_target):
    from nightjar_rl.policy.baselines import FixedK

    class Recording(FixedK):
        def __init__(self):
            super().__init__(3, 4)
            self.seen, self.observations = [], []

        def predict(self, obs, deterministic=True):
            self.observations.append(obs.copy())
            return 0 if len(self.seen) == 0 else 3

        def observe(self, stats):
            self.seen.append(stats)

    engine = SpeculativeEngine(tiny_target, NgramDrafter(), max_batch_size=2, max_seq_len=64, max_speculation=4)
    policy = Recording()
    result = serve(engine, [Request("a", [1, 2], 6)], k=policy, progress=False)
    assert len(policy.seen) == len(result.steps) == len(policy.observations)
    assert [s.k for s in policy.seen] == [0] + [3] * (len(policy.seen) - 1)
    assert policy.observations[0][0] == 0 and policy.observations[1][0] == 1  # batch size before each step
