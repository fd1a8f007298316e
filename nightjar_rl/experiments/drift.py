"""The machine's speed against a twin's profile, timed around live work.

This CPU's speed moves by more than 5% from hour to hour, so a twin profiled this morning misprices
this afternoon's live cells by the machine's drift, whatever its clock model. `SpeedDrift` times the
profile's speed anchor (a few fixed forwards, `nightjar_rl.decoding.profiler.measure_speed_anchor`)
before and after the live cells and gives the mean ratio now / when profiled: a twin served with
`profile_scale` = that ratio prices the live cells at the speed they ran at. Both twins are reported,
so the drift and the clock model's own error stay apart.
"""

from __future__ import annotations

import dataclasses
import statistics

from nightjar_rl.env.backend import resolve_data_path
from nightjar_rl.env.scenario import Scenario, ScenarioError
from nightjar_rl.hardware import HardwareProfile, speed_ratio


class SpeedDrift:
    """Speed anchors of `live`'s engine timed against the one in `twin`'s profile."""

    def __init__(self, live: Scenario, twin: Scenario, rounds: int = 21):
        profile = HardwareProfile.load(resolve_data_path(twin.profile, twin.base_dir))
        if profile.speed_anchor is None:
            raise ScenarioError(f"scenario {twin.name!r}: its profile {twin.profile} has no speed_anchor to rescale "
                                f"by (make it with `nightjar-rl profile ... --anchor`)")
        self.live, self.then, self.rounds = live, profile.speed_anchor, rounds
        self.measurements: list[dict] = []

    def measure(self, label: str) -> float:
        """Time the anchor now; its ratio now / when profiled (above 1: slower now)."""
        from nightjar_rl.stack import engine_speed_anchor  # torch: only when a live engine runs anyway

        cfg = dataclasses.replace(self.live.engine_config(), **{k: self.then[k] for k in ("verify_layout", "model_forward")
                                                                if k in self.then})
        now = engine_speed_anchor(cfg, rounds=self.rounds)
        ratio, per_shape = speed_ratio(self.then, now)
        self.measurements.append({"label": label, "ratio": ratio, "per_shape": per_shape, "anchor": now})
        return ratio

    @property
    def ratio(self) -> float:
        """The mean ratio of the measurements so far (1.0 before any)."""
        return statistics.fmean(m["ratio"] for m in self.measurements) if self.measurements else 1.0

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "profiled": self.then, "measurements": self.measurements}

    def describe(self) -> str:
        parts = ", ".join(f"{m['label']} {m['ratio']:.3f}" for m in self.measurements)
        return (f"machine speed now / when the twin was profiled ({self.then.get('measured', '?')}): "
                f"{self.ratio:.3f} ({parts}; above 1: slower now)")
