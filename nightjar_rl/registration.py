"""Gymnasium registration of the env ids (done on `import nightjar_rl`, Gymnasium's convention).
Kept free of heavy imports: the env module itself is loaded only when an env is made."""

from __future__ import annotations

ENTRY_POINT = "nightjar_rl.env.spec_decode_env:SpecDecodeEnv"
ENV_IDS = {
    "nightjar_rl/SpecDecode-v0": "smollm2-ngram",
    "nightjar_rl/SpecDecodeTiny-v0": "tiny",
    "nightjar_rl/SpecDecodeSim-v0": "smollm2-ngram-sim",
    "nightjar_rl/SpecDecodeVLLM-v0": "smollm2-ngram-vllm",  # needs vLLM (pip install -e '.[vllm]')
}
SIM_IDS = frozenset({"nightjar_rl/SpecDecodeSim-v0"})


def register_envs() -> None:
    """Register every id once (live ids are nondeterministic: they carry measured step times)."""
    from gymnasium.envs.registration import register, registry

    for env_id, scenario in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=ENTRY_POINT, kwargs={"scenario": scenario},
                     nondeterministic=env_id not in SIM_IDS)
