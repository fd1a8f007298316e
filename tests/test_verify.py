"""Accept/reject rules as pure functions."""

import pytest
import torch

from nightjar_rl.decoding.verify import SamplingParams, greedy_accept, probs_from_logits, sample_accept


def one_hot_logits(choices: list[list[int]], vocab: int = 8) -> torch.Tensor:
    logits = torch.full((len(choices), len(choices[0]), vocab), -10.0)
    for i, row in enumerate(choices):
        for j, t in enumerate(row):
            logits[i, j, t] = 10.0
    return logits


def test_greedy_accept_keeps_agreeing_prefix_plus_bonus():
    logits = one_hot_logits([[1, 2, 3, 4], [5, 6, 7, 0], [1, 1, 1, 1]])
    out = greedy_accept(logits, [[1, 2, 3], [5, 0, 7], []])
    assert out == [[1, 2, 3, 4], [5, 6], [1]]


def test_greedy_accept_reads_packed_logits_by_each_rows_drafts():
    """Packed `[T, V]`: row i owns 1 + len(drafts[i]) positions, back to back; one argmax call for all."""
    padded = one_hot_logits([[1, 2, 3, 4], [5, 6, 7, 0], [1, 1, 1, 1]])
    packed = torch.cat([padded[0, :4], padded[1, :4], padded[2, :1]])
    calls = []

    def counting_argmax(logits: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(logits.shape))
        return logits.argmax(-1)

    assert greedy_accept(packed, [[1, 2, 3], [5, 0, 7], []], counting_argmax) == [[1, 2, 3, 4], [5, 6], [1]]
    assert calls == [(9, 8)]
    with pytest.raises(ValueError, match="packed logits hold 9 positions, the rows feed 8"):
        greedy_accept(packed, [[1, 2, 3], [5, 0], []])


def test_greedy_accept_rejects_first_token():
    logits = one_hot_logits([[3, 3, 3]])
    assert greedy_accept(logits, [[2, 3]]) == [[3]]


def test_top_p_keeps_smallest_nucleus():
    probs = probs_from_logits(torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])), SamplingParams(1.0, 0.7))
    assert torch.allclose(probs, torch.tensor([[0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]]), atol=1e-6)


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5)])
def test_sampling_params_validate(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


@pytest.mark.parametrize("deterministic_draft", [False, True])
def test_speculative_sampling_preserves_target_distribution(deterministic_draft):
    """Chi-square style check on a 4-token vocabulary: the first emitted token must follow p."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    params = SamplingParams(temperature=1.0)
    logits = torch.log(p).expand(1, 3, 4).clone()
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    n = 20000
    for _ in range(n):
        if deterministic_draft:
            draft, dist = [2, 1], None
        else:
            draft = torch.multinomial(q, 2, replacement=True, generator=gen).tolist()
            dist = q.expand(2, 4)
        kept = sample_accept(logits, [draft], [dist], params, gen)[0]
        counts[kept[0]] += 1
    freq = counts / n
    # 4 standard errors of a binomial proportion at n=20000 is < 0.014
    assert torch.allclose(freq, p, atol=0.014), freq
