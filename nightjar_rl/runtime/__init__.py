"""The runtime: one driver that turns a serving session's decision state into k through a policy.

Used by the env (training), evaluation (experiments), `serve`, the CLI and the server."""

from nightjar_rl.runtime.driver import Decision, PolicyDriver, serve

__all__ = ["Decision", "PolicyDriver", "serve"]
