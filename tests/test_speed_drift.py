"""Machine drift (issue 21): a profile's speed anchor, the speed ratio now / when profiled, a profile
scaled by it, and a twin served at that speed (`profile_scale`, `nightjar-rl profile --rescale`)."""

import json
import math
from pathlib import Path

import pytest

from nightjar_rl.cli import main
from nightjar_rl.engine_config import EngineConfig
from nightjar_rl.env.backend import make_backend, resolve_data_path
from nightjar_rl.env.scenario import ScenarioError, load_scenario
from nightjar_rl.experiments.drift import SpeedDrift, anchor_config, kernel_mismatch, ratio_by_rows
from nightjar_rl.experiments.evaluate import evaluate_cell
from nightjar_rl.hardware import (
    ANCHOR_ENGINE_FIELDS,
    HardwareProfile,
    ProfileError,
    mean_anchor,
    speed_ratio,
    speed_ratio_by_rows,
)
from nightjar_rl.model_names import linears_for
from nightjar_rl.policy import make_policy
from nightjar_rl.stack import anchor_engine_config
from tests.test_calibrate import synthetic_log

PROFILES = Path(__file__).resolve().parents[1] / "envs" / "profiles"
SHAPES = [[1, 1, 256], [4, 1, 256], [16, 1, 256], [16, 5, 256]]


def test_speed_ratio_is_the_median_of_the_shapes_ratios():
    then = {"shapes": SHAPES, "ms": [10.0, 20.0, 40.0, 80.0]}
    now = {"shapes": SHAPES, "ms": [11.0, 22.0, 48.0, 80.0]}  # 1.1, 1.1, 1.2, 1.0 -> median (1.1 + 1.1) / 2
    ratio, per_shape = speed_ratio(then, now)
    assert ratio == pytest.approx(1.1)
    assert per_shape == pytest.approx({"1 x 1 @ 256": 1.1, "4 x 1 @ 256": 1.1, "16 x 1 @ 256": 1.2, "16 x 5 @ 256": 1.0})
    with pytest.raises(ProfileError, match="different shapes"):
        speed_ratio(then, {"shapes": SHAPES[:3], "ms": [1.0, 1.0, 1.0]})
    with pytest.raises(ProfileError, match="positive"):
        speed_ratio({"shapes": SHAPES, "ms": [0.0, 1.0, 1.0, 1.0]}, now)
    with pytest.raises(ProfileError, match="speed anchor must be"):
        speed_ratio({"shapes": SHAPES}, now)


def test_a_scaled_profile_prices_every_part_by_the_factor():
    base = HardwareProfile({"1": {"1": 10.0, "3": 14.0}, "4": {"1": 12.0, "3": 20.0}}, {"1": 2.0, "4": 3.0},
                           ngram_lookup_ms_per_row=0.1, verify_ms_by_context={"64": {"1": {"1": 9.0}, "4": {"1": 11.0}},
                                                                               "256": {"1": {"1": 13.0}, "4": {"1": 17.0}}},
                           prefill_ms={"16": 30.0, "64": 90.0}, draft_prefill_ms={"16": 5.0},
                           overhead_ms={"1": 1.0, "4": 2.0}, meta={"speed_anchor": {"shapes": SHAPES, "ms": [1, 2, 3, 4]}})
    scaled = base.scaled(1.25)
    for price in (lambda p: p.verify_time_ms(2, 2), lambda p: p.verify_time_ms(3, 1, context=160),
                  lambda p: p.draft_time_ms(2, 3), lambda p: p.lookup_time_ms(5), lambda p: p.prefill_time_ms(40),
                  lambda p: p.prefill_time_ms(128), lambda p: p.draft_prefill_time_ms(16), lambda p: p.overhead_time_ms(3)):
        assert price(scaled) == pytest.approx(1.25 * price(base))
    # by hand: 2 rows x 2 tokens is 12 ms at 1 row, 16 at 4 rows, 12 + (16 - 12) / 3 = 13.33 at 2, x 1.25
    assert scaled.verify_time_ms(2, 2) == pytest.approx(1.25 * (12.0 + 4.0 / 3))
    assert scaled.meta["time_scale"] == 1.25 and scaled.scaled(2.0).meta["time_scale"] == 2.5
    assert scaled.speed_anchor == base.speed_anchor  # the anchor says when the times were measured: kept
    for bad in (0, -1.0, math.inf, True, "2"):
        with pytest.raises(ProfileError, match="time scale"):
            base.scaled(bad)


def test_scaling_only_the_forwards_keeps_the_host_work_by_hand():
    """`scaled_forwards`: host work h(b) = the profile's one-token step minus the anchor's bare forward;
    a verify price v becomes f v - (f - 1) min(h, v); prefill and draft passes x f; overhead and lookups kept."""
    anchor = {"shapes": [[1, 1, 0], [4, 1, 0]], "ms": [7.0, 10.0]}
    base = HardwareProfile({"1": {"1": 10.0, "3": 14.0}, "4": {"1": 12.0, "3": 20.0}}, {"1": 2.0, "4": 3.0},
                           ngram_lookup_ms_per_row=0.1, prefill_ms={"16": 30.0, "64": 90.0},
                           overhead_ms={"1": 1.0, "4": 2.0}, meta={"speed_anchor": anchor})
    assert base.host_ms_by_rows() == pytest.approx({1: 3.0, 4: 2.0})  # 10 - 7, 12 - 10
    fast = base.scaled_forwards(2.0)
    # entries: 1 row 2 x 10 - 3 = 17 and 2 x 14 - 3 = 25; 4 rows 2 x 12 - 2 = 22 and 2 x 20 - 2 = 38;
    # 2 rows x 2 tokens: 21 at 1 row, 30 at 4 rows, a third of the way at 2 rows
    assert fast.verify_time_ms(1, 1) == pytest.approx(17.0) and fast.verify_time_ms(4, 3) == pytest.approx(38.0)
    assert fast.verify_time_ms(2, 2) == pytest.approx(21.0 + 9.0 / 3)
    assert fast.prefill_time_ms(40) == pytest.approx(120.0) and fast.draft_time_ms(4, 1) == pytest.approx(6.0)
    assert fast.overhead_time_ms(4) == pytest.approx(2.0) and fast.lookup_time_ms(5) == pytest.approx(0.5)
    assert fast.meta["time_scale"] == 2.0 and fast.meta["host_ms_kept"] == {"1": 3.0, "4": 2.0}
    assert base.scaled_forwards(1.0).verify_time_ms(2, 2) == pytest.approx(base.verify_time_ms(2, 2))
    slower_anchor = HardwareProfile(base.to_dict()["verify_ms"], meta={"speed_anchor": anchor | {"ms": [12.0, 10.0]}})
    assert slower_anchor.host_ms_by_rows()[1] == 0.0  # never negative: the forward is then scaled whole
    with pytest.raises(ProfileError, match="no speed_anchor"):
        HardwareProfile({"1": {"1": 10.0}}).scaled_forwards(2.0)
    with pytest.raises(ProfileError, match="no one-token-per-row shape"):
        HardwareProfile({"1": {"1": 10.0}}, meta={"speed_anchor": {"shapes": [[16, 5, 0]], "ms": [1.0]}}).host_ms_by_rows()
    with pytest.raises(ProfileError, match="time scale"):
        base.scaled_forwards(0)


def test_speed_ratio_by_rows_keeps_the_one_token_shapes():
    then = {"shapes": SHAPES, "ms": [10.0, 20.0, 40.0, 80.0]}
    now = {"shapes": SHAPES, "ms": [11.0, 22.0, 48.0, 80.0]}
    assert speed_ratio_by_rows(then, now) == pytest.approx({1: 1.1, 4: 1.1, 16: 1.2})  # 16 x 5 is not one-token
    later = {"shapes": SHAPES, "ms": [13.0, 26.0, 40.0, 80.0]}  # 1.3, 1.3, 1.0
    drift = {"profiled": then, "measurements": [{"anchor": now}, {"anchor": later}]}
    assert ratio_by_rows(drift) == pytest.approx({1: 1.2, 4: 1.2, 16: 1.1})  # the mean of the two measurements
    assert ratio_by_rows(drift | {"measurements": []}) is None
    with pytest.raises(ProfileError, match="different shapes"):
        speed_ratio_by_rows(then, {"shapes": SHAPES[:3], "ms": [1.0, 1.0, 1.0]})


def test_scaling_the_forwards_by_rows_by_hand():
    """`scaled_forwards(f, by_rows)`: a b-row verify price v becomes f(b) v - (f(b) - 1) min(h(b), v), f(b)
    interpolated over rows and clamped; prefill and draft passes x f."""
    anchor = {"shapes": [[1, 1, 0], [4, 1, 0]], "ms": [7.0, 10.0]}
    base = HardwareProfile({"1": {"1": 10.0, "3": 14.0}, "4": {"1": 12.0, "3": 20.0}}, {"1": 2.0, "4": 3.0},
                           prefill_ms={"16": 30.0, "64": 90.0}, meta={"speed_anchor": anchor})
    scaled = base.scaled_forwards(2.0, by_rows={1: 1.5, 4: 3.0})  # host work 3 ms at 1 row, 2 ms at 4 rows
    # 1 row x 1.5: 15 - 1.5 = 13.5 and 21 - 1.5 = 19.5; 4 rows x 3: 36 - 4 = 32 and 60 - 4 = 56
    assert scaled.verify_time_ms(1, 1) == pytest.approx(13.5) and scaled.verify_time_ms(1, 3) == pytest.approx(19.5)
    assert scaled.verify_time_ms(4, 1) == pytest.approx(32.0) and scaled.verify_time_ms(4, 3) == pytest.approx(56.0)
    # 2 rows x 2 tokens: 16.5 at 1 row, 44 at 4 rows, a third of the way at 2 rows
    assert scaled.verify_time_ms(2, 2) == pytest.approx(16.5 + 27.5 / 3)
    assert scaled.prefill_time_ms(40) == pytest.approx(120.0) and scaled.draft_time_ms(4, 1) == pytest.approx(6.0)
    assert scaled.meta["time_scale"] == 2.0 and scaled.meta["time_scale_by_rows"] == {"1": 1.5, "4": 3.0}
    # the record composes with later scalings: x 2 everywhere; then by rows {2: 2.0} (the old record at 2 rows is
    # 1.5 + 1.5 / 3 = 2.0); a profile first scaled by 1.25 everywhere starts from 1.25 at every row count
    assert scaled.scaled(2.0).meta["time_scale_by_rows"] == scaled.scaled_forwards(2.0).meta["time_scale_by_rows"] \
        == pytest.approx({"1": 3.0, "4": 6.0})
    assert scaled.scaled_forwards(1.0, {2: 2.0}).meta["time_scale_by_rows"] == pytest.approx({"1": 3.0, "2": 4.0, "4": 6.0})
    assert base.scaled(1.25).scaled_forwards(2.0, {1: 1.5, 4: 3.0}).meta["time_scale_by_rows"] == pytest.approx(
        {"1": 1.875, "4": 3.75})
    assert "time_scale_by_rows" not in base.scaled_forwards(2.0).meta and "time_scale_by_rows" not in base.scaled(2.0).meta
    three_rows = HardwareProfile({"3": {"1": 10.0}}, meta={"speed_anchor": {"shapes": [[3, 1, 0]], "ms": [7.0]}})
    assert three_rows.scaled_forwards(9.0, by_rows={1: 1.5, 4: 3.0}).verify_time_ms(3, 1) == pytest.approx(
        2.5 * 10.0 - 1.5 * 3.0)  # f(3) = 1.5 + 1.5 x 2/3 = 2.5
    assert base.scaled_forwards(5.0, by_rows={2: 2.0}).to_dict()["verify_ms"] == \
        base.scaled_forwards(2.0).to_dict()["verify_ms"]  # clamped: one row count scales every batch size alike
    for bad in ({}, {0: 2.0}, {1: 0.0}, [1, 2], {1: 2.0, "1": 2.0}):
        with pytest.raises(ProfileError):
            base.scaled_forwards(2.0, by_rows=bad)


def test_a_twin_with_profile_scale_two_serves_in_twice_the_time():
    """All requests at t=0: the schedule does not depend on the clock, so every step costs twice as much
    and the tokens are the same."""
    twin = load_scenario("tiny-sim")
    runs = {}
    for scale in (1.0, 2.0):
        scenario = twin.replace(profile_scale=scale)
        cell = evaluate_cell(make_policy("fixed-2", scenario.max_k), scenario, make_backend(scenario), math.inf, 0, 6,
                             scenario.max_new_tokens, {"tpot_s": 1.0})
        runs[scale] = cell.serve_result
    one, two = runs[1.0], runs[2.0]
    assert one.outputs == two.outputs and len(one.steps) == len(two.steps)
    assert [s.wall_time * 2 for s in one.steps] == pytest.approx([s.wall_time for s in two.steps])
    with pytest.raises(ScenarioError, match="profile_scale"):
        load_scenario("tiny").replace(profile_scale=1.5)  # a live engine's clock is the machine's


def test_a_twin_that_keeps_its_host_work_is_priced_by_scaled_forwards():
    """`profile_scale_keeps_host`: the backend's profile is `scaled_forwards(profile_scale)`, not `scaled`."""
    twin = load_scenario("tiny-sim")
    base = make_backend(twin).profile
    kept = make_backend(twin.replace(profile_scale=2.0, profile_scale_keeps_host=True)).profile
    assert kept.to_dict() == base.scaled_forwards(2.0).to_dict() != base.scaled(2.0).to_dict()
    assert kept.meta["host_ms_kept"] == pytest.approx({str(b): ms for b, ms in base.host_ms_by_rows().items()}, abs=1e-4)
    with pytest.raises(ScenarioError, match="profile_scale_keeps_host"):
        load_scenario("tiny").replace(profile_scale_keeps_host=True)
    by_rows = {1: 1.5, 16: 2.5}
    per_rows = make_backend(twin.replace(profile_scale=2.0, profile_scale_keeps_host=True, profile_scale_by_rows=by_rows))
    assert per_rows.profile.to_dict() == base.scaled_forwards(2.0, by_rows).to_dict() != kept.to_dict()
    with pytest.raises(ScenarioError, match="'profile_scale_by_rows' needs profile_scale_keeps_host"):
        twin.replace(profile_scale_by_rows=by_rows)
    assert twin.replace(profile_scale_keeps_host=True, profile_scale_by_rows={"1": 1.5, "16": 2.5}).profile_scale_by_rows \
        == by_rows  # as read back from JSON
    at_one = make_backend(twin.replace(profile_scale_keeps_host=True, profile_scale_by_rows=by_rows)).profile
    assert at_one.to_dict() == base.scaled_forwards(1.0, by_rows).to_dict()  # decode by rows, prefill kept at x 1
    assert at_one.prefill_time_ms(40) == pytest.approx(base.prefill_time_ms(40))
    for bad in ({}, {0: 2.0}, {1: -1.0}, {"x": 2.0}, {1: True}, {1: 2.0, "1": 2.0}):
        with pytest.raises(ScenarioError, match="'profile_scale_by_rows' must map row counts"):
            twin.replace(profile_scale_keeps_host=True, profile_scale_by_rows=bad)
    with pytest.raises(ScenarioError, match="'profile_scale_by_rows' needs backend 'sim'"):
        load_scenario("tiny").replace(profile_scale_by_rows=by_rows)
    roofline = load_scenario("gpu-whatif-ngram").replace(profile_scale_keeps_host=True)  # a profile without an anchor
    assert make_backend(roofline).profile.to_dict() == make_backend(load_scenario("gpu-whatif-ngram")).profile.to_dict()
    with pytest.raises(ScenarioError, match="'gpu-whatif-ngram': field 'profile_scale_keeps_host': .* no speed_anchor"):
        make_backend(roofline.replace(profile_scale=2.0))


def test_profile_cli_anchors_and_rescales(tmp_path, capsys):
    profile = json.loads((PROFILES / "tiny-random-cpu.json").read_text())
    anchored = tmp_path / "anchored.json"
    anchored.write_text(json.dumps(profile | {"speed_anchor": profile["speed_anchor"] | {"ms": [
        ms / 2 for ms in profile["speed_anchor"]["ms"]]}}))  # as if profiled on a machine twice as fast
    out = tmp_path / "rescaled.json"
    assert main(["profile", "--model", "tiny-random", "--rescale", str(anchored), "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    ratio = data["rescaled_from"]["ratio"]
    assert data["time_scale"] == ratio and data["speed_anchor"]["shapes"] == SHAPES
    assert data["verify_ms"]["1"]["1"] == pytest.approx(ratio * profile["verify_ms"]["1"]["1"])
    assert "speed now / when profiled" in capsys.readouterr().out
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({k: v for k, v in profile.items() if k != "speed_anchor"}))
    assert main(["profile", "--model", "tiny-random", "--rescale", str(bare), "--out", str(out), "--quiet"]) == 2
    assert "has no speed_anchor" in capsys.readouterr().err
    assert main(["profile", "--rescale", str(anchored), "--out", str(out), "--quiet"]) == 2  # another model
    assert "pass --model tiny-random" in capsys.readouterr().err
    assert main(["profile", "--model", "tiny-random", "--rescale", str(anchored), "--out", str(out), "--quiet",
                 "--keep-host"]) == 0
    kept = json.loads(out.read_text())
    assert set(kept["host_ms_kept"]) == {"1", "4", "16"} and kept["overhead_ms"] == profile["overhead_ms"]
    assert set(kept["time_scale_by_rows"]) == {"1", "4", "16"}  # each forward by the anchor's ratio at its rows
    assert main(["profile", "--model", "tiny-random", "--keep-host", "--out", str(out), "--quiet"]) == 2
    assert "--keep-host goes with --rescale" in capsys.readouterr().err


def test_anchors_timed_around_the_logs_are_averaged_into_a_fitted_profile(tmp_path, capsys):
    a = {"shapes": SHAPES, "ms": [10.0, 20.0, 40.0, 80.0], "measured": "t0", "threads": 2}
    b = {"shapes": SHAPES, "ms": [12.0, 20.0, 44.0, 70.0], "measured": "t1", "threads": 2}
    assert mean_anchor([a, b]) == {"shapes": SHAPES, "ms": [11.0, 20.0, 42.0, 75.0], "measured": ["t0", "t1"], "threads": 2}
    with pytest.raises(ProfileError, match="different shapes"):
        mean_anchor([a, {"shapes": SHAPES[:1], "ms": [1.0]}])
    first = tmp_path / "a0.json"
    assert main(["profile", "--model", "tiny-random", "--anchor-only", "--out", str(first), "--quiet"]) == 0
    timed = json.loads(first.read_text())
    assert timed["shapes"] == SHAPES and len(timed["ms"]) == 4 and min(timed["ms"]) > 0
    second = tmp_path / "a1.json"
    second.write_text(json.dumps(timed | {"ms": [3 * ms for ms in timed["ms"]]}))
    log, out = tmp_path / "steps.csv", tmp_path / "fitted.json"
    synthetic_log().to_csv(log, index=False)
    assert main(["profile", "--from-steps", str(log), "--out", str(out), "--anchor", str(first), str(second)]) == 0
    assert HardwareProfile.load(out).speed_anchor["ms"] == pytest.approx([2 * ms for ms in timed["ms"]], abs=1e-3)
    second.write_text("{}")
    assert main(["profile", "--from-steps", str(log), "--out", str(out), "--anchor", str(first), str(second)]) == 2
    assert "speed anchor must be" in capsys.readouterr().err


def test_an_anchor_names_its_forward_and_is_timed_again_on_it(tmp_path, capsys):
    """An anchor records the forward it timed (layout, decoder forward, linears); re-timing it (`profile
    --rescale`, `SpeedDrift`) runs that forward, whatever the engine defaults are. Anchors from before
    `linears` was recorded keep the config's."""
    cfg = EngineConfig(model="tiny-random", linears="vllm", threads=1)
    then = {"shapes": SHAPES, "ms": [1.0] * 4, "verify_layout": "padded", "model_forward": "native-eager",
            "linears": "eager", "threads": 2}
    again = anchor_engine_config(cfg, then)
    assert (again.verify_layout, again.model_forward, again.linears, again.threads, again.model) == \
        ("padded", "native-eager", "eager", 2, "tiny-random")
    old = {k: v for k, v in then.items() if k != "linears"}
    assert anchor_engine_config(cfg, old).linears == "packed"  # what every anchor before `linears` was timed on
    paged = EngineConfig(model="tiny-random", model_forward="native-vllm", kv_block=32)  # a native-vllm setting
    assert anchor_engine_config(paged, then).validate().kv_block is None
    with pytest.raises(ProfileError, match="different forwards"):
        mean_anchor([then, then | {"model_forward": "native"}])
    assert (linears_for("native-vllm"), linears_for("native")) == ("vllm", "packed")
    timed = tmp_path / "anchor.json"
    assert main(["profile", "--model", "tiny-random", "--anchor-only", "--model-forward", "native-eager",
                 "--linears", "eager", "--out", str(timed), "--quiet"]) == 0
    anchor = json.loads(timed.read_text())
    assert (anchor["model_forward"], anchor["linears"]) == ("native-eager", "eager")
    profile = json.loads((PROFILES / "tiny-random-cpu.json").read_text()) | {"speed_anchor": anchor}
    anchored, out = tmp_path / "anchored.json", tmp_path / "rescaled.json"
    anchored.write_text(json.dumps(profile))
    assert main(["profile", "--model", "tiny-random", "--rescale", str(anchored), "--out", str(out), "--quiet"]) == 0
    assert {k: json.loads(out.read_text())["speed_anchor"][k] for k in ANCHOR_ENGINE_FIELDS} == \
        {k: anchor[k] for k in ANCHOR_ENGINE_FIELDS}  # timed again on the anchor's forward, not the default
    assert main(["profile", "--model", "tiny-random", "--rescale", str(anchored), "--out", str(out), "--quiet",
                 "--model-forward", "native"]) == 2  # the anchor says which forward: another one is refused
    assert "drop --model-forward" in capsys.readouterr().err


def test_a_profile_records_the_forward_it_timed(tmp_path):
    out = tmp_path / "profile.json"
    assert main(["profile", "--model", "tiny-random", "--batch-sizes", "1,2", "--tokens", "1,2", "--repeats", "1",
                 "--model-forward", "native-eager", "--linears", "eager", "--anchor", "--out", str(out),
                 "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert data["model_forward"] == "native-eager" and data["speed_anchor"]["model_forward"] == "native-eager"
    assert data["speed_anchor"]["linears"] == "eager"
    assert HardwareProfile.load(out).verify_time_ms(2, 2) > 0


def test_a_vllm_twin_is_anchored_on_vllms_own_kernels():
    """vLLM's engine cannot time a fixed forward, so its twin's anchor is our loop on vLLM's CPU kernels
    and GEMM; our engine's twin is anchored on the live engine itself."""
    vllm = anchor_config(load_scenario("smollm2-ngram-vllm"))
    assert (vllm.model, vllm.dtype, vllm.model_forward, vllm.linears) == ("smollm2-135m", "float32", "native-vllm",
                                                                         "vllm")
    live = load_scenario("smollm2-ngram")
    assert anchor_config(live) == live.engine_config()


def test_an_anchor_on_other_kernels_than_the_live_engine_is_flagged():
    """A vLLM twin anchored on our TorchScript forward tracks vLLM's speed worse (anchor_tracking.py):
    the drift report says so; an anchor on the live engine's own kernels raises nothing."""
    vllm = anchor_config(load_scenario("smollm2-ngram-vllm"))
    ours = {"shapes": SHAPES, "ms": [1.0] * 4, "model_forward": "native", "linears": "packed"}
    caveat = kernel_mismatch(ours, vllm)
    assert "'native' / linears 'packed'" in caveat and "'native-vllm' / 'vllm'" in caveat
    assert kernel_mismatch({**ours, "model_forward": "native-vllm", "linears": "vllm"}, vllm) is None
    live = load_scenario("smollm2-ngram").engine_config()
    assert kernel_mismatch({"shapes": SHAPES, "ms": [1.0] * 4, "model_forward": "native"}, live) is None  # old: packed
    assert kernel_mismatch({**ours, "linears": "eager"}, live) is not None


def test_the_drift_report_carries_the_kernel_caveat(tmp_path):
    """A vLLM twin whose profile was anchored on our own forward: the drift report warns, and says nothing
    once the anchor is on vLLM's kernels."""
    live, twin = load_scenario("smollm2-ngram-vllm"), load_scenario("smollm2-ngram-vllm-sim")
    profile = json.loads(resolve_data_path(twin.profile, twin.base_dir).read_text())
    reports = {}
    for forward, linears in (("native", "packed"), ("native-vllm", "vllm")):
        path = tmp_path / f"{forward}.json"
        path.write_text(json.dumps(profile | {"speed_anchor": {"shapes": SHAPES, "ms": [30.0, 31.0, 60.0, 160.0],
                                                               "model_forward": forward, "linears": linears}}))
        drift = SpeedDrift(live, twin.replace(profile=str(path)))
        reports[forward] = (drift.caveat, drift.describe(), drift.to_dict()["caveat"])
    caveat, described, recorded = reports["native"]
    assert "live engine runs 'native-vllm' / 'vllm'" in caveat and "caution: " + caveat in described
    assert recorded == caveat
    assert reports["native-vllm"][0] is None and "caution" not in reports["native-vllm"][1]
    path = tmp_path / "no-one-token-shape.json"  # the host-kept twin cannot be told: refused before anything runs
    path.write_text(json.dumps(profile | {"speed_anchor": {"shapes": [[16, 5, 256]], "ms": [160.0]}}))
    with pytest.raises(ScenarioError, match="no one-token-per-row shape"):
        SpeedDrift(live, twin.replace(profile=str(path)))
