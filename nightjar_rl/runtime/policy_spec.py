"""Resolve `--policy ARTIFACT|SPEC` into a policy for an engine.

- a path to a file: a policy artifact (`nightjar-rl/policy`, any type, e.g. rules, bandits, `mlp`),
  or a schedule exported for vLLM / TensorRT-LLM / SGLang (`nightjar-rl export`), read back as a
  `table` policy;
- otherwise a spec: a short string (`fixed-3`, `table-mlc_llm`, `nightjar`) or a JSON object
  (`{"type": "disable_by_batch_size", "k": 4, "threshold": 8}`), built for the engine's largest k.

An artifact may have a smaller max_k than the engine (the driver then observes with the policy's
max_k); a larger one is refused: the engine could not run the k it asks for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nightjar_rl.policy.base import Policy
from nightjar_rl.runtime.driver import PolicyDriver
from nightjar_rl.runtime.steplog import StepLog


def resolve_policy(text: str, max_k: int) -> Policy:
    """The policy named by `text` (see module docstring), checked against the engine's largest k."""
    from nightjar_rl.policy.registry import make_policy, spec_as_dict

    text = text.strip()
    if not text:
        raise ValueError("--policy is empty")
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--policy: not valid JSON ({exc.msg})") from None
        return make_policy(spec, max_k)
    if Path(text).is_file():
        policy = load_any(Path(text), max_k)
        if policy.max_k > max_k:
            raise ValueError(
                f"policy {text} has max_k={policy.max_k}, above the engine's largest k "
                f"(--max-speculation {max_k})"
            )
        return policy
    try:
        spec = spec_as_dict(text)
    except ValueError:
        if text.endswith(".json") or "/" in text:
            raise ValueError(f"policy file {text!r} does not exist") from None
        raise
    return make_policy(spec, max_k)


def load_any(path: Path, max_k: int) -> Policy:
    """A policy artifact (any type, through `load_policy`), or an exported engine schedule read
    back as a table policy."""
    from nightjar_rl.io import read_json
    from nightjar_rl.policy.artifact import ARTIFACT_FORMAT, load_policy
    from nightjar_rl.runtime.export import table_from_export

    data = read_json(path, "policy file")
    if isinstance(data, dict) and data.get("format") == ARTIFACT_FORMAT:
        return load_policy(path)
    return table_from_export(data, max_k, source=str(path))


@dataclass
class RuntimePolicy:
    """What `--k/--policy/--learn/--save-policy/--log-steps` resolve to for one run."""

    policy: Policy
    learn: bool = False
    save_path: Path | None = None
    log: StepLog | None = None
    reward: object = None  # the named reward a learner is credited with (decode tokens/s)

    def driver(self, session) -> PolicyDriver:
        return PolicyDriver(session, self.policy.max_k, self.policy, reward=self.reward, learn=self.learn)

    @property
    def on_step(self):
        return self.log.record if self.log is not None else None

    def finish(self) -> list[str]:
        """Save the learned artifact and the step log (call at exit, also after an interrupt).
        Returns one line per file written."""
        from nightjar_rl.policy.artifact import save_policy

        lines = []
        if self.learn and self.save_path is not None:
            lines.append(f"saved learned policy {save_policy(self.policy, self.save_path)}")
        if self.log is not None:
            lines.append(f"wrote {len(self.log.rows)} step rows to {self.log.write()}")
        return lines


def runtime_policy(
    max_k: int, k: int | None = None, policy: str | None = None, *, learn: bool = False,
    save_policy: str | None = None, log_steps: str | None = None, default_k: int = 4,
) -> RuntimePolicy:
    """Resolve the CLI's policy flags (see `nightjar-rl generate --help`)."""
    from nightjar_rl.contracts.rewards import make_reward
    from nightjar_rl.policy.baselines import FixedK

    if k is not None and policy is not None:
        raise ValueError("give --k or --policy, not both (--k N is --policy fixed-N)")
    if k is not None and k < 0:
        raise ValueError(f"--k must be >= 0, got {k}")
    if k is not None and k > max_k:
        raise ValueError(f"--k {k} exceeds --max-speculation {max_k}")
    chosen = resolve_policy(policy, max_k) if policy is not None else FixedK(default_k if k is None else k, max_k)
    log = StepLog(log_steps) if log_steps else None
    if not learn:
        if save_policy:
            raise ValueError("--save-policy only applies with --learn")
        chosen.learning = False  # a frozen policy: no statistics change while serving
        return RuntimePolicy(chosen, log=log)
    if not chosen.learning:
        raise ValueError(
            f"--learn needs a learning policy (nightjar, ucb1, thompson, or a hysteresis around one); "
            f"{chosen.name} does not learn"
        )
    if save_policy is None:
        if policy is None or not Path(policy).is_file():
            raise ValueError("--learn with a policy spec needs --save-policy FILE")
        save_policy = str(Path(policy).with_suffix(".learned.json"))
    return RuntimePolicy(chosen, True, Path(save_policy), log, make_reward("decode_throughput"))
