"""nightjar-rl: learn when and how far to speculate in LLM serving.

Importing the package registers the Gymnasium ids `nightjar_rl/SpecDecode-v1` (live engine),
`nightjar_rl/SpecDecodeTiny-v1` (tiny random model) and `nightjar_rl/SpecDecodeSim-v1` (simulator).
"""

from nightjar_rl.registration import register_envs

__version__ = "0.1.0"

register_envs()
