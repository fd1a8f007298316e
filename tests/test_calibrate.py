"""`profile --from-steps`: the clock model fitted to step logs recovers a known cost function."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nightjar_rl.cli import main
from nightjar_rl.hardware import HardwareProfile
from nightjar_rl.sim.calibrate import (DECODE_KNOTS, SCORED_KNOTS, VERIFY_TERMS, CalibrationError, calibrate, fit_kind,
                                      fit_part, read_step_logs, tabulate, verify_design)
from nightjar_rl.sim.engine import SimEngine
from nightjar_rl.sim.trace import Trace

VERIFY = (20.0, 1.5, 0.8, 2.0, 3.0)  # ms: a0 + a1 rows + a2 scored + (a3 scored + a4 rows) * context / 1000
NO_KNOTS = (0.0,) * len(SCORED_KNOTS)  # the concave terms c_K min(scored, K): none in the linear engine
# ms more when every row scores one position: d0 + d1 rows + e4 min(rows, 4) + e8 min(rows, 8)
# (signed: the fit allows d1 < 0)
DECODE = (6.0, -0.2, 1.5, 0.0)
NO_DECODE = (0.0,) * 4
PREFILL = (5.0, 0.3, 0.4)  # ms: p0 + p1 T + p2 T^2 / 1000
OVERHEAD = (2.0, 0.25)  # ms: o0 + o1 rows
LOOKUP = 0.05  # ms per drafting row


def synthetic_log(n: int = 400, noise: float = 0.0, seed: int = 0, knots: tuple[float, ...] = NO_KNOTS,
                  decode: tuple[float, ...] = DECODE) -> pd.DataFrame:
    """Steps of a made-up engine whose every part costs exactly the functions above (times in s),
    plus `knots` (c_K per SCORED_KNOTS) and `decode` (d0, d1, e_K on one-position steps) in its verify cost."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(1, 33, n)
    per_row = rng.integers(1, 6, n)
    scored = batch * per_row
    context = rng.integers(40, 600, n)
    prefill = np.where(rng.random(n) < 0.3, rng.integers(8, 400, n), 0)
    drafting = np.where(per_row > 1, batch, 0)
    verify_ms = (VERIFY[0] + VERIFY[1] * batch + VERIFY[2] * scored + VERIFY[3] * scored * context / 1000
                 + VERIFY[4] * batch * context / 1000)
    verify_ms = verify_ms + sum(c * np.minimum(scored, k) for c, k in zip(knots, SCORED_KNOTS))
    verify_ms = verify_ms + (per_row == 1) * (decode[0] + decode[1] * batch
                                              + sum(e * np.minimum(batch, k) for e, k in zip(decode[2:], DECODE_KNOTS)))
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
    assert np.allclose(fit_part(log, "verify"), VERIFY + NO_KNOTS + DECODE, rtol=1e-6, atol=1e-9)
    # hand-computed decode step, 10 rows x 1 position at context 500:
    # 20 + 1.5*10 + 0.8*10 + 2.0*10*0.5 + 3.0*10*0.5 + (6 - 0.2*10 + 1.5*min(10, 4)) = 78 ms; 10 rows x 2
    # positions, no decode terms: 20 + 15 + 0.8*20 + 2.0*20*0.5 + 3.0*10*0.5 = 86 ms
    profile = HardwareProfile.from_dict(calibrate(log, holdout=0.0).profile)
    assert profile.verify_step_ms(10, 10, 500) == pytest.approx(78.0, rel=1e-6)
    assert profile.verify_step_ms(10, 20, 500) == pytest.approx(86.0, rel=1e-6)
    assert np.allclose(fit_part(log, "prefill"), PREFILL, rtol=1e-6)
    assert np.allclose(fit_part(log, "overhead"), OVERHEAD, rtol=1e-6)


def test_a_concave_verify_cost_is_recovered_and_prices_one_row_steps():
    """A GEMM that costs little more for 4 positions than for 1: 6 ms x min(scored, 4) on top of the
    line. Hand-computed one-row step at context 100: 20 + 1.5 + 0.8 + 0.2 + 0.3 + 6 = 28.8 ms; a line fitted
    through the same steps prices it far higher."""
    knots = tuple(6.0 if k == 4 else 0.0 for k in SCORED_KNOTS)
    log = synthetic_log(knots=knots, decode=NO_DECODE)
    assert np.allclose(fit_part(log, "verify"), VERIFY + knots + NO_DECODE, rtol=1e-6, atol=1e-9)
    profile = HardwareProfile.from_dict(calibrate(log, holdout=0.0).profile)
    assert profile.verify_step_ms(1, 1, 100) == pytest.approx(28.8, rel=1e-6)
    rows, scored, ctx = (log[c].to_numpy(float) for c in ("batch", "scored_tokens", "context"))
    line, *_ = np.linalg.lstsq(verify_design(rows, scored, ctx)[:, :5], log["verify_time"] * 1000, rcond=None)
    assert line @ [1, 1, 1, 0.1, 0.1] > 28.8 + 5


def test_hand_computed_fit_on_four_steps():
    # two parameters, two exact points each side: overhead 3 ms at 4 rows, 5 ms at 12 rows -> 2 + 0.25 rows
    log = pd.DataFrame(dict(batch=[4, 12, 4, 12], wall_time=[0.003, 0.005, 0.003, 0.005], model_time=[0.0] * 4,
                            draft_time=[0.0] * 4))
    assert np.allclose(fit_part(log, "overhead"), [2.0, 0.25])


def test_calibrated_profile_prices_steps_as_the_engine_cost_them():
    result = calibrate(synthetic_log(n=1600, noise=0.02), holdout=0.25, seed=1, device="synthetic", model="made-up")
    profile = HardwareProfile.from_dict(result.profile)
    assert np.allclose(result.coefficients["verify"][:5], VERIFY, rtol=0.1)
    assert result.lookup_ms_per_row == pytest.approx(LOOKUP)
    # inside the grid the tabulated profile is the fitted function (bilinear in rows x tokens, linear in context)
    a = result.coefficients["verify"]
    for rows, scored, ctx in ((1, 1, 40), (7, 21, 333), (32, 160, 599), (13, 13, 100)):
        want = verify_design(np.array([rows], float), np.array([scored], float), np.array([ctx], float))[0] @ a
        assert profile.verify_step_ms(rows, scored, ctx) == pytest.approx(want, rel=1e-5)
    # past the longest logged context (599) the table carries the fit on rather than clamping there
    long = verify_design(np.array([5.0]), np.array([10.0]), np.array([3000.0]))[0] @ a
    assert profile.verify_step_ms(5, 10, 3000) == pytest.approx(long, rel=1e-5)
    assert long > profile.verify_step_ms(5, 10, 599) + (10 * 2.0 + 5 * 3.0) * 2.4 * 0.9  # a3, a4 per 1000 ctx
    o = result.coefficients["overhead"]
    assert profile.overhead_time_ms(9) == pytest.approx(o[0] + 9 * o[1], rel=1e-5)
    errors = result.errors.set_index("part")
    assert errors.loc["wall", "steps"] == pytest.approx(400, abs=60)
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


def test_the_logged_layout_is_checked_and_recorded(tmp_path):
    """Steps carry the verify layout they ran under: logs of two layouts are refused (they count scored and
    prefill tokens differently), one layout's fit records it, and a simulator pricing another layout with
    that profile warns."""
    packed, padded = tmp_path / "packed.csv", tmp_path / "padded.csv"
    synthetic_log(200).assign(verify_layout="packed").to_csv(packed, index=False)
    synthetic_log(200, seed=1).assign(verify_layout="padded").to_csv(padded, index=False)
    with pytest.raises(CalibrationError, match="mix verify layouts \\(packed, padded\\)"):
        read_step_logs([packed, padded])
    assert main(["profile", "--from-steps", str(packed), str(padded), "--out", str(tmp_path / "x.json")]) == 2
    profile = calibrate(read_step_logs([packed])).profile
    assert profile["verify_layout"] == "packed"
    assert "verify_layout" not in calibrate(synthetic_log(200)).profile  # logs from before the column: unknown
    old = tmp_path / "old.csv"
    synthetic_log(200, seed=2).to_csv(old, index=False)  # logged before the column: its layout is unknown
    with pytest.raises(CalibrationError, match="some step logs record the verify layout"):
        read_step_logs([packed, old])
    with pytest.raises(CalibrationError, match="wall fit prices vLLM's unified step"):
        calibrate(read_step_logs([packed]), fit="wall")
    trace = Trace.load(Path(__file__).parent.parent / "envs" / "traces" / "tiny-ngram.npz")
    fitted = HardwareProfile.from_dict(profile)
    with pytest.warns(UserWarning, match="fitted to 'packed' steps; this simulator prices 'padded'"):
        SimEngine(trace, fitted, verify_layout="padded")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SimEngine(trace, fitted, verify_layout="packed")
        SimEngine(trace, fitted, verify_layout="mixed")  # packed steps priced as the unified step: the what-if
    unified = HardwareProfile.from_dict({**profile, "verify_layout": "mixed"})
    with pytest.warns(UserWarning, match="fitted to 'mixed' steps; this simulator prices 'packed'"):
        SimEngine(trace, unified, verify_layout="packed")


# ---- one pass per step, only the wall timed (vLLM) ------------------------------------------------
WALL = (3.0, 0.5, 0.8, 2.0, 0.3)  # ms: w0 + w1 max(1, rows) + a2 scored + a3 scored ctx/1000 + p1 (T - 1)+
WALL_DECODE = (2.0, -0.25, 0.0, 0.0)  # ms, one position per row: d0 + d1 rows + e4 min(rows, 4) + e8 min(rows, 8)


def one_pass_log(rows: list[tuple[int, int, int, int]], wall_ms: list[float]) -> pd.DataFrame:
    """Steps (rows, scored, context, prompt tokens) of an engine that times only whole steps."""
    b, scored, ctx, t = (np.array(c) for c in zip(*rows))
    zero = np.zeros(len(rows))
    return pd.DataFrame(dict(batch=b, verify_time=zero, prefill_time=zero, draft_time=zero, model_time=zero,
                             wall_time=np.array(wall_ms) / 1000, scored_tokens=scored, context=ctx,
                             prefill_padded_tokens=t, drafting_rows=np.where(scored > b, b, 0)))


def test_wall_fit_on_hand_computed_steps():
    """Eleven steps priced by hand with WALL and WALL_DECODE give both back; a prefill-only step counts
    as one row and decodes nothing. E.g. 3 rows scoring 6 at context 300 beside a 51-token prompt:
    3 + 0.5*3 + 0.8*6 + 2*6*300/1000 + 0.3*50 = 27.9 ms; 4 rows at one position each, context 200:
    3 + 0.5*4 + 0.8*4 + 2*4*200/1000 = 9.8, plus the decode regime's 2 - 0.25*4 = 1: 10.8 ms."""
    steps = one_pass_log([(1, 1, 100, 0), (2, 4, 100, 0), (4, 4, 200, 0), (0, 0, 0, 101), (3, 6, 300, 51),
                          (2, 2, 100, 0), (6, 6, 100, 0), (10, 10, 100, 0), (12, 12, 100, 0), (8, 16, 100, 0),
                          (1, 3, 200, 20)],
                         [6.25, 8.0, 10.8, 33.5, 27.9, 7.5, 12.5, 17.5, 20.0, 23.0, 12.8])
    assert fit_kind(steps) == "wall" and fit_kind(synthetic_log(10)) == "parts"
    result = calibrate(steps, holdout=0.0)
    assert result.fit == "wall" and np.allclose(result.coefficients["wall"], WALL + WALL_DECODE, atol=1e-6)
    profile = HardwareProfile.from_dict(result.profile)
    assert result.profile["verify_layout"] == "mixed" and profile.lookup_time_ms(4) == 0
    # the simulator's mixed step: overhead(max(1, B)) + verify + prefill(T) - prefill(1) = the fitted wall
    assert profile.prefill_time_ms(1) == 0
    step5 = profile.overhead_time_ms(3) + profile.verify_step_ms(3, 6, 300) + profile.prefill_time_ms(51)
    assert step5 == pytest.approx(27.9)
    assert profile.overhead_time_ms(4) + profile.verify_step_ms(4, 4, 200) == pytest.approx(10.8)
    assert profile.overhead_time_ms(1) + profile.prefill_time_ms(101) == pytest.approx(33.5)
    with pytest.raises(CalibrationError, match="fit must be one of"):
        calibrate(steps, fit="both")


def test_wall_fit_holds_out_steps_and_reports_the_wall_error_only():
    rng = np.random.default_rng(3)
    n = 300
    b = rng.integers(0, 17, n)
    scored = b * rng.integers(1, 6, n)
    ctx = np.where(b > 0, rng.integers(40, 300, n), 0)
    t = np.where((rng.random(n) < 0.3) | (b == 0), rng.integers(20, 800, n), 0)
    wall = (WALL[0] + WALL[1] * np.maximum(b, 1) + WALL[2] * scored + WALL[3] * scored * ctx / 1000
            + WALL[4] * np.maximum(t - 1, 0)) * (1 + 0.02 * rng.standard_normal(n))
    result = calibrate(one_pass_log(list(zip(b, scored, ctx, t)), list(wall)), holdout=0.25, seed=1)
    errors = result.errors.set_index("part")
    assert list(errors.index) == ["wall"] and abs(errors.loc["wall", "total_pct_error"]) < 1.0
    assert result.profile["calibration"]["held_out_errors"][0]["part"] == "wall"
    # the shared terms come back; the signed decode terms (true value 0) are left to the noise here
    # (one-position steps are few and prefills dominate the residuals) and pinned by the exact case above
    assert np.allclose(result.coefficients["wall"][:len(WALL)], WALL, rtol=0.1)


def test_a_signed_decode_term_below_zero_tabulates_at_zero():
    """The decode terms may be negative, so a table cell far from the logs can come out below zero:
    it is written as 0 ms (as prefill is), and the profile loads. 20 ms - 3 ms per row on one-position
    steps: 10 rows price at max(0, 20 - 30) = 0; with two positions the decode terms do not apply."""
    verify = np.zeros(len(VERIFY_TERMS))
    verify[VERIFY_TERMS.index("1")] = 20.0
    verify[VERIFY_TERMS.index("decode*rows")] = -3.0
    coef = {"verify": verify, "prefill": np.array(PREFILL), "overhead": np.array(OVERHEAD)}
    table = tabulate(coef, 0.0, [1, 10], [1, 2], [1, 100], [1, 10])
    profile = HardwareProfile.from_dict(table)
    assert profile.verify_step_ms(1, 1, 50) == pytest.approx(17.0)
    assert profile.verify_step_ms(10, 10, 50) == 0.0
    assert profile.verify_step_ms(10, 20, 50) == pytest.approx(20.0)
