"""`nightjar-rl datastore build`: tokenize a corpus and write an SSSD suffix-array datastore."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nightjar_rl.decoding.datastore import Datastore, tokenizer_fingerprint
from nightjar_rl.io import read_jsonl
from nightjar_rl.model_names import DEFAULT_MODEL
from nightjar_rl.text import encode_prompt


def read_corpus(path: str | Path, field: str = "text") -> list[str]:
    """Documents of a corpus: JSONL (one object per line, text in `field`) or plain text
    (documents separated by blank lines)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"corpus file not found: {path}")
    docs: list[str] = []
    if path.suffix in (".jsonl", ".json"):
        for lineno, obj in read_jsonl(path):
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise ValueError(f"{path}:{lineno}: each line needs a string field {field!r}")
            docs.append(obj[field])
    else:
        docs = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    if not docs:
        raise ValueError(f"{path}: no documents")
    return docs


def load_tokenizer(model: str):
    """(tokenizer or None, vocab size) for a model name, without loading its weights."""
    from nightjar_rl.models import TINY_PREFIX, ensure_default_converted, tiny_config

    if model.startswith(TINY_PREFIX):
        return None, tiny_config().vocab_size
    from transformers import AutoConfig, AutoTokenizer

    path = ensure_default_converted() if model == DEFAULT_MODEL else model
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        vocab = AutoConfig.from_pretrained(path).vocab_size
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the tokenizer of {model!r}: {exc}") from None
    return tokenizer, int(vocab)


def build_datastore(corpus: str | Path, model: str, out: str | Path, field: str = "text") -> Datastore:
    """Tokenize `corpus` with `model`'s tokenizer (raw text, no chat template), index it, write `out`."""
    tokenizer, vocab = load_tokenizer(model)
    docs = [encode_prompt(tokenizer, text, vocab, chat=False) for text in read_corpus(corpus, field)]
    store = Datastore.build(docs, vocab, tokenizer_fingerprint(tokenizer, vocab))
    store.header["model"] = model
    store.save(out)
    return store


def add_datastore_parser(subparsers) -> argparse.ArgumentParser:
    """Register `datastore build` on the main CLI's subparsers."""
    parser = subparsers.add_parser("datastore", help="build n-gram datastores for the SSSD drafter")
    sub = parser.add_subparsers(dest="datastore_command", required=True)
    build = sub.add_parser("build", help="tokenize a corpus (JSONL or text) into a suffix-array datastore")
    build.add_argument("--corpus", required=True, help="JSONL file (one object per line) or plain text file")
    build.add_argument("--model", default=DEFAULT_MODEL, help="model whose tokenizer to use")
    build.add_argument("--out", required=True, help="output .npz path (written atomically)")
    build.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    build.set_defaults(func=run_datastore)
    return parser


def run_datastore(args: argparse.Namespace) -> int:
    """Handler for `datastore build`; returns the exit status."""
    t0 = time.perf_counter()
    store = build_datastore(args.corpus, args.model, args.out, args.field)
    h = store.header
    print(
        f"wrote {args.out}: {h['num_docs']} documents, {h['num_tokens']} tokens, "
        f"vocab {h['vocab_size']} ({time.perf_counter() - t0:.1f} s)"
    )
    return 0
