"""Fit the simulator's clock to logged live steps (`nightjar-rl profile --from-steps LOG...`).

A profile measured with uniform synthetic batches misses what real serving does (ragged contexts,
mixed prefill and decode, saturation). This fits each part of the step time to step logs written by
`--log-steps` (any mix of loads and policies) with bounded least squares (every term non-negative
but the decode-step terms d0, d1, eK, which take either sign):

    verify_ms   = a0 + a1 * rows + a2 * scored + a3 * scored * context / 1000 + a4 * rows * context / 1000
                  + sum over K in SCORED_KNOTS of cK * min(scored, K)
                  + [scored == rows] * (d0 + d1 * rows + sum over K in DECODE_KNOTS of eK * min(rows, K))
    prefill_ms  = p0 + p1 * T + p2 * T^2 / 1000          T = prefill_padded_tokens (the tokens computed)
    overhead_ms = o0 + o1 * rows                         (wall - model time - lookup)
    lookup      = draft_time / drafting_rows             (n-gram / SSSD: ms per drafting row)

(`scored`: positions the verify pass computed; `context`: the longest cached row.) Attention reads
each row's cached keys and values once however many positions it scores (a4), and computes over
them per scored position (a3): on this CPU, at 16 rows, 100 more tokens of context cost about 5-9 ms
whether a step scores 16, 48 or 80 positions, which a3 alone cannot price. The knot terms,
non-negative like the others, let the verify cost be concave in `scored`: on CPU a GEMM over a few
positions costs little more than over one (the weights are read once either way), so a straight
line through batch-1 and batch-16 steps overprices the one-row step; with cK = 0 it is the line.
A step that scores one position per row (nothing drafted) is a regime of its own, and not a line
in rows: on this CPU (bundled and ShareGPT logs, packed linears, context ~100-250) the logged
medians are 43 ms at one row (more than the fit's two- to four-position one-row steps), 48 at two,
44 at three, 46 at four and 73 at sixteen. Without the decode terms the fit priced one-position
steps 6-8% low at one row and 5-7% high at 16; with d0, d1 alone, 10-12% high at 4-12 rows; the
signed knots eK follow the dip (the fitted curve is not monotone below four rows, as the medians
are not). The profile tabulates one position per row as its own column, so these terms cost nothing
at lookup.

An engine that runs a step as one pass and times only the whole step (vLLM: decode rows, their
drafts and the admitted prompts packed into one forward; `VLLMEngine`'s steps have `wall_time`
only) is fitted on the wall time alone ("wall" fit, chosen automatically when no step has a timed
part):

    wall_ms = w0 + w1 * max(1, rows) + a2 * scored + a3 * scored * context / 1000 + p1 * (T - 1)+
              + [scored == rows] * (d0 + d1 * rows + sum over K in DECODE_KNOTS of eK * min(rows, K))

(T: prompt tokens computed in the step, packed; linear, since packed prompts attend only to
themselves; the decode-regime terms are the verify model's, signed, and apply only to steps that
decode: a prefill-only step has none). It tabulates to overhead = w0 + w1 * rows, verify = a2 *
scored + a3 * scored * context / 1000 + the decode-regime terms, prefill = p1 * (T - 1) and no
lookup, which the simulator's `verify_layout: mixed` adds up to exactly this (prefill_ms(1) = 0, so
"the pass is not paid twice" subtracts nothing). vLLM on this CPU needs the decode terms: its
one-row steps with nothing drafted took 35.9 ms (median) and its one-row steps with drafts 33.7, so
a fit without them priced the first 7% low and the second 6% high.

The fitted functions are tabulated into an ordinary hardware profile (`nightjar_rl.hardware`): verify over
batch x tokens per row x context, prefill over tokens, overhead over batch. The profile
interpolates linearly in each of those; the default grid (every batch size to 32, every whole
tokens-per-row) reproduces the verify model exactly at whole rows x tokens and the overhead model
everywhere inside it; the prefill curve is sampled densely. A seeded share of the steps is held out of
the fit and the profile's predictions on them are reported (per part and for the total step time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import lsq_linear

from nightjar_rl.decoding.layouts import MIXED_LAYOUT
from nightjar_rl.hardware import PROFILE_FORMAT, PROFILE_VERSION, HardwareProfile

STEP_COLUMNS = ("batch", "verify_time", "prefill_time", "draft_time", "wall_time", "model_time",
                "scored_tokens", "context", "prefill_padded_tokens", "drafting_rows")
SCORED_KNOTS = (2, 4, 8, 16, 32, 64)
DECODE_KNOTS = (4, 8)  # no 2: on one-position steps min(rows, 2) is min(scored, 2), a knot already
VERIFY_TERMS = ("1", "rows", "scored", "scored*context/1000", "rows*context/1000",
                *(f"min(scored,{k})" for k in SCORED_KNOTS), "decode", "decode*rows",
                *(f"decode*min(rows,{k})" for k in DECODE_KNOTS))
PREFILL_TERMS = ("1", "tokens", "tokens^2/1000")
OVERHEAD_TERMS = ("1", "rows")
DECODE_TERMS = tuple(t for t in VERIFY_TERMS if t.startswith("decode"))  # the decode-regime terms, signed
WALL_TERMS = ("1", "max(1,rows)", "scored", "scored*context/1000", "(prefill tokens-1)+", *DECODE_TERMS)
SIGNED_TERMS = {"verify": DECODE_TERMS, "wall": DECODE_TERMS}  # may be negative
PART_TERMS = {"verify": VERIFY_TERMS, "prefill": PREFILL_TERMS, "overhead": OVERHEAD_TERMS, "wall": WALL_TERMS}
TABLE_CONTEXT = 8192  # the default table reaches at least this context (tokens in the longest row)
FITS = ("auto", "parts", "wall")


class CalibrationError(ValueError):
    """Step logs that cannot be fitted (missing columns, too few steps of a kind)."""


def read_step_logs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate `--log-steps` files (.csv or .parquet), checking the columns the fit needs."""
    if not paths:
        raise CalibrationError("no step logs given")
    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise CalibrationError(f"{path}: no such step log")
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        missing = [c for c in STEP_COLUMNS if c not in df.columns]
        if missing:
            raise CalibrationError(f"{path}: missing column(s) {', '.join(missing)}; record the log with "
                                   "this version's --log-steps")
        frames.append(df.assign(log=str(path)))
    steps = pd.concat(frames, ignore_index=True)
    logged_layout(steps)  # one layout, or none recorded
    return steps


def logged_layout(steps: pd.DataFrame) -> str | None:
    """The verify layout the steps were logged under (None when the logs predate the column). Logs of
    different layouts count scored and prefill tokens differently, so one profile cannot fit them."""
    if "verify_layout" not in steps:
        return None
    recorded = steps["verify_layout"].map(lambda v: str(v) if isinstance(v, str) else "")
    layouts = sorted(set(recorded) - {""})
    if len(layouts) > 1:
        raise CalibrationError(f"the step logs mix verify layouts ({', '.join(layouts)}): a profile prices one "
                               "layout; fit each layout's logs apart")
    if layouts and (recorded == "").any():
        raise CalibrationError(f"some step logs record the verify layout ({layouts[0]}) and some do not (logged "
                               "before the column, when the default may have differed): fit them apart")
    return layouts[0] if layouts else None


def steps_frame(steps) -> pd.DataFrame:
    """`StepStats` (e.g. a `ServeResult.steps`) as the table the fit reads."""
    return pd.DataFrame([s.as_row() for s in steps]).rename(columns={"batch_size": "batch"})


def _design(df: pd.DataFrame, part: str) -> np.ndarray:
    rows = df["batch"].to_numpy(float)
    if part == "wall":
        return wall_design(rows, df["scored_tokens"].to_numpy(float), df["context"].to_numpy(float),
                           df["prefill_padded_tokens"].to_numpy(float))
    if part == "verify":
        return verify_design(rows, df["scored_tokens"].to_numpy(float), df["context"].to_numpy(float))
    if part == "prefill":
        tokens = df["prefill_padded_tokens"].to_numpy(float)
        return np.column_stack([np.ones_like(tokens), tokens, tokens**2 / 1000])
    return np.column_stack([np.ones_like(rows), rows])


def wall_design(rows: np.ndarray, scored: np.ndarray, context: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The wall model's terms (WALL_TERMS), one row per step: the verify model's terms by name (none for a
    prefill-only step, which decodes nothing), the constant, max(1, rows) and (prefill tokens - 1)+."""
    verify = verify_design(rows, scored, context)
    verify[rows == 0] = 0.0
    own = {"1": np.ones_like(rows), "max(1,rows)": np.maximum(rows, 1), "(prefill tokens-1)+": np.maximum(tokens - 1, 0)}
    return np.column_stack([own[t] if t in own else verify[:, VERIFY_TERMS.index(t)] for t in WALL_TERMS])


def verify_design(rows: np.ndarray, scored: np.ndarray, context: np.ndarray) -> np.ndarray:
    """The verify model's terms (VERIFY_TERMS), one row per step."""
    # 1 at one position per row (nothing drafted), 0 from two, linear in between: what the profile's
    # table prices a ragged (packed) step at, interpolating between those columns
    decode = np.clip(2.0 - scored / np.maximum(rows, 1.0), 0.0, 1.0)
    return np.column_stack([np.ones_like(rows), rows, scored, scored * context / 1000, rows * context / 1000,
                            *(np.minimum(scored, k) for k in SCORED_KNOTS), decode, decode * rows,
                            *(decode * np.minimum(rows, k) for k in DECODE_KNOTS)])


def _overhead_ms(df: pd.DataFrame) -> np.ndarray:
    """Time outside model forwards and n-gram drafting (ms, clamped at 0)."""
    return np.maximum(0.0, (df["wall_time"] - df["model_time"] - df["draft_time"]).to_numpy(float) * 1000)


def _targets(df: pd.DataFrame, part: str) -> np.ndarray:
    if part == "overhead":
        return _overhead_ms(df)
    return df[f"{part}_time"].to_numpy(float) * 1000


def _selection(df: pd.DataFrame, part: str) -> pd.Series:
    """Steps whose `part` was run and timed."""
    if part == "verify":
        return (df["batch"] > 0) & (df["verify_time"] > 0) & (df["scored_tokens"] > 0)
    if part == "prefill":
        return (df["prefill_padded_tokens"] > 0) & (df["prefill_time"] > 0)
    if part == "wall":
        return ((df["batch"] > 0) | (df["prefill_padded_tokens"] > 0)) & (df["wall_time"] > 0)
    return df["batch"] > 0


def fit_kind(df: pd.DataFrame, fit: str = "auto") -> str:
    """"parts" when the logs time verify and prefill separately (nightjar-rl's engine), "wall" when
    only whole steps are timed (vLLM); `fit` forces one."""
    if fit not in FITS:
        raise CalibrationError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if fit != "auto":
        return fit
    timed = (df["verify_time"] > 0) | (df["prefill_time"] > 0) | (df["model_time"] > 0)
    return "parts" if timed.any() else "wall"


def fit_part(df: pd.DataFrame, part: str, min_steps: int = 4) -> np.ndarray:
    """Least-squares coefficients of one part's model, non-negative but for `SIGNED_TERMS` (module
    docstring)."""
    sel = df[_selection(df, part)]
    if len(sel) < min_steps:
        raise CalibrationError(f"only {len(sel)} step(s) with a timed {part} in the logs; need {min_steps}")
    signed = SIGNED_TERMS.get(part, ())
    lower = [-np.inf if t in signed else 0.0 for t in PART_TERMS[part]]
    result = lsq_linear(_design(sel, part), _targets(sel, part), bounds=(lower, np.inf), method="bvls")
    if result.status <= 0:  # bvls stops silently at its iteration limit
        raise CalibrationError(f"the {part} fit did not converge: {result.message}")
    return result.x


def predict_part(df: pd.DataFrame, part: str, coef: np.ndarray) -> np.ndarray:
    return _design(df, part) @ coef


@dataclass
class Calibration:
    """The fitted coefficients, the profile they tabulate to, and the held-out errors."""

    coefficients: dict[str, list[float]]
    lookup_ms_per_row: float
    profile: dict
    errors: pd.DataFrame  # one row per part: steps, mean abs. % error, total-time error %
    fit: str = "parts"

    def summary(self) -> str:
        parts = ("wall",) if self.fit == "wall" else ("verify", "prefill", "overhead")
        lines = [f"{part}: " + ", ".join(f"{t}={c:.4g}" for t, c in zip(PART_TERMS[part], self.coefficients[part]))
                 for part in parts]
        lines.append(f"lookup: {self.lookup_ms_per_row:.4g} ms per drafting row")
        lines.append("held-out steps:\n" + self.errors.to_string(index=False))
        return "\n".join(lines)


def _grid(low: float, high: float, points: int) -> list[int]:
    """Integers from `low` to `high` (both kept), about geometric, at most `points` of them."""
    low, high = max(1, int(low)), max(1, int(np.ceil(high)))
    return sorted({int(round(x)) for x in np.geomspace(low, max(high, low), points)} | {low, high})


def parts_of_wall(w: np.ndarray) -> dict[str, np.ndarray]:
    """A wall fit's coefficients as the parts' models (module docstring): the constant and per-row
    terms are overhead, the scored and decode-regime terms verify, prefill is p1 * (T - 1) (as p0 +
    p1 T + p2 T^2 / 1000 with p0 = -p1)."""
    verify = np.zeros(len(VERIFY_TERMS))  # no constant, per-row, per-row KV or concave terms (first two: overhead)
    wall = dict(zip(WALL_TERMS, w))
    for term in WALL_TERMS:  # by name: the verify model's terms of the wall model (its constant is overhead)
        if term in VERIFY_TERMS and term != "1":
            verify[VERIFY_TERMS.index(term)] = wall[term]
    p1 = wall["(prefill tokens-1)+"]
    return {"verify": verify, "prefill": np.array([-p1, p1, 0.0]),
            "overhead": np.array([wall["1"], wall["max(1,rows)"]])}


def tabulate(coef: dict[str, np.ndarray], lookup_ms: float, batch_sizes: Sequence[int], tokens_per_row: Sequence[int],
             contexts: Sequence[int], prefill_tokens: Sequence[int], **meta) -> dict:
    """The fitted functions as a hardware profile dict (version 2)."""
    a, p, o = coef["verify"], coef["prefill"], coef["overhead"]

    def verify_ms(b: int, n: int, c: int) -> float:  # clamped at 0 like prefill: the decode terms are signed
        return max(0.0, float(verify_design(np.array([b], float), np.array([b * n], float), np.array([c], float))[0] @ a))

    def prefill_ms(t: int) -> float:
        return max(0.0, float(p[0] + p[1] * t + p[2] * t * t / 1000))

    by_context = {str(c): {str(b): {str(n): round(verify_ms(b, n, c), 6) for n in tokens_per_row}
                           for b in batch_sizes} for c in contexts}
    return {
        **meta,
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "verify_ms": by_context[str(contexts[0])],
        "verify_ms_by_context": by_context,
        "draft_ms": {},
        "ngram_lookup_ms_per_row": round(lookup_ms, 6),
        "prefill_ms": {str(t): round(prefill_ms(t), 6) for t in prefill_tokens},
        "overhead_ms": {str(b): round(float(o[0] + o[1] * b), 6) for b in batch_sizes},
    }


def calibrate(steps: pd.DataFrame, *, holdout: float = 0.2, seed: int = 0, max_tokens_per_row: int | None = None,
              batch_sizes: Sequence[int] | None = None, contexts: Sequence[int] | None = None, fit: str = "auto",
              **meta) -> Calibration:
    """Fit the clock model to `steps` (from `read_step_logs`), `holdout` of them kept out of the fit
    and used to report its error. The grid defaults to the range the logs cover. `fit`: "parts",
    "wall" or "auto" (`fit_kind`); a wall fit's profile is meant for `verify_layout: mixed`, a parts fit's
    for the layout the steps were logged under (both recorded in the profile as `verify_layout`)."""
    if not 0 <= holdout < 1:
        raise CalibrationError(f"holdout must be in [0, 1), got {holdout}")
    kind = fit_kind(steps, fit)
    logged = logged_layout(steps)
    if kind == "wall" and logged not in (None, MIXED_LAYOUT):
        raise CalibrationError(f"a wall fit prices vLLM's unified step ({MIXED_LAYOUT}) but these steps ran "
                               f"{logged!r}: fit them with --fit parts")
    layout = {"verify_layout": logged} if logged else {}
    rng = np.random.default_rng(seed)
    held = rng.random(len(steps)) < holdout
    train, test = steps[~held], steps[held]
    if kind == "wall":
        wall = fit_part(train, "wall")
        coef, lookup_ms, fitted = parts_of_wall(wall), 0.0, {"wall": wall}
    else:
        coef = fitted = {part: fit_part(train, part) for part in ("verify", "prefill", "overhead")}
        drafting = train[train["drafting_rows"] > 0]
        lookup_ms = float(drafting["draft_time"].sum() * 1000 / drafting["drafting_rows"].sum()) if len(drafting) else 0.0
    decode = steps[(steps["batch"] > 0) & (steps["scored_tokens"] > 0)]  # the grid covers what ran, timed or not
    per_row = decode["scored_tokens"] / decode["batch"]
    # every batch size to 32 and every tokens-per-row: the table is then the concave fit itself at
    # whole rows x tokens (it interpolates linearly in between)
    largest = int(decode["batch"].max())
    batch_sizes = list(batch_sizes or sorted(set(range(1, min(32, largest) + 1))
                                             | (set(_grid(32, largest, 6)) if largest > 32 else set())))
    top = max_tokens_per_row or int(np.ceil(per_row.max()))
    # the fit is linear in context, so two contexts tabulate it exactly; past the logged range the
    # table carries the fit on (a profile clamps beyond its last context: ending the table at the
    # longest logged row priced longer rows, e.g. ShareGPT's after bundled-prompt logs, as that row)
    contexts = list(contexts or _grid(1, max(decode["context"].max(), TABLE_CONTEXT), 2))
    prefill = steps.loc[steps["prefill_padded_tokens"] > 0, "prefill_padded_tokens"]
    profile = tabulate(coef, lookup_ms, batch_sizes, list(range(1, top + 1)), contexts,
                       _grid(1, max(prefill.max() if len(prefill) else 1, 2), 16),
                       calibration={"steps": int(len(train)), "held_out": int(len(test)), "seed": seed, "fit": kind,
                                    "coefficients": {k: [float(x) for x in v] for k, v in fitted.items()}},
                       **({"verify_layout": MIXED_LAYOUT} if kind == "wall" else layout), **meta)
    HardwareProfile.from_dict(profile, "calibrated profile")  # what we write must load
    errors = held_out_errors(test, HardwareProfile.from_dict(profile), ("wall",) if kind == "wall" else PARTS)
    profile["calibration"]["held_out_errors"] = [{k: None if isinstance(v, float) and np.isnan(v) else v
                                                   for k, v in row.items()} for row in errors.to_dict(orient="records")]
    return Calibration({k: [float(x) for x in v] for k, v in fitted.items()}, lookup_ms, profile, errors, kind)


def predicted_ms(steps: pd.DataFrame, profile: HardwareProfile) -> pd.DataFrame:
    """A profile's price of each logged step, per part (ms), as the simulator computes it."""
    rows = []
    for r in steps.itertuples(index=False):
        verify = profile.verify_step_ms(r.batch, r.scored_tokens, r.context) if r.batch and r.scored_tokens else 0.0
        prefill = profile.prefill_time_ms(r.prefill_padded_tokens)
        lookup = profile.lookup_time_ms(r.drafting_rows)
        overhead = profile.overhead_time_ms(max(1, r.batch))
        rows.append(dict(verify=verify, prefill=prefill, overhead=overhead, wall=verify + prefill + lookup + overhead))
    return pd.DataFrame(rows, index=steps.index)


PARTS = ("verify", "prefill", "overhead", "wall")


def held_out_errors(test: pd.DataFrame, profile: HardwareProfile, parts: Sequence[str] = PARTS) -> pd.DataFrame:
    """Per part: held-out steps, mean absolute % error per step, and the % error of the summed time
    (what a throughput prediction inherits)."""
    if test.empty:
        return pd.DataFrame(columns=["part", "steps", "mean_abs_pct_error", "total_pct_error"])
    pred = predicted_ms(test, profile)
    out = []
    for part in parts:
        sel = _selection(test, part) if part in ("verify", "prefill") else test["batch"] >= 0
        actual = (_overhead_ms(test) if part == "overhead" else test[f"{part}_time"].to_numpy(float) * 1000)[sel.to_numpy()]
        guess = pred[part].to_numpy()[sel.to_numpy()]
        ok = actual > 0
        out.append(dict(part=part, steps=int(sel.sum()),
                        mean_abs_pct_error=round(float(np.mean(np.abs(guess[ok] / actual[ok] - 1)) * 100), 2) if ok.any() else np.nan,
                        total_pct_error=round(float((guess.sum() / actual.sum() - 1) * 100), 2) if actual.sum() > 0 else np.nan))
    return pd.DataFrame(out)
