import pytest

from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.policy import (
    BatchSizeTable,
    DisableByBatchSize,
    FixedK,
    GoodputOracle,
    HFHeuristic,
    Hysteresis,
    NightjarBandit,
    ThompsonBandit,
    UCB1Bandit,
    make_policy,
)

MAX_K = 6


def test_dict_specs(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(__import__("json").dumps(HardwareProfile({"1": {"1": 10.0}}).to_dict()))
    cases = [
        ({"type": "fixed", "k": 3}, FixedK),
        ({"type": "nightjar", "epsilon": 0.2}, NightjarBandit),
        ({"type": "table", "preset": "mlc_llm"}, BatchSizeTable),
        ({"type": "disable_by_batch_size", "k": 4, "threshold": 8}, DisableByBatchSize),
        ({"type": "hf_heuristic"}, HFHeuristic),
        ({"type": "oracle", "profile": str(path)}, GoodputOracle),
        ({"type": "ucb1"}, UCB1Bandit),
        ({"type": "thompson", "seed": 4}, ThompsonBandit),
        ({"type": "hysteresis", "policy": "fixed-2", "dwell": 5}, Hysteresis),
        ({"type": "Disable-By-Batch-Size", "k": 1, "threshold": 2, "max_k": MAX_K}, DisableByBatchSize),
    ]
    for spec, cls in cases:
        policy = make_policy(spec, MAX_K)
        assert type(policy) is cls and policy.max_k == MAX_K
    assert make_policy({"type": "nightjar", "epsilon": 0.2}, MAX_K).epsilon == 0.2


def test_string_specs():
    assert make_policy("fixed-3", MAX_K).k == 3
    assert make_policy("off", MAX_K).k == 0
    assert make_policy("table-mlc_llm", MAX_K).preset == "mlc_llm"
    assert make_policy("hf-heuristic-3", MAX_K).start_k == 3
    assert isinstance(make_policy("hf_heuristic", MAX_K), HFHeuristic)
    assert isinstance(make_policy("thompson", MAX_K), ThompsonBandit)


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"type": "nope"}, "unknown policy type 'nope'"),
        ({"k": 3}, "no 'type'"),
        ({"type": "fixed"}, "needs field"),
        ({"type": "fixed", "k": 3, "kk": 1}, "no field 'kk'"),
        ({"type": "nightjar", "epsilon": 0.2, "epsilonn": 1}, "no field 'epsilonn'"),
        ({"type": "fixed", "k": 3, "max_k": 4}, "max_k"),
        ({"type": "table", "preset": "nope"}, "unknown table preset"),
        ({"type": "oracle"}, "needs field"),
        ("fixed-x", "k must be int"),
        ("nightjar-2", "takes no argument"),
        ("banana", "unknown policy 'banana'"),
        (3, "dict or a string"),
    ],
)
def test_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        make_policy(spec, MAX_K)


def test_policy_instance_passthrough_checks_max_k():
    p = FixedK(1, MAX_K)
    assert make_policy(p, MAX_K) is p
    with pytest.raises(ValueError, match="max_k"):
        make_policy(p, 3)
