import json

import pytest

from nightjar_rl.hardware import HardwareProfile, ProfileError


def grid_profile() -> HardwareProfile:
    return HardwareProfile.from_model_fn(
        lambda b, n: 10.0 * b + n, [1, 4], [1, 3], draft_fn=lambda b: 0.5 * b
    )


def test_bilinear_interpolation_exact_on_linear_fn():
    prof = grid_profile()
    assert prof.verify_time_ms(1, 1) == pytest.approx(11.0)
    assert prof.verify_time_ms(4, 3) == pytest.approx(43.0)
    assert prof.verify_time_ms(2.5, 2) == pytest.approx(27.0)  # 10*2.5 + 2
    assert prof.draft_time_ms(2, 3) == pytest.approx(3 * 1.0)
    assert prof.draft_time_ms(2, 0) == 0.0
    assert prof.step_time_ms(2, 2) == pytest.approx(2 * 1.0 + 20 + 3)


def test_clamped_at_grid_edges():
    prof = grid_profile()
    assert prof.verify_time_ms(100, 1) == pytest.approx(41.0)
    assert prof.verify_time_ms(1, 50) == pytest.approx(13.0)
    assert prof.verify_time_ms(0, 0) == pytest.approx(11.0)


def test_ragged_grid_and_ngram_cost():
    prof = HardwareProfile({"1": {"1": 10, "5": 14}, "8": {"1": 40}}, ngram_lookup_ms_per_row=0.1)
    assert prof.verify_time_ms(1, 3) == pytest.approx(12.0)
    assert prof.verify_time_ms(8, 3) == pytest.approx(40.0)
    assert not prof.has_draft_model
    assert prof.draft_time_ms(8, 4) == pytest.approx(0.8)


def test_roundtrip_file_and_lead_profiler_format(tmp_path):
    data = {
        "format": "nightjar-rl/hardware-profile",
        "version": 1,
        "device": "x86_64",
        "device_type": "cpu",
        "model": "smollm2-135m",
        "dtype": "float32",
        "verify_ms": {"1": {"1": 70.0, "8": 90.0}, "64": {"1": 330.0, "2": 655.0}},
        "draft_ms": {},
        "ngram_lookup_ms_per_row": 0.02,
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    prof = HardwareProfile.load(path)
    assert prof.model == "smollm2-135m" and prof.meta["device_type"] == "cpu"
    again = HardwareProfile.from_dict(prof.to_dict())
    assert again.verify_time_ms(30, 2) == pytest.approx(prof.verify_time_ms(30, 2))


@pytest.mark.parametrize(
    "data, match",
    [
        ({}, "verify_ms"),
        ({"verify_ms": {}}, "non-empty"),
        ({"verify_ms": {"0": {"1": 1.0}}}, "positive"),
        ({"verify_ms": {"x": {"1": 1.0}}}, "not an integer"),
        ({"verify_ms": {"1": {"1": -1.0}}}, ">= 0"),
        ({"verify_ms": {"1": {"1": "fast"}}}, "number"),
        ({"verify_ms": {"1": {"1": 1.0}}, "version": 9}, "version"),
        ({"verify_ms": {"1": {"1": 1.0}}, "format": "other"}, "format"),
        ({"verify_ms": {"1": {"1": 1.0}}, "draft_ms": {"2": None}}, "draft_ms"),
        ([], "JSON object"),
    ],
)
def test_validation_errors(data, match):
    with pytest.raises(ProfileError, match=match):
        HardwareProfile.from_dict(data)


def test_load_errors(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        HardwareProfile.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ProfileError, match="not valid JSON"):
        HardwareProfile.load(bad)
