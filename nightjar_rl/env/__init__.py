"""The Gymnasium env: SpecDecodeEnv, scenarios, named rewards. Importing this registers the env ids:

- `nightjar_rl/SpecDecode-v0`: any scenario (`gymnasium.make(id, scenario="smollm2-ngram")`); the
  default is the CPU scenario on smollm2-135m with the n-gram drafter.
- `nightjar_rl/SpecDecodeTiny-v0`: same env, defaulting to the tiny random-model scenario (tests).
"""

from gymnasium.envs.registration import register, registry

from nightjar_rl.env.rewards import REWARDS, make_reward
from nightjar_rl.env.scenario import Scenario, ScenarioError, load_scenario

ENTRY_POINT = "nightjar_rl.env.spec_decode_env:SpecDecodeEnv"
ENV_IDS = {
    "nightjar_rl/SpecDecode-v0": "smollm2-ngram",
    "nightjar_rl/SpecDecodeTiny-v0": "tiny",
}
for _env_id, _scenario in ENV_IDS.items():
    if _env_id not in registry:
        # nondeterministic: observations and rewards include measured step times
        register(id=_env_id, entry_point=ENTRY_POINT, kwargs={"scenario": _scenario}, nondeterministic=True)


def __getattr__(name: str):
    if name == "SpecDecodeEnv":  # lazy: importing the env pulls in torch
        from nightjar_rl.env.spec_decode_env import SpecDecodeEnv

        return SpecDecodeEnv
    raise AttributeError(name)


__all__ = ["ENV_IDS", "REWARDS", "Scenario", "ScenarioError", "SpecDecodeEnv", "load_scenario", "make_reward"]
