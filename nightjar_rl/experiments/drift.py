"""The machine's speed against a twin's profile, timed around live work.

This CPU's speed moves by more than 5% from hour to hour, so a twin profiled this morning misprices
this afternoon's live cells by the machine's drift, whatever its clock model. `SpeedDrift` times the
profile's speed anchor (a few fixed forwards, `nightjar_rl.decoding.profiler.measure_speed_anchor`)
before and after the live cells and gives the mean ratio now / when profiled: a twin served with
`profile_scale` = that ratio (and `profile_scale_keeps_host`: only its forwards scaled, each batch size
by the anchor's ratio at its row count, `profile_scale_by_rows`) prices the live cells at the speed
they ran at. Both twins are reported,
so the drift and the clock model's own error stay apart. A twin of vLLM is anchored on vLLM's own CPU
kernels run by our layer loop (`anchor_config`): vLLM's engine cannot time a fixed forward by itself.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys

from nightjar_rl.engine_config import EngineConfig
from nightjar_rl.env.backend import resolve_data_path
from nightjar_rl.env.scenario import Scenario, ScenarioError
from nightjar_rl.hardware import HardwareProfile, ProfileError, mean_anchor, speed_ratio, speed_ratio_by_rows
from nightjar_rl.model_names import linears_for
from nightjar_rl.stack import anchor_engine_config


_ANCHOR_SCRIPT = """
import json, sys
from nightjar_rl.engine_config import EngineConfig
from nightjar_rl.stack import engine_speed_anchor
print(json.dumps(engine_speed_anchor(EngineConfig(**json.loads(sys.argv[1])), rounds=int(sys.argv[2]))))
"""


def anchor_in_fresh_process(cfg: EngineConfig, rounds: int) -> dict:
    """`engine_speed_anchor(cfg)` timed in a new Python process (seconds: it loads the model)."""
    done = subprocess.run([sys.executable, "-c", _ANCHOR_SCRIPT, json.dumps(dataclasses.asdict(cfg)), str(rounds)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        raise RuntimeError(f"timing the speed anchor failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def anchor_config(live: Scenario) -> EngineConfig:
    """The engine whose fixed forwards time the machine for `live`'s twin: the live engine itself; for
    vLLM (`backend: vllm`), our layer loop on vLLM's own CPU kernels and GEMM (`model_forward:
    native-vllm`, `linears: vllm`), the kernels its steps run."""
    cfg = live.engine_config()
    vllm_kernels = "native-vllm"
    return (dataclasses.replace(cfg, model_forward=vllm_kernels, linears=linears_for(vllm_kernels))
            if live.backend == "vllm" else cfg)


def kernel_mismatch(anchor: dict, kernels: EngineConfig) -> str | None:
    """Why `anchor` may not follow the engine whose kernels `kernels` runs (`anchor_config`), or None: an
    anchor timed on other kernels than the live engine's drifts apart from it (anchor_tracking.py measured
    a TorchScript-forward anchor off vLLM's speed by 9.6% median, one on vLLM's kernels by 3.1%)."""
    timed = anchor_engine_config(kernels, anchor)
    if (timed.model_forward, timed.linears) == (kernels.model_forward, kernels.linears):
        return None
    return (f"the twin's speed anchor was timed on model_forward {timed.model_forward!r} / linears {timed.linears!r}, "
            f"but the live engine runs {kernels.model_forward!r} / {kernels.linears!r}: its ratio may not follow "
            f"the live engine's speed (re-anchor the twin: `sim_fidelity.py --calibrate-seeds`, or time an anchor "
            f"with `nightjar-rl profile --anchor-only --model-forward {kernels.model_forward} --linears "
            f"{kernels.linears} --out A.json` and re-fit the profile with `profile --from-steps ... --anchor A.json`)")


def timed_around(live: Scenario, work, rounds: int = 21):
    """`work()`'s result and the speed anchor of `anchor_config(live)` timed before and after it (each in
    a fresh process), averaged (`mean_anchor`): the anchor of a profile fitted to the steps `work` logs."""
    cfg = anchor_config(live)
    before = anchor_in_fresh_process(cfg, rounds)
    result = work()
    return result, mean_anchor([before, anchor_in_fresh_process(cfg, rounds)])


class SpeedDrift:
    """The speed anchor in `twin`'s profile timed again (on the forward it records, with `live`'s model)
    and compared with the stored one."""

    def __init__(self, live: Scenario, twin: Scenario, rounds: int = 21):
        profile = HardwareProfile.load(resolve_data_path(twin.profile, twin.base_dir))
        if profile.speed_anchor is None:
            raise ScenarioError(f"scenario {twin.name!r}: its profile {twin.profile} has no speed_anchor to rescale "
                                f"by (make it with `nightjar-rl profile ... --anchor`)")
        try:  # the twin at today's speed keeps its host work (`scaled_forwards`): checked before any live cell
            profile.host_ms_by_rows()
        except ProfileError as exc:
            raise ScenarioError(f"scenario {twin.name!r}: {exc}") from None
        self.live, self.then, self.rounds = live, profile.speed_anchor, rounds
        self.measurements: list[dict] = []
        self.caveat = kernel_mismatch(self.then, anchor_config(live))

    def measure(self, label: str) -> float:
        """Time the anchor now, in a fresh process as the profile's was (`nightjar-rl profile --anchor-only`):
        in the process that served the live cells it read up to 27% slow after them, while the same anchor
        in a fresh process a minute later read as the profile's. Its ratio now / when profiled (above 1:
        slower now)."""
        now = anchor_in_fresh_process(anchor_engine_config(self.live.engine_config(), self.then), self.rounds)
        ratio, per_shape = speed_ratio(self.then, now)
        self.measurements.append({"label": label, "ratio": ratio, "per_shape": per_shape, "anchor": now})
        return ratio

    @property
    def ratio(self) -> float:
        """The mean ratio of the measurements so far (1.0 before any)."""
        return statistics.fmean(m["ratio"] for m in self.measurements) if self.measurements else 1.0

    @property
    def ratio_by_rows(self) -> dict[int, float] | None:
        """The mean per-rows ratio (`speed_ratio_by_rows`) of the measurements so far (None before any)."""
        return ratio_by_rows(self.to_dict())

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "profiled": self.then, "measurements": self.measurements, "caveat": self.caveat}

    def describe(self) -> str:
        parts = ", ".join(f"{m['label']} {m['ratio']:.3f}" for m in self.measurements)
        by_rows = ", ".join(f"{rows} {ratio:.3f}" for rows, ratio in (self.ratio_by_rows or {}).items())
        return (f"machine speed now / when the twin was profiled ({self.then.get('measured', '?')}): "
                f"{self.ratio:.3f} ({parts}; above 1: slower now)" + (f"; by rows: {by_rows}" if by_rows else "")
                + (f"; caution: {self.caveat}" if self.caveat else ""))


def ratio_by_rows(drift: dict) -> dict[int, float] | None:
    """A `SpeedDrift.to_dict()` (a stored `speed_drift.json` too): the mean over its measurements of the
    anchor's ratio per row count (`speed_ratio_by_rows`), or None with no measurement."""
    per = [speed_ratio_by_rows(drift["profiled"], m["anchor"]) for m in drift["measurements"]]
    return {rows: statistics.fmean(p[rows] for p in per) for rows in per[0]} if per else None
