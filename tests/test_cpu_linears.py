"""oneDNN-prepacked, fused linear layers (`nightjar_rl.cpu_linears`): same model outputs as F.linear to
float32 rounding, each fused GEMM computed once per input, speculation still lossless over them."""

from __future__ import annotations

import copy

import pytest
import torch

from nightjar_rl.cpu_linears import PackedLinear, SharedProjection, SliceOf, can_pack, pack_linears
from nightjar_rl.decoding import Request, SpeculativeEngine
from nightjar_rl.models import ModelLoadError, load_model
from nightjar_rl.schema import ConfigError
from nightjar_rl.stack import EngineConfig

from .conftest import greedy_reference, make_drafter
from .engines import drain, stable_seed

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not built into torch")


@pytest.fixture(scope="module")
def eager_and_packed():
    """`random:llama-tiny` (256 wide, 4 layers: above the packing threshold) eager, and packed."""
    eager = load_model("random:llama-tiny", "float32", "cpu", linears="eager").model
    packed = copy.deepcopy(eager)
    return eager, packed, pack_linears(packed)


def test_every_linear_is_packed_and_qkv_gate_up_fused(eager_and_packed):
    _, packed, replaced = eager_and_packed
    layers = packed.config.num_hidden_layers
    assert replaced == layers * 7 + 1  # q k v o gate up down per layer, and the LM head
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    attn, mlp = packed.model.layers[0].self_attn, packed.model.layers[0].mlp
    assert attn.q_proj.shared is attn.k_proj.shared is attn.v_proj.shared
    assert mlp.gate_proj.shared is mlp.up_proj.shared
    assert isinstance(attn.o_proj, PackedLinear) and isinstance(mlp.down_proj, PackedLinear)
    assert packed.model.embed_tokens.weight.layout == torch.strided  # a tied head keeps its embedding dense


def test_packed_logits_equal_eager_to_float32_rounding(eager_and_packed):
    eager, packed, _ = eager_and_packed
    ids = torch.randint(0, eager.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = eager(ids).logits, packed(ids).logits
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_shared_projection_runs_once_per_input_and_lets_go():
    torch.manual_seed(0)
    q, k = torch.nn.Linear(8, 6), torch.nn.Linear(8, 4, bias=False)
    shared = SharedProjection([q, k])
    calls = []
    inner = shared.linear.forward
    shared.linear.forward = lambda x: calls.append(1) or inner(x)
    qs, ks = SliceOf(shared, 0, 6), SliceOf(shared, 6, 10)
    x = torch.randn(2, 3, 8)
    with torch.inference_mode():
        out_q, out_k = qs(x), ks(x)
        assert len(calls) == 1 and shared._cache is None  # both views served: the output is dropped
        torch.testing.assert_close(out_q, q(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out_k, k(x), rtol=1e-5, atol=1e-6)
        qs(x.clone())  # another tensor: computed again
        assert len(calls) == 2 and shared._cache is not None


def test_small_models_and_eager_stay_on_f_linear():
    tiny = load_model("tiny-random").model  # 64 wide: below the threshold
    assert can_pack(tiny) and not any(isinstance(m, PackedLinear) for m in tiny.modules())
    assert pack_linears(copy.deepcopy(tiny), min_elements=0) > 0
    eager = load_model("random:llama-tiny", linears="eager").model
    assert not any(isinstance(m, PackedLinear) for m in eager.modules())


def test_bad_linears_setting_is_refused():
    with pytest.raises(ModelLoadError, match="linears must be one of packed, eager"):
        load_model("tiny-random", linears="fast")
    with pytest.raises(ConfigError, match="linears"):
        EngineConfig(linears="fast").validate()


@pytest.mark.parametrize("drafter", ["ngram", "early-exit"])
def test_speculation_over_packed_linears_is_lossless(eager_and_packed, drafter):
    """Greedy float32 output of the engine at k = 0 and at a mix of k equals plain greedy decoding of
    the same packed model (the early-exit draft shares its fused layers)."""
    _, packed, _ = eager_and_packed
    gen = torch.Generator().manual_seed(stable_seed("packed", drafter))
    vocab = packed.config.vocab_size
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (5, 9, 14)]
    expected = [greedy_reference(packed, p, 12) for p in prompts]
    for ks in ([0], [3, 1, 4, 0, 2]):
        engine = SpeculativeEngine(packed, make_drafter(drafter, packed), max_batch_size=3, max_seq_len=64,
                                   max_speculation=4)
        for i, p in enumerate(prompts):
            engine.submit(Request(f"r{i}", p, 12))
        out = drain(engine, ks)
        assert [out[f"r{i}"] for i in range(3)] == expected, ks
