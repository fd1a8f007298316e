"""CLI edges (issue 22): every output path is checked before any work starts (finding 4: a folder
where a file goes, a file where a folder goes, a file in the way of the parent), and bad export,
device and profile flags (findings 7, 10) get one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from nightjar_rl.cli import main
from nightjar_rl.io import check_writable

# the model named does not exist: an error about it would mean the output check came too late
NO_MODEL = ["--model", "no-such-model-anywhere", "--quiet"]
CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "nightjar_study_cpu.yaml")


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["generate", *NO_MODEL, "--out", "{dir}"], "--out"),
        (["generate", *NO_MODEL, "--out", "{file}/x.jsonl"], "--out"),
        (["bench", *NO_MODEL, "--out", "{dir}"], "--out"),
        (["bench", *NO_MODEL, "--log-steps", "{dir}"], "--log-steps"),
        (["generate", *NO_MODEL, "--out", "{tmp}/g.jsonl", "--policy", "nightjar", "--learn", "--save-policy", "{dir}"],
         "--save-policy"),
        (["experiment", CONFIG, "--out-dir", "{file}"], "--out-dir"),
        (["export", "table-mlc_llm", "--to", "vllm", "--out", "{dir}"], "--out"),
    ],
)
def test_bad_output_paths_fail_first_with_one_line(tmp_path, capsys, argv, flag):
    folder, file = tmp_path / "a-folder", tmp_path / "a-file"
    folder.mkdir()
    file.write_text("x")
    argv = [a.format(dir=folder, file=file, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"nightjar-rl: error: {flag} ")
    assert file.read_text() == "x" and not any(folder.iterdir())


def test_check_writable_accepts_new_files_and_folders(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "out.json", "--out")
    check_writable(tmp_path / "existing.json", "--out")
    check_writable(tmp_path / "runs", "--out-dir", folder=True)
    check_writable(tmp_path, "--out-dir", folder=True)


EXPORT = ["export", "table-mlc_llm", "--to", "vllm"]
PROFILE = ["profile", "--model", "tiny-random", "--batch-sizes", "1", "--tokens", "1", "--quiet"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*EXPORT, "--num-speculative-tokens", "0"], "--num-speculative-tokens must be >= 1"),
        ([*EXPORT, "--num-speculative-tokens", "-1"], "--num-speculative-tokens must be >= 1"),
        ([*EXPORT, "--queue-len", "-1"], "--queue-len must be a finite number >= 0, got -1.0"),
        ([*EXPORT, "--queue-len", "nan"], "--queue-len must be a finite number >= 0, got nan"),
        ([*EXPORT, "--max-batch-size", "10000000"], "--max-batch-size must be in [1, 65536], got 10000000"),
        (["bench", "--model", "tiny-random", "--device", "bogus", "--quiet"], "unknown device 'bogus'"),
        ([*PROFILE, "--device", "bogus"], "unknown device 'bogus'"),
        ([*PROFILE, "--context", "-5"], "--context must be >= 1, got -5"),
        ([*PROFILE, "--repeats", "0"], "--repeats must be >= 1, got 0"),
        ([*PROFILE, "--context", "1000000"], "--context/--contexts plus --tokens reach 1000001 positions"),
        (["bench", "--model", "tiny-random", "--num-requests", "0", "--quiet"], "--num-requests must be >= 1, got 0"),
    ],
)
def test_bad_flags_get_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_cuda_without_cuda_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", "--model", "tiny-random", "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "CUDA is not available" in err


def test_a_truncated_results_table_names_the_file_and_row(tmp_path):
    from nightjar_rl.experiments.fields import ExperimentError
    from nightjar_rl.experiments.runner import _finished_cells

    path = tmp_path / "results.csv"
    path.write_text("policy,rate,seed,replicate,throughput\nfixed-2,5.0,0,0,10.5\nfixed-3,5.0,")
    with pytest.raises(ExperimentError, match=r"results.csv: data row 2 is incomplete") as info:
        _finished_cells(tmp_path)
    assert "\n" not in str(info.value)
    path.write_text("policy,rate,seed,replicate,throughput\nfixed-2,5.0,0,0,10.5\n")
    assert _finished_cells(tmp_path) == {("fixed-2", 5.0, 0, 0, None)}


def test_invalid_utf8_in_a_prompts_file_names_the_file(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b'{"prompt": "ok"}\n{"prompt": "bad \xff byte"}\n')
    assert main(["generate", "--model", "tiny-random", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{prompts}:2: not valid UTF-8" in err


def test_check_int_messages_read_well():
    from nightjar_rl.policy.base import check_int

    with pytest.raises(ValueError, match=r"^max_k must be >= 0, got -1$"):
        check_int("max_k", -1)
    with pytest.raises(ValueError, match=r"^k must be in \[0, 4\], got 5$"):
        check_int("k", 5, 0, 4)


def test_out_dir_is_not_checked_when_resuming(tmp_path, capsys):
    """--resume writes into the run folder, not --out-dir (its default may be unwritable there)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["experiment", CONFIG, "--out-dir", str(blocker), "--resume", str(tmp_path / "no-run")]) == 2
    assert "not a run folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["export", "table-mlc_llm", "--to", "vlm"], "nightjar-rl export: error: argument --to: invalid choice: 'vlm'"),
    (["bench", "--num-requests", "many"], "nightjar-rl bench: error: argument --num-requests: invalid int value"),
    (["trace", "record", "--max-k"], "nightjar-rl trace record: error: argument --max-k: expected one argument"),
])
def test_usage_errors_are_one_line_too(capsys, argv, message):
    """argparse's own errors printed the whole usage (up to 100 lines for bench) above the error."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and err.startswith(message) and "--help)" in err
