"""What a drafter would get accepted along a known output: the acceptance tables a trace stores.

For every output position p (the row holds prompt + output[:p]; the next token is output[p]) and
every k in 0..max_k: `drafted[p, k]`, the tokens the engine would draft, and `accepted[p, k]`, how
many of them agree with the true continuation. Each drafter kind names its table function in the
registry (`nightjar_rl.decoding.drafters.registry`); `nightjar_rl.sim.record` calls it.
"""

from __future__ import annotations

import numpy as np
import torch

from nightjar_rl.decoding.sequence import Request, Sequence
from nightjar_rl.decoding.tree import tree_greedy_accept
from nightjar_rl.decoding.verify import SamplingParams


def agreement(proposal, truth) -> int:
    """Length of the common prefix of a proposal and the true continuation."""
    n = 0
    for a, b in zip(proposal, truth):
        if a != b:
            break
        n += 1
    return n


def linear_tables(proposal_len: list[int], agree: list[int], max_k: int) -> tuple[np.ndarray, np.ndarray]:
    """drafted[p, k] = min(k, D(p)), accepted[p, k] = min(k, L(p)) for a linear drafter whose longest
    proposal at p has length D(p) and agrees with the truth for L(p) tokens."""
    ks = np.arange(max_k + 1)
    d = np.minimum(ks[None, :], np.asarray(proposal_len)[:, None])
    a = np.minimum(ks[None, :], np.asarray(agree)[:, None])
    d[0] = a[0] = 0
    return d, a


def draft_model_tables(draft_model, prompt: list[int], output: list[int], max_k: int):
    """Draft-model acceptance from one teacher-forced pass: while the draft's inputs are the true
    tokens its proposal is its argmax after each true prefix, so L(p) is the run of positions from
    p on where that argmax equals the true next token."""
    full = list(prompt) + list(output)
    device = next(draft_model.parameters()).device
    with torch.inference_mode():
        logits = draft_model(input_ids=torch.tensor([full[:-1]], device=device)).logits[0]
    pred = logits.argmax(-1).tolist()  # pred[q] predicts full[q + 1]
    hits = [int(pred[q] == full[q + 1]) for q in range(len(full) - 1)]
    run = [0] * (len(hits) + 1)  # run[q] = consecutive hits from q on
    for q in range(len(hits) - 1, -1, -1):
        run[q] = run[q + 1] + 1 if hits[q] else 0
    agree = [0] + [run[len(prompt) + p - 1] for p in range(1, len(output))]
    return linear_tables([0] + [max_k] * (len(output) - 1), agree, max_k)


def tree_tables(drafter, prompt: list[int], output: list[int], max_k: int, max_new_tokens: int):
    """Token-tree (SSSD) acceptance: the drafter's own tree of k nodes at every position, pruned to
    the depth the engine verifies (remaining - 1), walked along the true continuation."""
    greedy = SamplingParams()
    n = len(output)
    drafted = np.zeros((n, max_k + 1), np.int64)
    accepted = np.zeros((n, max_k + 1), np.int64)
    seq = Sequence(Request("trace", list(prompt), max_new_tokens), tokens=list(prompt) + [output[0]])
    for p in range(1, n):
        truth = list(output[p:])
        for k in range(1, max_k + 1):
            tree = drafter.propose([seq], [k], 0, greedy).extra["tree"][0]
            tree = tree.prune_depth(max(0, max_new_tokens - p - 1))
            # the target's choice after a node is the true next token while the node's path is true
            choice = [truth[0]] + [-1] * len(tree)
            for m in range(len(tree)):
                path = [tree.tokens[j] for j in tree.path_to(m)]
                if len(path) < len(truth) and path == truth[: len(path)]:
                    choice[m + 1] = truth[len(path)]
            drafted[p, k] = len(tree)
            accepted[p, k] = len(tree_greedy_accept(tree, choice)[0])
        seq.tokens.append(output[p])
    drafter.on_finish(seq)
    return drafted, accepted


def stateless_tables(drafter, prompt: list[int], output: list[int], max_k: int, max_new_tokens: int):
    """Tables of any model-free linear drafter whose proposal depends only on the row's tokens (and
    whose k-token proposal is a prefix of its max_k one), n-gram prompt lookup included: its own
    `propose` at every position, the lookup at p seeing prompt + output[:p]."""
    greedy = SamplingParams()
    seq = Sequence(Request("trace", list(prompt), max_new_tokens), tokens=list(prompt) + [output[0]])
    lens, agree = [0], [0]
    for p in range(1, len(output)):
        proposal = drafter.propose([seq], [max_k], 0, greedy).tokens[0][:max_k]
        lens.append(len(proposal))
        agree.append(agreement(proposal, output[p:]))
        seq.tokens.append(output[p])
    drafter.on_finish(seq)
    return linear_tables(lens, agree, max_k)
