"""Accept/reject: pure functions from target logits and draft tokens to the tokens each row keeps.

Greedy: keep draft token i iff it equals the target's argmax at that position; then add the target's
own token at the first disagreement (or after the last draft token): the "bonus".
Sampling (Leviathan et al. 2023): keep draft token x with probability min(1, p(x) / q(x)); at the
first rejection sample from normalize(max(p - q, 0)); if all are kept, sample the bonus from p.
Both leave the output distribution exactly the target's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Argmax = Callable[[torch.Tensor], torch.Tensor]  # `[..., V]` logits -> `[...]` token ids, the first maximum


def torch_argmax(logits: torch.Tensor) -> torch.Tensor:
    """The greedy token at each position of `[..., V]` logits (ties: the first maximum)."""
    return logits.argmax(-1)


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def probs_from_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature + top-p (nucleus) filtered probabilities over the last dimension."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always keep the top token)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def greedy_choices(logits: torch.Tensor | Sequence[torch.Tensor], widths: list[int],
                   argmax: Argmax = torch_argmax) -> list[list[int]]:
    """The target's greedy token at each of row i's `widths[i]` fed positions, from a packed `[T, V]`
    tensor (the rows' positions back to back; one `argmax` call for all), a padded `[B, n, V]` one (one
    call; positions past a row's width dropped) or one `[n_i, V]` tensor per row."""
    if isinstance(logits, torch.Tensor) and logits.dim() == 2:
        flat = argmax(logits).tolist()
        if sum(widths) != len(flat):
            raise ValueError(f"packed logits hold {len(flat)} positions, the rows feed {sum(widths)}")
        starts = list(itertools.accumulate(widths, initial=0))
        return [flat[a:b] for a, b in itertools.pairwise(starts)]
    if isinstance(logits, torch.Tensor):
        return [row[:w] for row, w in zip(argmax(logits).tolist(), widths)]
    return [argmax(row).tolist()[:w] for row, w in zip(logits, widths)]


def greedy_accept(target_logits: torch.Tensor | Sequence[torch.Tensor], drafts: list[list[int]],
                  argmax: Argmax = torch_argmax) -> list[list[int]]:
    """Tokens each row keeps: its agreeing draft prefix plus the target's bonus token.

    `target_logits[i][j]` scores the token after row i's j-th fed position, where the fed tokens
    are [last committed token, *drafts[i]]: packed, padded or per row, as `greedy_choices` reads them.
    """
    choice = greedy_choices(target_logits, [1 + len(d) for d in drafts], argmax)
    out = []
    for row_choice, draft in zip(choice, drafts):
        kept = 0
        while kept < len(draft) and draft[kept] == row_choice[kept]:
            kept += 1
        out.append(draft[:kept] + [row_choice[kept]])
    return out


def sample_accept(
    target_logits: torch.Tensor | Sequence[torch.Tensor],
    drafts: list[list[int]],
    draft_probs: list[torch.Tensor | None],
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Speculative sampling. `draft_probs[i]` is `[len(drafts[i]), V]` (the drafter's q) or None for a
    deterministic drafter (q is one-hot on the proposed token). `target_logits`: a padded `[B, n, V]`
    tensor or one `[n_i, V]` per row, as for `greedy_accept`."""
    if isinstance(target_logits, torch.Tensor):
        probs = probs_from_logits(target_logits, params)  # [B, n, V]
    else:
        probs = [probs_from_logits(row, params) for row in target_logits]
    out = []
    for i, draft in enumerate(drafts):
        kept: list[int] = []
        q_row = draft_probs[i]
        for j, token in enumerate(draft):
            p = probs[i][j]
            q_tok = 1.0 if q_row is None else float(q_row[j, token])
            u = torch.rand((), generator=generator, device=p.device).item()
            if u < min(1.0, float(p[token]) / max(q_tok, 1e-20)):
                kept.append(token)
                continue
            if q_row is None:
                residual = p.clone()
                residual[token] = 0.0
            else:
                residual = (p - q_row[j].to(p.device)).clamp_min(0.0)
            if float(residual.sum()) <= 0.0:  # p == q exactly: any p-sample is exact
                residual = p
            kept.append(int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))
            break
        else:
            kept.append(int(torch.multinomial(probs[i][len(draft)], 1, generator=generator)))
        out.append(kept)
    return out


def sample_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                  argmax: Argmax = torch_argmax) -> list[int]:
    """One token per row from `[B, V]` logits (`argmax` when greedy)."""
    if params.greedy:
        return argmax(logits).tolist()
    probs = probs_from_logits(logits, params)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).tolist()
