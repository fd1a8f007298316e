"""What the CLI's policy flags (`--k/--policy/--learn/--save-policy/--log-steps`) resolve to for one
run: the policy (`--policy` through `nightjar_rl.policy.resolve.resolve_policy`), whether it learns,
where it is saved and the step log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nightjar_rl.contracts.rewards import make_reward
from nightjar_rl.io import check_writable
from nightjar_rl.policy.base import Policy
from nightjar_rl.policy.baselines import FixedK
from nightjar_rl.policy.resolve import resolve_policy
from nightjar_rl.runtime.driver import PolicyDriver
from nightjar_rl.runtime.steplog import StepLog


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
        from nightjar_rl.policy.artifact import (
            save_policy,  # local: `runtime_policy` has a parameter of that name
        )

        lines = []
        if self.learn and self.save_path is not None:
            lines.append(f"saved learned policy {save_policy(self.policy, self.save_path)}")
        if self.log is not None:
            lines.append(f"wrote {len(self.log.rows)} step rows to {self.log.write()}")
        return lines


def runtime_policy(
    max_k: int, k: int | None = None, policy: str | None = None, *, learn: bool = False,
    save_policy: str | None = None, log_steps: str | None = None, default_k: int = 4, drafting: str | None = None,
) -> RuntimePolicy:
    """Resolve the CLI's policy flags (see `nightjar-rl generate --help`); `drafting`: how the engine's
    drafter is priced, for policies that price it (`resolve_policy`)."""
    if k is not None and policy is not None:
        raise ValueError("give --k or --policy, not both (--k N is --policy fixed-N)")
    if k is not None and k < 0:
        raise ValueError(f"--k must be >= 0, got {k}")
    if k is not None and k > max_k:
        raise ValueError(f"--k {k} exceeds --max-speculation {max_k}")
    chosen = resolve_policy(policy, max_k, drafting) if policy is not None else FixedK(default_k if k is None else k, max_k)
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
        check_writable(save_policy, "--save-policy (default: ARTIFACT.learned.json)")
    return RuntimePolicy(chosen, True, Path(save_policy), log, make_reward("decode_throughput"))
