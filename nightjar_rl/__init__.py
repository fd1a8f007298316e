"""nightjar-rl: learn when and how far to speculate in LLM serving.

Importing the package registers the Gymnasium ids `nightjar_rl/SpecDecode-v0` (live engine),
`nightjar_rl/SpecDecodeTiny-v0` (tiny random model) and `nightjar_rl/SpecDecodeSim-v0` (simulator).
"""

from nightjar_rl.registration import register_envs

__version__ = "0.1.0"

register_envs()
