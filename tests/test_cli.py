"""The `nightjar-rl` command on tiny models: outputs, and one-line errors with exit code 2."""

import json

import pytest

from nightjar_rl.cli import main


def test_generate_writes_one_object_per_prompt(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hello there"}\n{"prompt": "second"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", "tiny-random", "--k", "3", "--prompts", str(prompts),
                 "--max-new-tokens", "5", "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "p2"]
    assert all(len(r["token_ids"]) == 5 for r in rows)


def test_generate_output_does_not_depend_on_k(tmp_path):
    outs = []
    for k in ("0", "5"):
        out = tmp_path / f"o{k}.jsonl"
        main(["generate", "--model", "tiny-random", "--k", k, "--families", "chat", "--max-new-tokens", "12",
              "--max-seq-len", "512", "--out", str(out), "--quiet"])
        outs.append(out.read_text())
    assert outs[0] == outs[1]


def test_bench_writes_summary(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--model", "tiny-random", "--k", "2", "--num-requests", "6", "--rate", "100",
                 "--max-new-tokens", "8", "--out", str(out), "--quiet"]) == 0
    summary = json.loads(out.read_text())
    assert summary["requests"] == 6 and summary["output_tokens"] == 48
    for key in ("throughput_tok_s", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "e2e_p95_s", "acceptance_rate",
                "mean_accepted_length", "steps"):
        assert key in summary
    assert "throughput_tok_s" in capsys.readouterr().out


def test_profile_writes_a_grid(tmp_path):
    out = tmp_path / "prof.json"
    assert main(["profile", "--model", "tiny-random", "--batch-sizes", "1,2", "--tokens", "1,3", "--context", "16",
                 "--repeats", "1", "--draft", "early-exit:2", "--out", str(out), "--quiet"]) == 0
    prof = json.loads(out.read_text())
    assert set(prof["verify_ms"]) == {"1", "2"} and set(prof["verify_ms"]["1"]) == {"1", "3"}
    assert set(prof["draft_ms"]) == {"1", "2"}


def test_profile_times_the_draft_model_on_the_engines_forward(tmp_path, monkeypatch):
    """The engine runs its draft model on its own model_forward and layout (`DraftModelDrafter.setup`):
    the profile times the draft model's steps on the same, not on the defaults."""
    from nightjar_rl.decoding import profiler

    made = []
    real = profiler.ModelRunner

    def spy(model, *args, **kwargs):
        runner = real(model, *args, **kwargs)
        made.append((runner.layout, runner.forward_kind))
        return runner

    monkeypatch.setattr(profiler, "ModelRunner", spy)
    out = tmp_path / "prof.json"
    assert main(["profile", "--model", "tiny-random", "--batch-sizes", "1", "--tokens", "1", "--context", "16",
                 "--repeats", "1", "--draft", "early-exit:2", "--model-forward", "native-eager",
                 "--verify-layout", "padded", "--out", str(out), "--quiet"]) == 0
    assert len(made) == 2 and made[0] == made[1] and made[0][0] == "padded"
    assert json.loads(out.read_text())["model_forward"] == "native-eager"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--model", "tiny-random", "--k", "-1"], "--k must be >= 0"),
        (["bench", "--model", "tiny-random", "--rate", "fast"], "--rate takes a number"),
        (["bench", "--model", "no-such-model", "--k", "1"], "unknown model"),
        (["generate", "--model", "tiny-random", "--prompts", "/no/such.jsonl", "--out", "x"], "not found"),
        (["generate", "--model", "tiny-random", "--max-seq-len", "50", "--out", "x", "--quiet"], "exceeds the context"),
        (["bench", "--model", "tiny-random", "--drafter", "draft"], "needs --draft"),
        (["profile", "--model", "tiny-random", "--batch-sizes", "0,x"], "--batch-sizes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_malformed_jsonl_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json}\n')
    assert main(["generate", "--model", "tiny-random", "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_datastore_build_then_sssd_generation_matches_plain(tmp_path):
    store = tmp_path / "ds.npz"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "the quick brown fox jumps over the lazy dog"}\n{"text": "a second document"}\n')
    assert main(["datastore", "build", "--corpus", str(corpus), "--model", "tiny-random", "--out", str(store)]) == 0
    outs = []
    for drafter, k in (("none", "0"), ("sssd", "6")):
        out = tmp_path / f"{drafter}.jsonl"
        assert main(["generate", "--model", "tiny-random", "--drafter", drafter, "--datastore", str(store),
                     "--k", k, "--families", "code", "--max-new-tokens", "10", "--max-seq-len", "512",
                     "--out", str(out), "--quiet"]) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1]


def test_missing_datastore_is_one_line_error(capsys):
    assert main(["bench", "--model", "tiny-random", "--drafter", "sssd", "--datastore", "/no/ds.npz"]) == 2
    assert "datastore" in capsys.readouterr().err


def test_profile_rejects_a_malformed_early_exit_draft(capsys):
    assert main(["profile", "--model", "tiny-random", "--draft", "early-exit:x", "--quiet"]) == 2
    assert "early-exit:4" in capsys.readouterr().err
