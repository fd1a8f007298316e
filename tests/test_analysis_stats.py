"""Confidence intervals over seeds, checked against hand-computed values, and the study headline."""

import math

import pandas as pd
import pytest

from nightjar_rl.analysis.stats import ci_table, format_ci, intervals_overlap, t_interval
from nightjar_rl.analysis.study import headline, relative_score, training_spread, verdict


def test_t_interval_hand_computed():
    # values 1, 2, 3, 4: mean 2.5, sd = sqrt(5/3) = 1.2910, t(0.975, 3) = 3.1824
    mean, half, n = t_interval([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4)
    assert half == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-9)  # 2.0542
    # two values 10, 12: sd = sqrt(2), t(0.975, 1) = 12.7062 -> half = 12.7062
    assert t_interval([10, 12])[1] == pytest.approx(12.70620474, rel=1e-9)
    # 90%: t(0.95, 3) = 2.3534
    assert t_interval([1, 2, 3, 4], 0.9)[1] == pytest.approx(2.353363435 * math.sqrt(5 / 3) / 2, rel=1e-9)
    assert math.isnan(t_interval([5.0])[1]) and t_interval([float("nan"), 5.0])[2] == 1
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1, 2], 1.5)


def test_ci_table_averages_replicates_within_a_seed():
    df = pd.DataFrame({
        "policy": ["a"] * 6 + ["b"] * 2,
        "rate": [1.0] * 8,
        "seed": [0, 0, 1, 1, 2, 2, 0, 1],
        "x": [1.0, 3.0, 2.0, 4.0, 5.0, 5.0, 7.0, 7.0],  # a: per-seed means 2, 3, 5
    })
    ci = ci_table(df, "x").set_index("policy")
    assert ci.loc["a", "mean"] == pytest.approx(10 / 3)
    assert ci.loc["a", "n"] == 3
    sd = math.sqrt(((2 - 10 / 3) ** 2 + (3 - 10 / 3) ** 2 + (5 - 10 / 3) ** 2) / 2)
    assert ci.loc["a", "half"] == pytest.approx(4.302652730 * sd / math.sqrt(3), rel=1e-9)
    assert ci.loc["b", "half"] == 0.0
    assert format_ci(ci.reset_index()).loc["b", "1/s"] == "7.0 ± 0.0"
    assert intervals_overlap(ci.loc["a"], ci.loc["b"])  # a reaches beyond 7
    assert not intervals_overlap({"low": 0, "high": 1, "half": 0.5}, {"low": 2, "high": 3, "half": 0.5})
    with pytest.raises(ValueError, match="column 'y'"):
        ci_table(df, "y")


def _study_frame():
    rows = []
    tput = {"k0": {1: 10, 100: 100}, "k2": {1: 10, 100: 60}, "nj": {1: 10, 100: 120}}
    for policy, by_rate in tput.items():
        for rate, v in by_rate.items():
            for seed, noise in enumerate((-1.0, 0.0, 1.0)):
                rows.append({"policy": policy, "rate": float(rate), "seed": seed, "throughput_tok_s": v + noise,
                             "learned": policy == "nj", "replicate": 0})
    return pd.DataFrame(rows)


def test_headline_and_verdict():
    df = _study_frame()
    assert list(relative_score(df, ["k0", "k2"]).index) == ["k0", "k2"]
    table = headline(df, ["nj"], ["k0", "k2"])
    hi = table.iloc[-1]
    assert hi["single_fixed"] == "k0" and hi["vs_single"] == pytest.approx(1.2) and hi["apart_from_single"]
    lines = verdict(table)
    assert "1.200x" in lines[0] and "met" in lines[0] and "NOT" not in " ".join(lines)
    spread = training_spread(df)
    assert list(spread["policy"].unique()) == ["nj"] and (spread["spread"] == 0).all()
