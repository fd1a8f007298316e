"""Shared fixtures: tiny random models and a plain greedy reference decoder."""

from __future__ import annotations

import pytest
import torch

from nightjar_rl.decoding import DraftModelDrafter, NgramDrafter
from nightjar_rl.models import early_exit_draft, tiny_random_model


def greedy_reference(model: torch.nn.Module, prompt: list[int], max_new_tokens: int, eos: frozenset = frozenset()) -> list[int]:
    """Plain autoregressive greedy decoding with no cache: the ground truth for losslessness."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            device = next(model.parameters()).device
            token = int(model(torch.tensor([ids], device=device)).logits[0, -1].argmax())
            ids.append(token)
            if token in eos:
                break
    return ids[len(prompt):]


def make_drafter(kind: str, target: torch.nn.Module):
    """Drafters exercised by the losslessness tests, by name."""
    if kind == "none":
        return None
    if kind == "ngram":
        return NgramDrafter(max_ngram=3, min_ngram=1)
    if kind == "self":  # the target drafting for itself: every draft is accepted
        return DraftModelDrafter(target)
    if kind == "early-exit":  # shares the target's layers
        return DraftModelDrafter(early_exit_draft(target, 2))
    if kind == "other":  # an unrelated random model: almost nothing is accepted
        return DraftModelDrafter(tiny_random_model(seed=1, num_layers=2))
    raise ValueError(kind)


@pytest.fixture(scope="session")
def tiny_target() -> torch.nn.Module:
    return tiny_random_model(seed=0)


@pytest.fixture(scope="session")
def tiny_other_draft() -> torch.nn.Module:
    return tiny_random_model(seed=1, num_layers=2)


@pytest.fixture
def decoders():
    """Decoders a test appends here are closed afterwards (parallel decoders own a worker thread)."""
    made = []
    yield made
    for dec in made:
        dec.close()


@pytest.fixture(scope="session", autouse=True)
def signing_key(tmp_path_factory):
    """Checkpoint manifests are signed with a per-user key: tests use their own, not ~/.config's."""
    import os

    from nightjar_rl.io import KEY_ENV

    before = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = str(tmp_path_factory.mktemp("key") / "signing.key")
    yield os.environ[KEY_ENV]
    if before is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = before


def run_on_ray(cfg, out_dir):
    """`run_experiment(cfg)` on a local 2-worker Ray executor (closed afterwards); the test is
    skipped when Ray is not installed or cannot start here."""
    from nightjar_rl.experiments import executor as ex
    from nightjar_rl.experiments.config import ExperimentError
    from nightjar_rl.experiments.runner import run_experiment

    pytest.importorskip("ray", reason="ray is not installed (pip install 'nightjar-rl[ray]')")
    try:
        ray_ex = ex.RayExecutor(workers=2)
    except ExperimentError as exc:
        pytest.skip(f"Ray could not start here: {exc}")
    try:
        return run_experiment(cfg, out_dir=out_dir, progress=False, executor=ray_ex)
    finally:
        ray_ex.close()
