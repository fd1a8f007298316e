"""Contracts shared by every layer (engine, simulator, env, runtime, policies), with no dependency on
the rest of the package, so any package can import them without cycles:

- `plan`: `SpecPlan`, what one engine step takes (a speculation length per running row);
- `step`: `StepRecord`, what the observation and the rewards read from a step's stats;
- `observation`: the observation vector a policy sees (layout, and how steps build it);
- `rewards`: the named step rewards a learner is credited with.
"""

from nightjar_rl.contracts.plan import PlanError, SpecPlan

__all__ = ["PlanError", "SpecPlan"]
