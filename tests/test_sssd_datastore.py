"""Datastore files: round trip, atomic CLI build, clear errors for missing/corrupt/mismatched files."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from nightjar_rl.decoding.datastore import Datastore
from nightjar_rl.decoding.datastore_cli import add_datastore_parser, read_corpus
from nightjar_rl.stack import EngineConfig, build_stack


@pytest.fixture()
def store_path(tmp_path):
    store = Datastore.build([[1, 2, 3, 4], [2, 3, 5]], vocab_size=96, fingerprint="fp")
    return store.save(tmp_path / "ds.npz")


def test_round_trip_and_live_text_is_folded_in(store_path, tmp_path):
    store = Datastore.load(store_path, vocab_size=96, fingerprint="fp")
    assert store.count([2, 3]) == 2 and store.header["num_docs"] == 2
    store.add([2, 3, 7])
    again = Datastore.load(store.save(tmp_path / "ds2.npz"))
    assert again.count([2, 3]) == 3 and again.header["num_docs"] == 3
    assert sorted(again.continuations([2, 3], 1)) == [[4], [5], [7]]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        Datastore.load(tmp_path / "nope.npz")


def test_corrupt_files(store_path, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt"):
        Datastore.load(garbage)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(store_path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        Datastore.load(truncated)
    other = tmp_path / "other.npz"
    np.savez(other, tokens=np.zeros(3, np.int32), sa=np.zeros(3, np.int64), header=np.array(json.dumps({"format": "x"})))
    with pytest.raises(ValueError, match="not an SSSD datastore"):
        Datastore.load(other)
    with np.load(store_path) as data:
        header = str(data["header"])
        bad_sa = tmp_path / "bad_sa.npz"
        np.savez(bad_sa, tokens=data["tokens"], sa=np.zeros_like(data["sa"]), header=np.array(header))
    with pytest.raises(ValueError, match="not a permutation"):
        Datastore.load(bad_sa)


def test_vocabulary_mismatch(store_path):
    with pytest.raises(ValueError, match="vocabulary of 96"):
        Datastore.load(store_path, vocab_size=49152)
    with pytest.raises(ValueError, match="different tokenizer"):
        Datastore.load(store_path, vocab_size=96, fingerprint="other")


def test_cli_build_and_stack(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "hello hello world"}\n\n{"text": "abc abc"}\n', encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_datastore_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "sub" / "ds.npz"
    args = parser.parse_args(["datastore", "build", "--corpus", str(corpus), "--model", "tiny-random", "--out", str(out)])
    assert args.func(args) == 0
    store = Datastore.load(out)
    assert store.header["num_docs"] == 2 and store.header["num_tokens"] == len("hello hello world") + len("abc abc")
    stack = build_stack(EngineConfig(model="tiny-random", drafter="sssd", datastore=str(out), max_seq_len=64))
    assert stack.engine.drafter.datastore.count([ord("a") % 96, ord("b") % 96]) == 2
    with pytest.raises(ValueError, match="not found"):
        build_stack(EngineConfig(model="tiny-random", drafter="sssd", extra={"datastore": str(tmp_path / "x.npz")}))


def test_bad_corpus(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="field 'text'"):
        read_corpus(bad)
    with pytest.raises(ValueError, match="not found"):
        read_corpus(tmp_path / "missing.jsonl")
    text = tmp_path / "c.txt"
    text.write_text("one doc\n\nanother doc\n", encoding="utf-8")
    assert read_corpus(text) == ["one doc", "another doc"]
