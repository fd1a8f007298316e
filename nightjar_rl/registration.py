"""Gymnasium registration of the env ids (done on `import nightjar_rl`, Gymnasium's convention).
Kept free of heavy imports: the env module itself is loaded only when an env is made."""

from __future__ import annotations

ENTRY_POINT = "nightjar_rl.env.spec_decode_env:SpecDecodeEnv"
# v1: observation layout 2 (full-information acceptance, row summary). The v0 ids (layout 1) are not
# registered any more: gymnasium.make of one raises DeprecatedEnv naming v1.
ENV_IDS = {
    "nightjar_rl/SpecDecode-v1": "smollm2-ngram",
    "nightjar_rl/SpecDecodeTiny-v1": "tiny",
    "nightjar_rl/SpecDecodeSim-v1": "smollm2-ngram-sim",
}
SIM_IDS = frozenset({"nightjar_rl/SpecDecodeSim-v1"})


def register_envs() -> None:
    """Register every id once (live ids are nondeterministic: they carry measured step times)."""
    from gymnasium.envs.registration import register, registry

    for env_id, scenario in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=ENTRY_POINT, kwargs={"scenario": scenario},
                     nondeterministic=env_id not in SIM_IDS)
