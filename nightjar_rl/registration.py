"""Gymnasium registration of the env ids (done on `import nightjar_rl`, Gymnasium's convention).
Kept free of heavy imports: the env module itself is loaded only when an env is made."""

from __future__ import annotations

ENTRY_POINT = "nightjar_rl.env.spec_decode_env:SpecDecodeEnv"
# v1: observation layout 2 (full-information acceptance, row summary), rewards scaled by REWARD_SCALE
# and Gymnasium's time limit at the default scenario's horizon. The v0 ids (layout 1, unscaled, no
# TimeLimit) are not registered any more: gymnasium.make of one raises DeprecatedEnv naming v1.
ENV_IDS = {  # id: (default scenario, max_episode_steps = that scenario's horizon)
    "nightjar_rl/SpecDecode-v1": ("smollm2-ngram", 400),
    "nightjar_rl/SpecDecodeTiny-v1": ("tiny", 200),
    "nightjar_rl/SpecDecodeSim-v1": ("smollm2-ngram-sim", 400),
    "nightjar_rl/SpecDecodeVLLM-v1": ("smollm2-ngram-vllm", 400),  # needs vLLM (bash install.sh --vllm)
}
REWARD_SCALE = 1e-3  # registered ids: rewards in thousands (of tokens/s for the throughput rewards)
SIM_IDS = frozenset({"nightjar_rl/SpecDecodeSim-v1"})


def register_envs() -> None:
    """Register every id once (live ids are nondeterministic: they carry measured step times)."""
    from gymnasium.envs.registration import register, registry

    for env_id, (scenario, steps) in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=ENTRY_POINT, kwargs={"scenario": scenario, "reward_scale": REWARD_SCALE},
                     max_episode_steps=steps, nondeterministic=env_id not in SIM_IDS)
