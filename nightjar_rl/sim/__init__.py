"""The simulator: exact acceptance replay from traces, time from a hardware profile.

- `profile`: the clock model (measured or roofline hardware profiles).
- `roofline`: analytic profiles for GPUs we cannot run on.
- `trace`: recorded greedy outputs and per-position acceptance, and how to record them.
- `engine`: `SimEngine`, the engine surface over a trace and a profile.
"""
