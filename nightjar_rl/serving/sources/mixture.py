"""A seeded mixture of workloads: `mix:SPEC=WEIGHT,SPEC=WEIGHT,...` (e.g.
`mix:sharegpt=0.5,humaneval=0.3,bundled=0.2`). Each request's source is drawn with probability
weight / sum(weights); each source then gives that many records (a sampling source samples them, a
file source is cycled in a seeded order), interleaved in the order drawn. Ids get the source's name
as a prefix (sharegpt/ID) so they stay unique; families are the sources' own."""

from __future__ import annotations

import dataclasses

import numpy as np

from nightjar_rl.serving.workload import PromptRecord, WorkloadError, WorkloadQuery, load_workload

DEFAULT_SAMPLE = 200


def parse_mixture(arg: str | None) -> list[tuple[str, float]]:
    """[(spec, weight), ...] of "SPEC=WEIGHT,..." (a spec may hold ':' but not ',')."""
    if not arg:
        raise WorkloadError("workload 'mix' needs components: mix:SPEC=WEIGHT,SPEC=WEIGHT,...")
    parts = []
    for item in arg.split(","):
        spec, sep, weight = item.rpartition("=")
        try:
            w = float(weight)
        except ValueError:
            w = -1.0
        if not sep or not spec or not w > 0 or not np.isfinite(w):
            raise WorkloadError(f"workload mix: component {item!r} must be SPEC=WEIGHT with a weight > 0")
        if spec.partition(":")[0] == "mix":
            raise WorkloadError("workload mix: a mixture cannot contain another mixture")
        parts.append((spec, w))
    return parts


def sample_mixture(arg: str | None, query: WorkloadQuery) -> list[PromptRecord]:
    parts = parse_mixture(arg)
    n = query.count or DEFAULT_SAMPLE
    rng = np.random.default_rng([query.seed, 2])
    weights = np.array([w for _, w in parts])
    draws = rng.choice(len(parts), size=n, p=weights / weights.sum())
    queues = []
    for j, (spec, _) in enumerate(parts):
        need = int((draws == j).sum())
        name = spec.partition(":")[0]
        if not need:
            queues.append([])
            continue
        recs = load_workload(spec, query=dataclasses.replace(query, count=need, seed=query.seed + j))
        order = rng.permutation(len(recs)) if len(recs) > need else np.arange(len(recs))
        picked = [recs[order[i % len(recs)]] for i in range(need)]
        queues.append([dataclasses.replace(r, id=f"{name}/{r.id}") for r in picked])
    out, taken = [], [0] * len(parts)
    for j in draws:
        out.append(queues[j][taken[j]])
        taken[j] += 1
    return out
