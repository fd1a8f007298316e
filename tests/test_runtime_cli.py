"""`--policy` on generate/bench: every artifact type drives every decoder/drafter without changing
greedy outputs; --learn saves the updated artifact; --log-steps writes a tidy table."""

import json

import pandas as pd
import pytest

from nightjar_rl.cli import main
from nightjar_rl.policy import POLICY_TYPES, load_policy, make_policy, save_policy


BASE = ["--model", "tiny-random", "--max-new-tokens", "10", "--max-seq-len", "128", "--max-speculation", "6", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_text('{"prompt": "hello there, how are you"}\n{"prompt": "a b a b a b a b"}\n{"prompt": "def f(x): return x"}\n')
    BASE.extend(["--prompts", str(path)])
    yield path
    del BASE[-2:]


def _generate(tmp_path, name, *extra):
    out = tmp_path / f"{name}.jsonl"
    assert main(["generate", *BASE, "--out", str(out), *extra]) == 0
    return [json.loads(line)["token_ids"] for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("policies")
    specs = {
        "fixed": {"type": "fixed", "k": 3},
        "table": {"type": "table", "table": {"1-2": 5, "3+": 1}},
        "disable": {"type": "disable_by_batch_size", "k": 4, "threshold": 3},
        "hysteresis": {"type": "hysteresis", "policy": {"type": "table", "preset": "mlc_llm"}, "dwell": 2},
        "nightjar": {"type": "nightjar", "epsilon": 0.3, "default_k": 2},
    }
    paths = {}
    for name, spec in specs.items():
        paths[name] = save_policy(make_policy(spec, 6), d / f"{name}.json")
    if "mlp" in POLICY_TYPES:  # the exported neural policy (another branch); covered once it is registered
        paths["mlp"] = None
    exported = d / "vllm.json"
    assert main(["export", "table-mlc_llm", "--to", "vllm", "--max-k", "6", "--out", str(exported)]) == 0
    paths["vllm_export"] = exported
    return paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("ref"), "ref", "--k", "0", "--drafter", "none")


@pytest.mark.parametrize("name", ["fixed", "table", "disable", "hysteresis", "nightjar", "vllm_export"])
def test_every_artifact_type_keeps_greedy_outputs(tmp_path, artifacts, reference, name):
    assert _generate(tmp_path, name, "--policy", str(artifacts[name])) == reference


@pytest.mark.parametrize("decoder, drafter", [("standard", "draft"), ("parallel", "ngram"), ("parallel", "draft"),
                                              ("standard", "sssd")])
def test_policy_drives_every_decoder_and_drafter(tmp_path, artifacts, reference, decoder, drafter):
    extra = ["--draft", "early-exit:2"] if drafter == "draft" else []
    got = _generate(tmp_path, "x", "--decoder", decoder, "--drafter", drafter, *extra,
                    "--policy", str(artifacts["nightjar"]), "--learn", "--save-policy", str(tmp_path / "l.json"))
    assert got == reference


def test_spec_strings_and_json_specs(tmp_path, reference):
    assert _generate(tmp_path, "a", "--policy", "table-mlc_llm") == reference
    assert _generate(tmp_path, "b", "--policy", '{"type": "fixed", "k": 2}') == reference


def test_learn_saves_updated_artifact_and_log_steps(tmp_path, artifacts):
    src = artifacts["nightjar"]
    saved, log = tmp_path / "learned.json", tmp_path / "steps.parquet"
    assert main(["bench", *BASE, "--num-requests", "6", "--policy", str(src), "--learn", "--save-policy", str(saved),
                 "--log-steps", str(log)]) == 0
    before, after = load_policy(src), load_policy(saved)
    assert after.counts.sum() > before.counts.sum()
    steps = pd.read_parquet(log)
    for col in ("step", "clock", "batch", "queue", "k", "drafted", "accepted", "emitted", "wall_time", "reward"):
        assert col in steps.columns
    assert len(steps) > 0 and (steps["k"] <= 6).all() and steps["clock"].is_monotonic_increasing
    assert steps["reward"].notna().any()
    assert set(steps["verify_layout"]) == {"packed"}  # the engine's default layout, what the fit needs to know


def test_learn_default_save_path_is_beside_the_artifact(tmp_path, artifacts):
    src = tmp_path / "nj.json"
    src.write_text(artifacts["nightjar"].read_text())
    _generate(tmp_path, "c", "--policy", str(src), "--learn", "--log-steps", str(tmp_path / "s.csv"))
    assert (tmp_path / "nj.learned.json").is_file()
    assert len(pd.read_csv(tmp_path / "s.csv")) > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--k", "2", "--policy", "fixed-2"], "not both"),
        (["--policy", "no-such-policy"], "unknown policy"),
        (["--policy", "/no/such/policy.json"], "does not exist"),
        (["--policy", "table-mlc_llm", "--learn", "--save-policy", "x.json"], "needs a learning policy"),
        (["--policy", "nightjar", "--learn"], "needs --save-policy"),
        (["--policy", "fixed-2", "--log-steps", "steps.txt"], ".csv or .parquet"),
        (["--k", "9"], "exceeds --max-speculation"),
    ],
)
def test_bad_policy_flags_are_one_line_errors(tmp_path, capsys, extra, message):
    assert main(["generate", *BASE, "--out", str(tmp_path / "o.jsonl"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_artifact_above_engine_max_k_is_refused(tmp_path, capsys):
    path = save_policy(make_policy("fixed-7", 8), tmp_path / "big.json")
    assert main(["generate", *BASE, "--out", str(tmp_path / "o.jsonl"), "--policy", str(path)]) == 2
    assert "max_k=8" in capsys.readouterr().err


def test_serve_saves_learned_policy_and_step_log_on_sigterm(tmp_path):
    """`kill PID` (SIGTERM) shuts the server down gracefully and still writes --save-policy and
    --log-steps (uvicorn re-raises SIGTERM after its shutdown; the CLI must exit through its finally)."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from nightjar_rl.runtime.server import free_port, wait_until_healthy

    port = free_port()
    saved, steps = tmp_path / "nj.json", tmp_path / "steps.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nightjar_rl.cli", "serve", "--model", "tiny-random", "--drafter", "ngram",
         "--policy", "nightjar", "--learn", "--save-policy", str(saved), "--log-steps", str(steps),
         "--port", str(port), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", proc, timeout=120)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "abc", "max_tokens": 6}, timeout=60)
        assert r.status_code == 200
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert load_policy(saved).name.startswith("nightjar")
    log = pd.read_csv(steps)
    assert len(log) >= 1 and log["emitted"].sum() == 5  # the first of the 6 tokens comes from the prefill
