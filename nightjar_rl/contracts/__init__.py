"""Contracts shared by every layer (engine, simulator, env, runtime, policies): plain value types
with no dependency on the rest of the package, so any package can import them without cycles."""

from nightjar_rl.contracts.plan import PlanError, SpecPlan

__all__ = ["PlanError", "SpecPlan"]
