"""Is a real draft model's confidence worth choosing drafts by? (issue 20: the signal adaptive
verification ranks draft slots by, measured on the bundled model instead of assumed.)

The live engine serves a workload at a fixed k with a draft model (early-exit drafts of SmolLM2 by
default), greedy float32; every drafted token is recorded with the probability the draft model gave it
(`DraftProposal.confidences`) and its outcome (accepted; rejected; or unseen, after an earlier rejection).
Reports, per draft:
  - calibration: acceptance by confidence decile (of tokens whose predecessors were accepted), the
    Brier score, and the AUC of confidence for acceptance;
  - selection: the drafted slots each step verified, ranked by survival (product of the row's stated
    confidences: what `SpecPlan.verify_costs` selects by), by calibrated survival (each confidence
    replaced by the acceptance of its (depth, confidence decile) cell, fitted on the other half of the
    steps), or by depth (every row alike, what a history-only allocator can do): tokens kept when the
    top 25 / 50 / 75% of each step's slots are verified.
Token outcomes only: nothing is timed, so the machine's load does not matter.

    python experiments/draft_confidence.py --out-dir runs/draft_confidence
    python experiments/draft_confidence.py --tokens runs/draft_confidence/tokens.csv --out-dir D  # re-analyse
    python experiments/draft_confidence.py --quick --out-dir /tmp/dc      # seconds: tiny random model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import quickmode  # same folder

from nightjar_rl.contracts.plan import slot_order, survival_of
from nightjar_rl.decoding import DraftModelDrafter, SpeculativeEngine
from nightjar_rl.decoding.drafters.registry import load_draft_model
from nightjar_rl.env.recorder import write_table
from nightjar_rl.env.workload import PromptPool
from nightjar_rl.models import load_model
from nightjar_rl.runtime.driver import serve
from nightjar_rl.serving.workload import build_requests

QUICK = {"model": "tiny-random", "drafts": "early-exit:1", "num_requests": 6, "max_new_tokens": 12}
SHARES = (0.25, 0.5, 0.75)


class RecordingDrafter(DraftModelDrafter):
    """A draft model that keeps every proposal it makes (tokens and stated confidences)."""

    def __init__(self, model, model_forward: str):
        super().__init__(model, model_forward)
        self.proposals: list = []

    def propose(self, rows, lengths, slot_start, params, generator=None):
        self.wants_confidences = True  # stated at every k, not only for plans that choose by them
        proposal = super().propose(rows, lengths, slot_start, params, generator)
        self.proposals.append(proposal.confidences)
        return proposal


def token_table(steps, proposals, draft: str) -> pd.DataFrame:
    """One row per drafted token: step, request, depth, confidence, survival, outcome."""
    out = []
    decoding = [s for s in steps if s.batch_size and s.k > 0]
    if len(decoding) != len(proposals):
        raise RuntimeError(f"{len(proposals)} proposals for {len(decoding)} drafting steps")
    for stats, stated in zip(decoding, proposals):
        for rid, drafted, accepted, conf in zip(stats.request_ids, stats.drafted, stats.accepted, stated):
            conf = conf[:drafted]
            survival = np.cumprod(conf) if drafted else []
            for j in range(drafted):
                outcome = "accepted" if j < accepted else "rejected" if j == accepted else "unseen"
                out.append(dict(draft=draft, step=stats.step, request_id=rid, depth=j + 1, confidence=conf[j],
                                survival=survival[j], outcome=outcome))
    return pd.DataFrame(out)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random accepted token was stated more confident than a random rejected one."""
    ranks = pd.Series(scores).rank().to_numpy()
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)) if n_pos and n_neg else float("nan")


def calibration(tokens: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Acceptance by confidence decile over the tokens whose outcome was seen; Brier score and AUC."""
    seen = tokens[tokens["outcome"] != "unseen"].copy()
    seen["ok"] = seen["outcome"] == "accepted"
    seen["bin"] = pd.qcut(seen["confidence"], 10, duplicates="drop")
    table = seen.groupby("bin", observed=True).agg(tokens=("ok", "size"), mean_confidence=("confidence", "mean"),
                                                   acceptance=("ok", "mean")).reset_index()
    table["bin"] = table["bin"].astype(str)
    ok = seen["ok"].to_numpy()
    summary = dict(tokens_seen=len(seen), acceptance=float(ok.mean()), mean_confidence=float(seen["confidence"].mean()),
                   brier=float(((seen["confidence"] - ok) ** 2).mean()), auc=auc(seen["confidence"].to_numpy(), ok))
    return table, summary


def calibrated(tokens: pd.DataFrame) -> pd.Series:
    """Each token's acceptance given its depth and stated-confidence decile, fitted on the other half of
    the steps (odd / even: cross-fitted), shrunk towards that half's overall rate (weight 2 tokens)."""
    seen, ok = tokens["outcome"] != "unseen", tokens["outcome"] == "accepted"
    fold = tokens["step"] % 2
    out = pd.Series(np.nan, index=tokens.index)
    for f in (0, 1):
        train, test = seen & (fold != f), fold == f
        edges = np.quantile(tokens.loc[train, "confidence"], np.linspace(0, 1, 11)[1:-1])  # the fitting half's deciles
        cell = tokens["depth"].astype(str) + ":" + pd.Series(np.searchsorted(edges, tokens["confidence"]),
                                                              index=tokens.index).astype(str)
        overall = ok[train].mean()
        rate = (ok[train].groupby(cell[train]).sum() + 2 * overall) / (cell[train].groupby(cell[train]).size() + 2)
        out[test] = cell[test].map(rate).fillna(overall)
    return out


def selection(tokens: pd.DataFrame) -> dict:
    """Per step, the top share of its drafted slots by survival, by calibrated survival and by depth:
    accepted tokens they keep (a row keeps min(slots verified, tokens accepted)), summed over steps;
    each ranking's total over the depth ranking's."""
    tokens = tokens.assign(calibrated=calibrated(tokens))
    kinds = ("confidence", "calibrated", "depth")
    kept = {share: dict.fromkeys(kinds, 0) for share in SHARES}
    for _, step in tokens.groupby("step"):
        rows = list(dict.fromkeys(step["request_id"]))
        by_row = [step[step["request_id"] == r] for r in rows]
        accepted = np.array([(part["outcome"] == "accepted").sum() for part in by_row])
        survival = survival_of([part["confidence"].tolist() for part in by_row])
        rankings = {"confidence": survival, "calibrated": survival_of([part["calibrated"].tolist() for part in by_row]),
                    "depth": np.where(survival > 0, 1.0 / (1 + np.arange(survival.shape[1]))[None, :], 0.0)}
        total = int((survival > 0).sum())
        for share in SHARES:
            budget = int(round(share * total))
            for kind, ranking in rankings.items():
                verified = np.bincount(slot_order(ranking)[:budget] // survival.shape[1], minlength=len(rows))
                kept[share][kind] += int(np.minimum(verified, accepted).sum())
    out = {}
    for share, got in kept.items():
        top = f"top{int(share * 100)}"
        for kind in ("confidence", "calibrated"):
            out[f"kept_{top}_{kind}_vs_depth"] = got[kind] / got["depth"] if got["depth"] else float("nan")
        out[f"kept_{top}"] = " / ".join(f"{kind} {got[kind]}" for kind in kinds)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--drafts", default="early-exit:4,early-exit:8,early-exit:15", help="draft models, comma-separated")
    ap.add_argument("--workload", default="bundled", help="a workload spec (bundled, sharegpt, humaneval, ...)")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens", help="a tokens.csv of an earlier run: analyse it again instead of serving")
    ap.add_argument("--out-dir", default="runs/draft_confidence")
    a = quickmode.parse_args(ap, QUICK, argv)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if a.tokens:
        analyse(pd.read_csv(a.tokens), a, out)
        return
    target = load_model(a.model, "float32")
    vocab = target.model.config.vocab_size
    pool = PromptPool.build({"path": a.workload, "sample": a.num_requests, "seed": a.seed}, target.tokenizer, vocab,
                            room=512 - a.max_new_tokens - a.k - 1)
    picks = np.random.default_rng(a.seed).permutation(len(pool))[: a.num_requests]  # all at t = 0, batch-size at a time
    requests = build_requests([pool.token_ids[i] for i in picks], [pool.ids[i] for i in picks], np.zeros(len(picks)),
                              [a.max_new_tokens] * len(picks))
    tokens = []
    for draft in a.drafts.split(","):
        drafter = RecordingDrafter(load_draft_model(draft, target, "float32", None), "native")
        engine = SpeculativeEngine(target.model, drafter, max_batch_size=a.batch_size, max_seq_len=512,
                                   max_speculation=a.k, eos_token_ids=target.eos_token_ids)
        result = serve(engine, requests, k=a.k, desc=draft)
        tokens.append(token_table(result.steps, drafter.proposals, draft).assign(
            workload=a.workload, k=a.k, requests=len(requests), seed=a.seed))
    table = pd.concat(tokens, ignore_index=True)
    write_table(table, out / "tokens.csv")
    analyse(table, a, out)


def analyse(table: pd.DataFrame, a: argparse.Namespace, out: Path) -> None:
    """Calibration and selection per draft of a token table; writes calibration.csv and summary.csv."""
    tables, rows = [], []
    for draft, part in table.groupby("draft", sort=False):
        calib, summary = calibration(part)
        calib.insert(0, "draft", draft)
        tables.append(calib)
        first = part.iloc[0]
        rows.append(dict(draft=draft, **{key: first[key] for key in ("workload", "k", "requests", "seed") if key in part},
                         **summary, **selection(part)))
        print(pd.DataFrame([rows[-1]]).T.to_string(header=False))
    write_table(pd.concat(tables, ignore_index=True), out / "calibration.csv")
    write_table(pd.DataFrame(rows), out / "summary.csv")
    print(pd.concat(tables, ignore_index=True).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {out}/calibration.csv, summary.csv")


if __name__ == "__main__":
    main()
