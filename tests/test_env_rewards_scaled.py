"""The per_row reward option, pinned on hand-computed steps."""

import pytest

from nightjar_rl.contracts.rewards import make_reward
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.env.scenario import ScenarioError, load_scenario

# 3 decoded rows emitting 4, 2, 1 tokens plus 1 newly prefilled request (its first token): 8 tokens,
# 4 rows that received tokens, in 0.2 s of which 0.05 s prefill
STEP = StepStats(step=0, k=3, batch_size=3, num_waiting=0, num_prefilled=1, emitted=[4, 2, 1], prefill_emitted=1,
                 prefill_time=0.05, wall_time=0.2)


@pytest.mark.parametrize("name, kwargs, raw, per_row", [
    ("throughput", {}, 8 / 0.2, 8 / 0.2 / 4),  # 40 tok/s, 10 tok/s per request
    ("decode_throughput", {}, 7 / 0.15, 7 / 0.15 / 3),  # decode round only: 3 decoded rows
    # SLO 0.06 s/token: row 0 (0.2/4 = 0.05) meets it, rows 1-2 (0.1, 0.2) do not; prefill tokens count
    ("goodput", {"tpot_slo_s": 0.06}, (4 + 1) / 0.2, (4 + 1) / 0.2 / 4),
    ("latency", {}, -0.2 / 8, -0.2 / 8 * 4),  # -0.1 s per token per request: the step's TPOT
])
def test_per_row_divides_by_rows_that_got_tokens(name, kwargs, raw, per_row):
    assert make_reward(name, **kwargs)(STEP) == pytest.approx(raw)
    assert make_reward(name, per_row=True, **kwargs)(STEP) == pytest.approx(per_row)


def test_per_row_keeps_the_magnitude_flat_across_load():
    light = StepStats(step=0, k=2, batch_size=1, num_waiting=0, num_prefilled=0, emitted=[3], wall_time=0.1)
    heavy = StepStats(step=0, k=2, batch_size=32, num_waiting=5, num_prefilled=0, emitted=[3] * 32, wall_time=0.1)
    raw, scaled = make_reward("throughput"), make_reward("throughput", per_row=True)
    assert raw(heavy) == pytest.approx(32 * raw(light))
    assert scaled(heavy) == pytest.approx(scaled(light)) == pytest.approx(30.0)
    prefill_only = StepStats(step=0, k=2, batch_size=0, num_waiting=0, num_prefilled=2, prefill_emitted=2, wall_time=0.1)
    assert scaled(prefill_only) == pytest.approx(10.0)


def test_per_row_must_be_a_boolean_in_scenarios():
    tiny = load_scenario("tiny")
    assert tiny.replace(reward="goodput", reward_kwargs={"per_row": True, "tpot_slo_s": 0.1}).reward == "goodput"
    with pytest.raises(ScenarioError, match="reward_kwargs.*per_row must be true or false"):
        tiny.replace(reward_kwargs={"per_row": "yes"})
