"""The vLLM integration's configuration, without vLLM: engine arguments from an `EngineConfig`, the
scheduler plugin's settings, the KV cache size, and the errors a user meets without vLLM."""

from __future__ import annotations

import pytest

from nightjar_rl.integrations.vllm import config as vc
from nightjar_rl.models import tiny_config
from nightjar_rl.schema import ConfigError
from nightjar_rl.stack import EngineConfig


@pytest.fixture
def folder(tmp_path):
    """A model folder vLLM could read: a tiny Llama config (4 layers, 2 KV heads of 16 dims)."""
    tiny_config().save_pretrained(tmp_path)
    return str(tmp_path)


def test_speculative_config_maps_the_ngram_drafter():
    cfg = EngineConfig(model="x", max_speculation=3, ngram_max=4, ngram_min=2)
    assert vc.speculative_config(cfg) == {"method": "ngram", "num_speculative_tokens": 3,
                                          "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    assert vc.speculative_config(EngineConfig(max_speculation=0)) is None
    with pytest.raises(ConfigError, match="n-gram drafter"):
        vc.speculative_config(EngineConfig(drafter="draft", draft="x", max_speculation=2))


def test_kv_cache_bytes_by_hand(folder):
    # 100 tokens x 4 layers x (K and V) x 2 heads x 16 dims x 4 bytes = 102,400; +10%, + 16 MiB
    assert vc.kv_cache_bytes(folder, "float32", 100) == int(1.1 * 102_400) + (16 << 20)
    assert vc.kv_cache_bytes(folder, "bfloat16", 100) == int(1.1 * 51_200) + (16 << 20)


def test_engine_kwargs(folder):
    cfg = EngineConfig(model=folder, max_batch_size=8, max_seq_len=256, max_speculation=2, seed=3)
    kw = vc.engine_kwargs(cfg, scheduler={"policy": "fixed-2"})
    assert kw["model"] == folder and kw["max_num_seqs"] == 8 and kw["max_model_len"] == 256 and kw["seed"] == 3
    assert kw["dtype"] == "float32" and kw["enforce_eager"] and kw["enable_prefix_caching"] is False
    assert kw["speculative_config"]["num_speculative_tokens"] == 2
    assert kw["scheduler_cls"] == vc.SCHEDULER_CLS
    assert kw["additional_config"] == {"nightjar": {"policy": "fixed-2"}}
    assert kw["kv_cache_memory_bytes"] == vc.kv_cache_bytes(folder, "float32", 8 * 256)
    plain = vc.engine_kwargs(EngineConfig(model=folder, max_speculation=0))
    assert "speculative_config" not in plain and "scheduler_cls" not in plain
    with pytest.raises(ConfigError, match="built in memory"):
        vc.engine_kwargs(EngineConfig(model="tiny-random"))


def test_plugin_settings(monkeypatch):
    monkeypatch.delenv(vc.SETTINGS_ENV, raising=False)
    assert vc.plugin_settings({}) == {}
    assert vc.plugin_settings({"nightjar": {"policy": "ucb1"}}) == {"policy": "ucb1"}
    monkeypatch.setenv(vc.SETTINGS_ENV, '{"policy": "fixed-1"}')
    assert vc.plugin_settings({}) == {"policy": "fixed-1"}
    assert vc.plugin_settings({"nightjar": {"policy": "ucb1"}}) == {"policy": "ucb1"}  # vLLM's config wins
    monkeypatch.setenv(vc.SETTINGS_ENV, "{policy")
    with pytest.raises(ConfigError, match="not valid JSON"):
        vc.plugin_settings({})
    with pytest.raises(ConfigError, match="JSON object"):
        vc.plugin_settings({"nightjar": ["ucb1"]})


def test_without_vllm_the_errors_say_how_to_install(monkeypatch):
    monkeypatch.setattr(vc, "_import_error", lambda: "ModuleNotFoundError: No module named 'vllm'")
    with pytest.raises(vc.VLLMUnavailable, match=r"install.sh|\.\[vllm\]"):
        vc.require_vllm()


def test_vllm_scenario_validates_and_the_cli_refuses_two_backends(capsys):
    from nightjar_rl.cli import main
    from nightjar_rl.env.scenario import load_scenario

    assert load_scenario("smollm2-ngram-vllm").backend == "vllm"
    assert main(["bench", "--scenario", "tiny", "--backend", "vllm"]) == 2
    assert "--backend and --scenario" in capsys.readouterr().err


def test_serve_on_vllm_without_vllm_is_one_line(monkeypatch, capsys):
    pytest.importorskip("fastapi")
    from nightjar_rl.cli import main
    from nightjar_rl.runtime.server import free_port

    monkeypatch.setattr(vc, "_import_error", lambda: "ModuleNotFoundError: No module named 'vllm'")
    assert main(["serve", "--backend", "vllm", "--port", str(free_port()), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vLLM is not available" in err[0] and "install" in err[0]


def test_a_model_folder_without_a_tokenizer_is_one_line(tmp_path):
    from nightjar_rl.integrations.vllm.engine import vllm_tokenizer

    with pytest.raises(ConfigError, match="no tokenizer for model") as err:
        vllm_tokenizer(str(tmp_path))
    assert "\n" not in str(err.value)
