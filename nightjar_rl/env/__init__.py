"""The Gymnasium env: SpecDecodeEnv, scenarios, named rewards. Importing this (or `nightjar_rl`)
registers the env ids:

- `nightjar_rl/SpecDecode-v1`: any scenario (`gymnasium.make(id, scenario="smollm2-ngram")`); the
  default is the CPU scenario on smollm2-135m with the n-gram drafter, on the live engine.
- `nightjar_rl/SpecDecodeTiny-v1`: same env, defaulting to the tiny random-model scenario (tests).
- `nightjar_rl/SpecDecodeSim-v1`: same env, defaulting to `smollm2-ngram-sim`, the simulator twin of
  the default scenario (a shipped trace of the bundled prompts and this CPU's profile): needs no
  model, deterministic for a seed. Any `backend: sim` scenario works (`scenario="gpu-whatif-ngram"`).
"""

from nightjar_rl.contracts.rewards import REWARDS, make_reward
from nightjar_rl.entry_points import lazy_exports
from nightjar_rl.env.scenario import Scenario, ScenarioError, load_scenario
from nightjar_rl.registration import ENV_IDS, register_envs

register_envs()
__getattr__ = lazy_exports(__name__, {"SpecDecodeEnv": "nightjar_rl.env.spec_decode_env"})  # loaded when made


__all__ = ["ENV_IDS", "REWARDS", "Scenario", "ScenarioError", "SpecDecodeEnv", "load_scenario", "make_reward"]
