"""Token trees: construction, masks, greedy acceptance, and the runner's tree forward."""

from __future__ import annotations

import pytest
import torch

from nightjar_rl.decoding.runner import ModelRunner
from nightjar_rl.decoding.tree import (
    TokenTree,
    ancestor_mask,
    batch_tree_inputs,
    build_tree,
    chain,
    repair_moves,
    tree_greedy_accept,
)


def test_build_tree_merges_shared_prefixes_and_ranks_by_frequency():
    cands = [[5, 6, 7], [5, 6, 8], [9, 1], [5, 2]]
    tree = build_tree(cands, budget=10)
    # 5 (x3) first, under it 6 (x2) with 7, 8, then 2; then 9 -> 1
    assert tree.tokens == (5, 6, 7, 8, 2, 9, 1)
    assert tree.parents == (-1, 0, 1, 1, 0, -1, 5)
    assert tree.depths == (1, 2, 3, 3, 2, 1, 2)
    assert tree.first_path() == [5, 6, 7]


def test_build_tree_budget_keeps_the_most_frequent_connected_nodes():
    cands = [[5, 6, 7], [5, 6, 8], [9, 1], [5, 2]]
    tree = build_tree(cands, budget=3)
    assert tree.tokens == (5, 6, 7)  # 5 (3), 6 (2), then 7/8/2/9 tie at 1: earliest candidate wins
    assert len(build_tree(cands, budget=0)) == 0
    weighted = build_tree(cands, budget=2, weights=[1, 1, 5, 1])
    assert weighted.tokens == (9, 1)
    with pytest.raises(ValueError):
        build_tree(cands, budget=-1)


def test_invalid_tree_is_rejected():
    with pytest.raises(ValueError):
        TokenTree((1, 2), (-1, 1))  # a node cannot be its own parent


def test_ancestor_mask_hand_made():
    tree = TokenTree((5, 6, 7, 9), (-1, 0, 0, -1))  # root -> 5 -> {6, 7}; root -> 9
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],  # root
            [1, 1, 0, 0, 0],  # 5
            [1, 1, 1, 0, 0],  # 6 sees root, 5, itself
            [1, 1, 0, 1, 0],  # 7 sees root, 5, itself (not its sibling 6)
            [1, 0, 0, 0, 1],  # 9
        ],
        dtype=torch.bool,
    )
    assert torch.equal(ancestor_mask(tree), expected)
    offsets, local = batch_tree_inputs([tree, chain([3])])
    assert offsets[0].tolist() == [0, 1, 2, 2, 1]
    assert offsets[1, :2].tolist() == [0, 1]
    assert torch.equal(local[0], expected)
    assert torch.equal(local[1, :2, :2], torch.tensor([[1, 0], [1, 1]], dtype=torch.bool))
    assert local[1, 4].tolist() == [False, False, False, False, True]  # padding sees only itself


def test_tree_greedy_accept_follows_the_agreeing_path():
    tree = TokenTree((5, 6, 7, 9, 4), (-1, 0, 0, -1, 2))  # root->5->{6, 7->4}; root->9
    # fed positions: 0 root, 1:5, 2:6, 3:7, 4:9, 5:4
    choice = [5, 7, 0, 4, 0, 8]
    path, kept = tree_greedy_accept(tree, choice)
    assert path == [0, 2, 4] and kept == [5, 7, 4, 8]
    assert repair_moves(path, tree) == [(3, 2), (5, 3)]
    path, kept = tree_greedy_accept(tree, [1, 0, 0, 0, 0, 0])
    assert path == [] and kept == [1]
    path, kept = tree_greedy_accept(TokenTree(), [3])
    assert (path, kept) == ([], [3])


def test_prune_depth_keeps_preorder():
    tree = TokenTree((5, 6, 7, 9, 4), (-1, 0, 0, -1, 2))
    pruned = tree.prune_depth(2)
    assert pruned.tokens == (5, 6, 7, 9) and pruned.parents == (-1, 0, 0, -1)
    assert len(tree.prune_depth(0)) == 0
    assert tree.truncate(3).tokens == (5, 6, 7) and tree.truncate(3).parents == (-1, 0, 0)
    assert tree.truncate(10) is tree and len(tree.truncate(0)) == 0


def test_runner_tree_forward_matches_linear_forwards(tiny_target):
    """Every tree node's logits equal those of a plain forward of its root-to-node path."""
    prompt = [3, 17, 42, 8, 8, 19, 5]
    tree = TokenTree((11, 12, 13, 14, 15, 16), (-1, 0, 1, 0, -1, 4))
    runner = ModelRunner(tiny_target, num_slots=2, capacity=64)
    runner.forward(0, [prompt[:-1]], [0])
    logits = runner.forward_rows(0, [[prompt[-1], *tree.tokens]], [len(prompt) - 1], tree=batch_tree_inputs([tree]))[0]
    for m in range(len(tree)):
        path = [tree.tokens[j] for j in tree.path_to(m)]
        ref = ModelRunner(tiny_target, num_slots=1, capacity=64)
        want = ref.forward_rows(0, [prompt + path], [0])[0][-1]
        torch.testing.assert_close(logits[m + 1], want, rtol=1e-4, atol=1e-4)
    # after KV repair, continuing from an accepted side path matches a linear decode of it
    path = tree.path_to(5)  # 15 -> 16: fed at offsets 5, 6, belongs at 1, 2
    moves = repair_moves(path, tree)
    past = len(prompt) - 1
    runner.cache.copy_within([0] * len(moves), [past + a for a, _ in moves], [past + b for _, b in moves])
    accepted = [tree.tokens[m] for m in path]
    nxt = runner.forward_rows(0, [[90]], [past + 1 + len(accepted)])[0][-1]
    ref = ModelRunner(tiny_target, num_slots=1, capacity=64)
    want = ref.forward_rows(0, [prompt + accepted + [90]], [0])[0][-1]
    torch.testing.assert_close(nxt, want, rtol=1e-4, atol=1e-4)
