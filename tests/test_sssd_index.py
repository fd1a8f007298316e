"""N-gram sources of SSSD: the incremental per-request index and the suffix-array datastore."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nightjar_rl.decoding.datastore import SEP, Datastore, NgramIndex, suffix_array
from nightjar_rl.decoding.drafters.sssd import INDEX, SSSDDrafter
from nightjar_rl.decoding.sequence import Request, Sequence


def test_ngram_index_incremental_lookups():
    index = NgramIndex(max_ngram=3)
    index.extend([1, 2, 3, 1, 2])
    assert index.continuations([1, 2], depth=2) == [[3, 1]]  # the trailing [1, 2] has no continuation yet
    assert index.count([1, 2]) == 1
    index.extend([4])  # incremental: now [1, 2] at the end is followed by 4
    assert index.continuations([1, 2], depth=2) == [[4], [3, 1]]  # most recent first
    assert index.continuations([2], depth=1, max_matches=1) == [[4]]
    assert index.continuations([7], depth=3) == []
    assert index.continuations([3, 1, 2], depth=3) == [[4]]


def test_ngram_index_cuts_at_separators():
    index = NgramIndex(2)
    index.extend([5, 6, SEP, 5, 6, 7])
    assert index.continuations([5], depth=3) == [[6, 7], [6]]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60))
def test_suffix_array_matches_brute_force(tokens):
    arr = np.asarray(tokens, dtype=np.int64)
    expected = sorted(range(len(tokens)), key=lambda i: tokens[i:])
    assert suffix_array(arr).tolist() == expected


def test_datastore_counts_and_continuations():
    docs = [[1, 2, 3, 4], [1, 2, 3, 5], [2, 3, 4, 9], [7, 1, 2]]
    store = Datastore.build(docs, vocab_size=10, fingerprint="t")
    assert store.count([1, 2, 3]) == 2
    assert store.count([2, 3]) == 3
    assert store.count([1, 2]) == 3
    assert store.count([8]) == 0
    conts = sorted(store.continuations([2, 3], depth=2))
    assert conts == [[4], [4, 9], [5]]  # cut at document ends
    assert store.continuations([1, 2], depth=2) == [[3, 4], [3, 5]]  # the match ending a doc has none
    sampled = store.continuations([2], depth=1, max_matches=2)
    assert 1 <= len(sampled) <= 2 and all(c == [3] for c in sampled)  # spread over 4 matches
    store.add([2, 3, 6])  # live mode
    assert sorted(store.continuations([2, 3], depth=1)) == [[4], [4], [5], [6]]


def test_sssd_candidates_merge_both_sources_and_update_incrementally():
    store = Datastore.build([[1, 2, 3, 8, 8], [1, 2, 3, 8, 9]], vocab_size=10, fingerprint="t")
    drafter = SSSDDrafter(store, max_ngram=3)
    seq = Sequence(Request("a", [4, 1, 2, 3, 7, 1, 2, 3], 10), tokens=[4, 1, 2, 3, 7, 1, 2, 3])
    cands, weights = drafter.candidates(seq, depth=2)
    assert cands == [[7, 1], [8, 8], [8, 9]]  # request first, then the datastore
    assert weights[0] == 2.0 * 3 and weights[1] == weights[2] == 1.5
    index = seq.state[INDEX]
    seq.tokens += [7, 5]
    drafter.candidates(seq, depth=2)
    assert seq.state[INDEX] is index and index.tokens == seq.tokens  # extended, not rebuilt
