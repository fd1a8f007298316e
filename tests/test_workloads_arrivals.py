"""Gamma (burstiness) arrivals against their theoretical moments, arrival-trace replay with
time-scaling and token counts, and the arrival registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nightjar_rl.env.workload import PromptPool, sample_requests
from nightjar_rl.serving.arrivals import (
    ARRIVALS,
    GammaArrivals,
    PoissonArrivals,
    TraceArrivals,
    arrivals_from_dict,
    at_rate,
)
from nightjar_rl.serving.workload import WorkloadError


@pytest.mark.parametrize("rate, burstiness", [(4.0, 0.5), (2.0, 1.0), (10.0, 4.0)])
def test_gamma_interval_moments(rate, burstiness):
    """shape = b, scale = 1/(rate b): mean 1/rate, variance b (1/(rate b))^2 = 1/(b rate^2), CV^2 = 1/b.
    Tolerances are 5 standard errors: SE(mean) = sd/sqrt(n); SE(var) = var sqrt((kurtosis - 1)/n),
    with a gamma's kurtosis 3 + 6/b."""
    n = 200_000
    times = GammaArrivals(rate, burstiness).sample(n, np.random.default_rng(11))
    gaps = np.diff(np.concatenate([[0.0], times]))
    mean, var = 1.0 / rate, 1.0 / (burstiness * rate ** 2)
    assert abs(gaps.mean() - mean) < 5 * math.sqrt(var / n)
    assert abs(gaps.var(ddof=1) - var) < 5 * var * math.sqrt((2 + 6 / burstiness) / n)
    assert abs(gaps.var(ddof=1) / gaps.mean() ** 2 - 1 / burstiness) < 0.05 / burstiness + 0.02
    assert np.array_equal(times, GammaArrivals(rate, burstiness).sample(n, np.random.default_rng(11)))


def test_gamma_specs_and_errors():
    assert arrivals_from_dict({"kind": "gamma", "rate": 3, "burstiness": 0.25}) == GammaArrivals(3.0, 0.25)
    assert arrivals_from_dict({"kind": "gamma", "rate": 3}) == GammaArrivals(3.0, 1.0)
    for spec, field in (({"kind": "gamma", "rate": 3, "burstiness": 0}, "arrivals.burstiness"),
                        ({"kind": "gamma", "burstiness": 2}, "arrivals.rate"),
                        ({"kind": "gamma", "rate": 1, "shape": 2}, "shape")):
        with pytest.raises(WorkloadError, match=field):
            arrivals_from_dict(spec)
    assert set(ARRIVALS) == {"poisson", "gamma", "piecewise", "trace"}


def test_trace_replay_is_time_scaled_to_a_rate(tmp_path):
    path = tmp_path / "azure.csv"
    # unsorted rows, a time column named as in public traces, token counts
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n13,30,3\n10,10,1\n16,40,4\n11,20,2\n")
    raw = TraceArrivals(str(path))
    assert raw.load().tolist() == [0.0, 1.0, 3.0, 6.0]
    assert raw.table()["prompt_tokens"].tolist() == [10, 20, 30, 40]
    assert raw.budgets(3).tolist() == [1, 2, 3]
    # 4 arrivals over 6 s: mean rate (4 - 1) / 6 = 0.5/s; at 1/s every gap halves
    scaled = arrivals_from_dict({"kind": "trace", "path": "azure.csv", "rate": 1.0}, tmp_path)
    assert scaled.sample(10, None).tolist() == [0.0, 0.5, 1.5, 3.0]
    assert at_rate(scaled, 2.0).sample(10, None).tolist() == [0.0, 0.25, 0.75, 1.5]
    stamps = tmp_path / "stamps.csv"
    stamps.write_text("timestamp\n2023-11-16 18:15:46.5\n2023-11-16 18:15:46.0\n2023-11-16 18:15:48.0\n")
    assert TraceArrivals(str(stamps)).load().tolist() == [0.0, 0.5, 2.0]
    (tmp_path / "bad.csv").write_text("when\n1\n")
    with pytest.raises(WorkloadError, match="no time column"):
        TraceArrivals(str(tmp_path / "bad.csv")).load()
    (tmp_path / "one.csv").write_text("time\n5\n")
    with pytest.raises(WorkloadError, match="two or more distinct times"):
        TraceArrivals(str(tmp_path / "one.csv"), 2.0).load()


def test_rate_sweeps_keep_the_process_shape(tmp_path):
    assert at_rate(GammaArrivals(1.0, 0.2), 5.0) == GammaArrivals(5.0, 0.2)
    assert at_rate(PoissonArrivals(1.0), 5.0) == PoissonArrivals(5.0)
    (tmp_path / "t.txt").write_text("0\n1\n")
    assert at_rate(TraceArrivals(str(tmp_path / "t.txt")), 5.0) == PoissonArrivals(5.0)  # a plain trace: as before


def test_trace_token_counts_cap_request_budgets(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time,output_tokens\n0,2\n1,50\n2,0\n")
    pool = PromptPool(["a", "b", "c"], [[1, 2], [3, 4], [5, 6]])
    reqs = sample_requests(pool, TraceArrivals(str(path)), 3, 8, np.random.default_rng(0))
    assert [r.max_new_tokens for r in reqs] == [2, 8, 1] and [r.arrival_time for r in reqs] == [0.0, 1.0, 2.0]
