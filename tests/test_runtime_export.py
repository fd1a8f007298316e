"""Schedule export: each engine's rules, round trips back to a table policy, and notes on what a
batch-size-only schedule loses."""

import json

import numpy as np
import pytest

from nightjar_rl.cli import main
from nightjar_rl.contracts.observation import obs_field
from nightjar_rl.policy import make_policy
from nightjar_rl.policy.base import Policy, batch_of
from nightjar_rl.policy.export import FORMATS, export_schedule, schedule, sensitivity, table_from_export, validate
from nightjar_rl.policy.resolve import resolve_policy


class QueueAware(Policy):
    """k = 4 at small batches, 0 once a queue builds up: reads more than the batch size."""

    type_name = "queue_aware_test"

    def predict(self, obs, deterministic=True):
        return 0 if obs_field(obs, "queue_len") > 4 or batch_of(obs) > 16 else 4


SCHEDULES = {
    "mlc": [4] * 9 + [3] * 10 + [2] * 10 + [0] * 35,
    "rising": [1, 1, 3, 3, 2, 0, 0, 5],
    "flat": [2] * 5,
    "off": [0] * 4,
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_round_trip_predicts_the_same_k_per_batch_size(fmt, name):
    ks = SCHEDULES[name]
    exp = export_schedule(ks, fmt)
    validate(exp.config, fmt)
    table = table_from_export(json.loads(json.dumps(exp.config)), max_k=8)
    got = [table.k_for_batch(b) for b in range(1, len(ks) + 1)]
    if fmt == "trtllm":  # key 1 = max_draft_len: larger k later is clamped, and said so
        assert got == [min(k, ks[0]) for k in ks]
        assert (max(ks) > ks[0]) == any("clamped" in n for n in exp.notes)
    else:
        assert got == ks
    assert table.k_for_batch(len(ks) + 50) == got[-1]


def test_vllm_rules():
    cfg = export_schedule(SCHEDULES["mlc"], "vllm").config
    rows = cfg["num_speculative_tokens_per_batch_size"]
    assert rows[0][0] == 1 and all(a[1] + 1 == b[0] for a, b in zip(rows, rows[1:]))
    assert cfg["num_speculative_tokens"] == 4 and all(k <= 4 for _, _, k in rows)
    capped = export_schedule(SCHEDULES["mlc"], "vllm", num_speculative_tokens=2)
    assert max(k for *_, k in capped.config["num_speculative_tokens_per_batch_size"]) == 2
    assert any("clamped" in n for n in capped.notes)
    for bad in ([[2, 4, 1]], [[1, 4, 1], [4, 8, 0]], [[1, 4, 9]], []):
        with pytest.raises(ValueError):
            validate({"num_speculative_tokens": 4, "num_speculative_tokens_per_batch_size": bad}, "vllm")


def test_trtllm_rules():
    cfg = export_schedule(SCHEDULES["mlc"], "trtllm").config
    assert cfg == {"max_draft_len": 4, "draft_len_schedule": {"1": 4, "10": 3, "20": 2, "30": 0}}
    for bad in ({"max_draft_len": 4, "draft_len_schedule": {"2": 4}},
                {"max_draft_len": 4, "draft_len_schedule": {"1": 3}},
                {"max_draft_len": 4, "draft_len_schedule": {"1": 4, "8": 5}}):
        with pytest.raises(ValueError):
            validate(bad, "trtllm")


def test_sglang_rules():
    cfg = export_schedule(SCHEDULES["mlc"], "sglang").config
    assert all(key.isdigit() for key in cfg) and "1" in cfg
    assert all(len(slot["candidate_steps"]) == 1 for slot in cfg.values())
    assert cfg["30"]["candidate_steps"] == [0]
    with pytest.raises(ValueError):
        validate({"one": {"candidate_steps": [1]}}, "sglang")
    with pytest.raises(ValueError):
        validate({"1": {"candidate_steps": []}}, "sglang")


def test_policy_schedule_and_what_is_lost():
    policy = QueueAware(8)
    ks = schedule(policy, 32)
    assert ks == [4] * 16 + [0] * 16
    notes = sensitivity(policy, 32)
    assert any("queue_len" in n for n in notes)
    assert sensitivity(make_policy("table-mlc_llm", 8), 32) == []


def test_export_cli_round_trip_through_policy_flag(tmp_path, capsys):
    for fmt in FORMATS:
        out = tmp_path / f"{fmt}.json"
        assert main(["export", "table-mlc_llm", "--to", fmt, "--max-batch-size", "64", "--out", str(out)]) == 0
        table = resolve_policy(str(out), 8)
        mlc = make_policy("table-mlc_llm", 8)
        assert [table.k_for_batch(b) for b in range(1, 65)] == [mlc.k_for_batch(b) for b in range(1, 65)]
    capsys.readouterr()
    assert main(["export", "table-mlc_llm", "--to", "vllm", "--max-batch-size", "32"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_speculative_tokens"] == 4 and "bs 1-9: k=4" in captured.err


def test_export_cli_bad_input(capsys):
    assert main(["export", "table-mlc_llm", "--to", "vllm", "--max-batch-size", "0"]) == 2
    assert main(["export", "/no/such.json", "--to", "vllm"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_exported_neural_policies_go_through_the_same_path():
    """Any Policy (the `mlp` artifact type included) exports through predict at the typical observation."""
    class Noisy(Policy):
        type_name = "noisy_test"

        def predict(self, obs, deterministic=True):
            return int(np.clip(round(8 * obs_field(obs, "ema_acceptance")) - batch_of(obs) // 8, 0, 8))

    ks = schedule(Noisy(8), 40)
    assert ks[0] == 6 and ks[-1] == 1
    assert any("ema_acceptance" in n for n in sensitivity(Noisy(8), 40))
