"""`profile --from-steps`: the clock model fitted to step logs recovers a known cost function."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nightjar_rl.cli import main
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.sim.calibrate import CalibrationError, calibrate, fit_part, read_step_logs

VERIFY = (20.0, 1.5, 0.8, 2.0)  # ms: a0 + a1 rows + a2 scored + a3 scored * context / 1000
PREFILL = (5.0, 0.3, 0.4)  # ms: p0 + p1 T + p2 T^2 / 1000
OVERHEAD = (2.0, 0.25)  # ms: o0 + o1 rows
LOOKUP = 0.05  # ms per drafting row


def synthetic_log(n: int = 400, noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Steps of a made-up engine whose every part costs exactly the functions above (times in s)."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(1, 33, n)
    per_row = rng.integers(1, 6, n)
    scored = batch * per_row
    context = rng.integers(40, 600, n)
    prefill = np.where(rng.random(n) < 0.3, rng.integers(8, 400, n), 0)
    drafting = np.where(per_row > 1, batch, 0)
    verify_ms = VERIFY[0] + VERIFY[1] * batch + VERIFY[2] * scored + VERIFY[3] * scored * context / 1000
    prefill_ms = np.where(prefill > 0, PREFILL[0] + PREFILL[1] * prefill + PREFILL[2] * prefill**2 / 1000, 0)
    overhead_ms = OVERHEAD[0] + OVERHEAD[1] * batch
    lookup_ms = LOOKUP * drafting

    def jitter(x):
        return x * (1 + noise * rng.standard_normal(n))

    verify_ms, prefill_ms, overhead_ms = jitter(verify_ms), jitter(prefill_ms), jitter(overhead_ms)
    model = verify_ms + prefill_ms
    return pd.DataFrame(dict(
        batch=batch, verify_time=verify_ms / 1000, prefill_time=prefill_ms / 1000, draft_time=lookup_ms / 1000,
        model_time=model / 1000, wall_time=(model + lookup_ms + overhead_ms) / 1000, scored_tokens=scored,
        context=context, prefill_padded_tokens=prefill, drafting_rows=drafting,
    ))


def test_exact_steps_give_the_coefficients_back():
    log = synthetic_log()
    assert np.allclose(fit_part(log, "verify"), VERIFY, rtol=1e-6)
    assert np.allclose(fit_part(log, "prefill"), PREFILL, rtol=1e-6)
    assert np.allclose(fit_part(log, "overhead"), OVERHEAD, rtol=1e-6)


def test_hand_computed_fit_on_four_steps():
    # two parameters, two exact points each side: overhead 3 ms at 4 rows, 5 ms at 12 rows -> 2 + 0.25 rows
    log = pd.DataFrame(dict(batch=[4, 12, 4, 12], wall_time=[0.003, 0.005, 0.003, 0.005], model_time=[0.0] * 4,
                            draft_time=[0.0] * 4))
    assert np.allclose(fit_part(log, "overhead"), [2.0, 0.25])


def test_calibrated_profile_prices_steps_as_the_engine_cost_them():
    result = calibrate(synthetic_log(noise=0.02), holdout=0.25, seed=1, device="synthetic", model="made-up")
    profile = HardwareProfile.from_dict(result.profile)
    assert np.allclose(result.coefficients["verify"], VERIFY, rtol=0.1)
    assert result.lookup_ms_per_row == pytest.approx(LOOKUP)
    # inside the grid the tabulated profile is the fitted function (bilinear in rows x tokens, linear in context)
    a = result.coefficients["verify"]
    for rows, scored, ctx in ((1, 1, 40), (7, 21, 333), (32, 160, 599), (13, 13, 100)):
        want = a[0] + a[1] * rows + a[2] * scored + a[3] * scored * ctx / 1000
        assert profile.verify_step_ms(rows, scored, ctx) == pytest.approx(want, rel=1e-5)
    o = result.coefficients["overhead"]
    assert profile.overhead_time_ms(9) == pytest.approx(o[0] + 9 * o[1], rel=1e-5)
    errors = result.errors.set_index("part")
    assert errors.loc["wall", "steps"] == pytest.approx(100, abs=30)
    assert abs(errors.loc["wall", "total_pct_error"]) < 1.0  # 2% noise per step averages out
    assert errors.loc["verify", "mean_abs_pct_error"] < 3.0


def test_from_steps_cli_writes_a_loadable_profile(tmp_path, capsys):
    log = tmp_path / "steps.csv"
    synthetic_log().to_csv(log, index=False)
    out = tmp_path / "fitted.json"
    assert main(["profile", "--from-steps", str(log), "--out", str(out), "--device-name", "box"]) == 0
    profile = HardwareProfile.load(out)
    assert profile.device == "box" and profile.meta["calibration"]["held_out"] > 0
    assert "held-out steps" in capsys.readouterr().out


def test_logs_without_the_fit_columns_are_refused(tmp_path):
    old = tmp_path / "old.csv"
    synthetic_log(10).drop(columns=["context", "scored_tokens"]).to_csv(old, index=False)
    with pytest.raises(CalibrationError, match="missing column.*scored_tokens, context"):
        read_step_logs([old])
    assert main(["profile", "--from-steps", str(old), "--out", str(tmp_path / "x.json")]) == 2
    with pytest.raises(CalibrationError, match="only 0 step"):
        calibrate(synthetic_log(10).assign(prefill_padded_tokens=0))
