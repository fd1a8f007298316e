"""Arrival processes: seeded, piecewise schedules, trace files."""

import numpy as np
import pytest

from nightjar_rl.serving.arrivals import (
    PiecewiseArrivals,
    PoissonArrivals,
    TraceArrivals,
    arrivals_from_dict,
)
from nightjar_rl.serving.workload import WorkloadError


def test_poisson_is_seeded():
    a = PoissonArrivals(2.0).sample(50, np.random.default_rng(7))
    b = PoissonArrivals(2.0).sample(50, np.random.default_rng(7))
    c = PoissonArrivals(2.0).sample(50, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a) >= 0)
    assert np.array_equal(PoissonArrivals(float("inf")).sample(4, np.random.default_rng(0)), np.zeros(4))


def test_piecewise_rate_changes_within_episode():
    proc = PiecewiseArrivals(((100.0, 0.5), (100.0, 5.0), (100.0, 0.5)))
    times = proc.sample(10_000, np.random.default_rng(0))
    counts = np.histogram(times, bins=[0, 100, 200, 300])[0]
    assert counts[1] > 4 * counts[0] and counts[1] > 4 * counts[2]
    assert times.max() < 300 and np.all(np.diff(times) > 0)
    assert proc.rate_at(150) == 5.0 and proc.rate_at(301) == 0.0
    again = proc.sample(10_000, np.random.default_rng(0))
    assert np.array_equal(times, again)
    assert len(proc.sample(5, np.random.default_rng(0))) == 5  # capped at n


def test_trace_file(tmp_path):
    path = tmp_path / "trace.txt"
    path.write_text("# seconds\n3.5\n2.0\n\n4.0\n")
    times = TraceArrivals(str(path)).sample(10, np.random.default_rng(0))
    assert times.tolist() == [0.0, 1.5, 2.0]
    csv = tmp_path / "trace.csv"
    csv.write_text("arrival_time,other\n1,0\n2,0\n")
    assert arrivals_from_dict({"kind": "trace", "path": "trace.csv"}, tmp_path).sample(1, None).tolist() == [0.0]
    path.write_text("1\nsoon\n")
    with pytest.raises(WorkloadError, match="not a number"):
        TraceArrivals(str(path)).load()


@pytest.mark.parametrize("spec, field", [
    ({"kind": "poisson"}, "arrivals.rate"),
    ({"kind": "poisson", "rate": 1, "burst": 2}, "burst"),
    ({"kind": "piecewise", "schedule": [[1, -1]]}, "arrivals.schedule[0]"),
    ({"kind": "piecewise", "schedule": "low"}, "arrivals.schedule"),
    ({"rate": 1}, "arrivals.kind"),
])
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(WorkloadError, match=field.replace("[", r"\[").replace("]", r"\]")):
        arrivals_from_dict(spec)
