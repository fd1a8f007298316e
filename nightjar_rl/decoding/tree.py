"""Token trees for speculative decoding: several candidate continuations verified in one pass.

A row's tree hangs off its last committed token (the root, fed position 0). Draft nodes are fed
at positions 1..n in preorder (parents before children). Node m at depth d gets position id
`past_len + d` and attends to the row's cache plus its own ancestors; it is written to the cache
at `past_len + 1 + m`. After greedy acceptance the accepted path's entries are copied to
`past_len + 1 ..` (a few entries) so the row continues as if it had been decoded linearly.

Pure functions only (torch is used just to build the batch tensors for the runner).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenTree:
    """Flattened draft tree: node m has token `tokens[m]`, parent `parents[m]` (-1 = the root, i.e.
    the last committed token) and depth `depths[m]` (1 for children of the root). Preorder."""

    tokens: tuple[int, ...] = ()
    parents: tuple[int, ...] = ()

    def __post_init__(self):
        if len(self.tokens) != len(self.parents):
            raise ValueError("tokens and parents must have the same length")
        for m, p in enumerate(self.parents):
            if not -1 <= p < m:
                raise ValueError(f"node {m}: parent {p} must be -1 or an earlier node")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depths(self) -> tuple[int, ...]:
        depths: list[int] = []
        for p in self.parents:
            depths.append(1 if p < 0 else depths[p] + 1)
        return tuple(depths)

    def children(self, node: int) -> list[int]:
        """Children of `node` (-1 = root), in preorder."""
        return [m for m, p in enumerate(self.parents) if p == node]

    def path_to(self, node: int) -> list[int]:
        """Nodes from the root's child down to `node` (inclusive)."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def first_path(self) -> list[int]:
        """The leftmost root-to-leaf path (the highest ranked candidate)."""
        path, node = [], -1
        while True:
            kids = self.children(node)
            if not kids:
                return [self.tokens[m] for m in path]
            node = kids[0]
            path.append(node)

    def truncate(self, max_nodes: int) -> TokenTree:
        """The first `max_nodes` nodes in preorder (always a connected tree: parents come first)."""
        if max_nodes >= len(self):
            return self
        m = max(0, max_nodes)
        return TokenTree(self.tokens[:m], self.parents[:m])

    def prune_depth(self, max_depth: int) -> TokenTree:
        """Drop nodes deeper than `max_depth` (their subtrees go with them: preorder is kept)."""
        depths = self.depths
        keep = [m for m in range(len(self)) if depths[m] <= max_depth]
        if len(keep) == len(self):
            return self
        new_index = {m: i for i, m in enumerate(keep)}
        return TokenTree(
            tuple(self.tokens[m] for m in keep),
            tuple(-1 if self.parents[m] < 0 else new_index[self.parents[m]] for m in keep),
        )


def build_tree(candidates: list[list[int]], budget: int, weights: list[float] | None = None) -> TokenTree:
    """Merge candidate continuations into a trie and keep the `budget` most frequent nodes.

    A node's score is the total weight of the candidates passing through it (its empirical
    frequency), so keeping the best nodes best-first from the root always gives a connected tree.
    Ties go to the earlier candidate. Children are laid out best first, so the top candidate
    occupies positions 1..L and needs no KV repair when it is accepted.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if weights is None:
        weights = [1.0] * len(candidates)
    if len(weights) != len(candidates):
        raise ValueError("weights and candidates must have the same length")
    # trie nodes: token, parent, score, first candidate rank; node 0 is the root
    children: list[dict[int, int]] = [{}]
    token = [-1]
    score = [0.0]
    rank = [-1]
    for r, (cand, w) in enumerate(zip(candidates, weights)):
        if w <= 0:
            continue
        node = 0
        for t in cand:
            nxt = children[node].get(t)
            if nxt is None:
                nxt = len(token)
                children[node][t] = nxt
                children.append({})
                token.append(int(t))
                score.append(0.0)
                rank.append(r)
            score[nxt] += w
            node = nxt
    # best-first selection from the root
    chosen: set[int] = set()
    frontier = list(children[0].values())
    while frontier and len(chosen) < budget:
        best = max(frontier, key=lambda n: (score[n], -rank[n]))
        frontier.remove(best)
        chosen.add(best)
        frontier.extend(children[best].values())
    # preorder layout, best child first
    tokens: list[int] = []
    parents: list[int] = []

    def visit(node: int, flat_parent: int) -> None:
        kids = sorted((c for c in children[node].values() if c in chosen), key=lambda n: (-score[n], rank[n]))
        for c in kids:
            tokens.append(token[c])
            parents.append(flat_parent)
            visit(c, len(tokens) - 1)

    visit(0, -1)
    return TokenTree(tuple(tokens), tuple(parents))


def chain(tokens: list[int]) -> TokenTree:
    """A linear draft as a tree (one path)."""
    return TokenTree(tuple(int(t) for t in tokens), tuple(range(-1, len(tokens) - 1)))


def ancestor_mask(tree: TokenTree) -> torch.Tensor:
    """`[n + 1, n + 1]` bool: fed position i (0 = root) may attend to fed position j iff j is i itself
    or one of its ancestors. The root sees only itself (its past is the row's cache)."""
    n = len(tree)
    mask = torch.zeros((n + 1, n + 1), dtype=torch.bool)
    mask[:, 0] = True
    for m, p in enumerate(tree.parents):
        i = m + 1
        if p >= 0:
            mask[i] = mask[p + 1]
        mask[i, i] = True
    mask[0, 1:] = False
    return mask


def batch_tree_inputs(trees: list[TokenTree], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Runner overrides for a batch of trees, padded to the widest: position offsets `[B, n]`
    (depth of each fed position, 0 for the root) and the local mask `[B, n, n]` over fed positions.
    Padding positions see only themselves and the row's cache (their outputs are never read)."""
    n = 1 + max((len(t) for t in trees), default=0)
    offsets = torch.arange(n).repeat(len(trees), 1)
    local = torch.eye(n, dtype=torch.bool).repeat(len(trees), 1, 1)
    for i, tree in enumerate(trees):
        size = len(tree) + 1
        offsets[i, 1:size] = torch.tensor(tree.depths, dtype=torch.long)
        local[i, :size, :size] = ancestor_mask(tree)
    return offsets.to(device), local.to(device)


def tree_greedy_accept(tree: TokenTree, choice: list[int]) -> tuple[list[int], list[int]]:
    """Greedy acceptance along the tree. `choice[i]` is the target's argmax at fed position i
    (0 = the root). Walk from the root, following the child whose token equals the target's choice;
    stop when none does. Returns (accepted node indices, kept tokens = path tokens + bonus)."""
    path: list[int] = []
    node = -1
    kids_of: dict[int, dict[int, int]] = {}
    for m, p in enumerate(tree.parents):
        kids_of.setdefault(p, {}).setdefault(tree.tokens[m], m)
    while True:
        want = choice[node + 1]
        nxt = kids_of.get(node, {}).get(want)
        if nxt is None:
            return path, [tree.tokens[m] for m in path] + [want]
        path.append(nxt)
        node = nxt


def repair_moves(path: list[int], tree: TokenTree) -> list[tuple[int, int]]:
    """(src, dst) fed-position offsets to copy so that accepted node at depth d sits at offset d.
    Node m was written at offset m + 1; entries already in place are skipped."""
    depths = tree.depths
    return [(m + 1, depths[m]) for m in path if m + 1 != depths[m]]
