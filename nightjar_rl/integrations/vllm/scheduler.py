"""`NightjarScheduler`: a nightjar-rl policy decides vLLM's speculation, step by step.

vLLM's scheduler (`vllm.v1.core.sched.scheduler.Scheduler`, 0.32) schedules, for each running
request, the draft tokens proposed at the previous step (`request.spec_token_ids`, verified now:
`SchedulerOutput.scheduled_spec_decode_tokens`), and tells the model runner how many tokens to
propose for the next step (`SchedulerOutput.num_spec_tokens_to_schedule`, the hook vLLM's own
batch-size table `num_speculative_tokens_per_batch_size` uses). This subclass sets both:

- mode "propose" (default, vLLM's own semantics): after vLLM has scheduled the step, the policy
  sees the observation (batch size = requests scheduled this step, as vLLM's table counts it; queue;
  acceptance statistics of the steps so far) and its plan sets how many drafts are proposed now;
  each row's drafts are trimmed to its plan length before the next step verifies them (per-row
  budgets). A uniform plan k is exactly what vLLM's table would do with k at that batch size.
- mode "trim" (the backend's): vLLM proposes `num_speculative_tokens` drafts every step and the
  plan, decided before scheduling (batch size = rows running before admission, as in nightjar-rl's
  engine), trims each row's drafts for this very step; the plan is the policy's, or `self.plan` set
  from outside (`engine.VLLMEngine`). As on nightjar-rl's engine, a row never verifies more drafts
  than it can still emit (its remaining token budget - 1; vLLM itself would verify them and drop
  the surplus), so a plan computes the same thing on both engines and the simulator replays it.

Every step becomes a nightjar-rl `StepStats` (`last_stats`; per row drafted / accepted / emitted,
`scored_tokens` = rows + drafts, `context` = the longest decoded row's cached tokens, prefill
tokens = prompt tokens (or chunks) computed in the same pass, `prefill_padded_tokens` equal to them
since vLLM packs; wall time from scheduling to the processed outputs), which feeds the observation, the policy's
`observe`, online learning (reward: decode tokens/s) and the step log.

Settings, as vLLM config (`additional_config={"nightjar": {...}}`, `--additional-config`) or the JSON
in $NIGHTJAR_VLLM: `policy` (artifact path or spec, as `nightjar-rl generate --policy`), `learn`,
`save_policy` (where a learning policy is saved: at shutdown, at exit, and every `save_every` steps,
default 500, since a server's engine process may be killed before its shutdown runs), `log_steps`
(.csv/.parquet, written at shutdown/exit), `mode`.
Without a policy the plan is `self.plan`; without either, vLLM decides as it would (its
`num_speculative_tokens`, or its own batch-size table) and this class only records the steps.
"""

from __future__ import annotations

import atexit
import logging
import time

import numpy as np
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from nightjar_rl.contracts import PlanError, SpecPlan
from nightjar_rl.contracts.observation import ObservationTracker
from nightjar_rl.decoding.drafters.acceptance import agreement
from nightjar_rl.decoding.layouts import MIXED_LAYOUT
from nightjar_rl.decoding.stats import StepStats
from nightjar_rl.hardware import LOOKUP
from nightjar_rl.integrations.vllm.config import plugin_settings
from nightjar_rl.schema import ConfigError

MODES = ("propose", "trim")
SETTINGS = ("policy", "learn", "save_policy", "log_steps", "mode", "save_every")
SAVE_EVERY = 500  # steps between saves of a learning policy (a server may be killed before shutdown runs)
logger = logging.getLogger("nightjar_rl.vllm")


def _kept(req, had: int, emitted: int, drafts: list[int], raw: int) -> int:
    """Draft tokens a row accepted and kept this step. Greedy: the drafts that agree with the tokens
    the step appended (a draft is accepted iff it is the target's token), which also counts a draft
    that was the EOS ending the request, as nightjar-rl's engine and traces do (vLLM's sampled list
    then lacks it); sampling: vLLM's sampled tokens less the bonus, capped by what was appended."""
    if not drafts:
        return 0
    params = req.sampling_params
    if params is not None and params.temperature == 0:
        return agreement(drafts, req.output_token_ids[had: had + emitted])
    return min(max(raw - 1, 0), emitted)


class NightjarScheduler(Scheduler):
    """vLLM's scheduler with nightjar-rl deciding the speculation of every step (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        settings = plugin_settings(self.vllm_config.additional_config)
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise ConfigError(f"nightjar scheduler: unknown setting(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(SETTINGS)}")
        self.mode = settings.get("mode", "propose")
        self.save_every = int(settings.get("save_every", SAVE_EVERY))
        if self.mode not in MODES:
            raise ConfigError(f"nightjar scheduler: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.max_k = int(self.num_spec_tokens)
        self.runtime = None
        if settings.get("policy") is not None:
            from nightjar_rl.runtime.policy_spec import runtime_policy

            spec = self.vllm_config.speculative_config
            lookup = spec is not None and getattr(spec, "method", None) == "ngram"  # vLLM's model-free drafter
            self.runtime = runtime_policy(self.max_k, None, str(settings["policy"]), learn=bool(settings.get("learn")),
                                          save_policy=settings.get("save_policy"), log_steps=settings.get("log_steps"),
                                          drafting=LOOKUP if lookup else None)
            if getattr(self.runtime.policy, "select_after_draft", False):
                raise ConfigError("nightjar scheduler: vLLM's drafters state no per-token confidences here, so a "
                                  "policy cannot choose drafts by them (select_after_draft)")
            self.runtime.policy.reset()
            atexit.register(self.finish)
        elif settings.get("learn") or settings.get("save_policy"):
            raise ConfigError("nightjar scheduler: learn/save_policy need a policy")
        self.plan: SpecPlan | None = None  # set from outside before a step (the backend), used without a policy
        self.tracker = ObservationTracker(self.max_k)
        self.last_stats: StepStats | None = None
        self.decisions: list[tuple[int, int]] = []  # (batch size seen, proposal length k) per decision
        self.decision_times: list[float] = []  # seconds spent in this class per step (observation, policy, stats)
        self._row_plan: dict[str, int] = {}  # mode propose: length each row's drafts are trimmed to next step
        self._verify_plan: dict[str, int] = {}  # the lengths applied to the drafts verified this step
        self._credit: list[tuple[np.ndarray, object]] = []  # decisions waiting for the step that shows their reward
        self._arrivals, self._last_decision = 0, time.perf_counter()
        self._step_start = 0.0
        self._step_count = 0
        self._finished = False

    # ---- requests ---------------------------------------------------------------------------------
    def add_request(self, request) -> None:
        super().add_request(request)
        self._arrivals += 1

    # ---- deciding ---------------------------------------------------------------------------------
    def _decide(self, batch: int, queue: int) -> SpecPlan:
        """The plan for this decision: the policy's (from the observation), else `self.plan`, else
        the full length."""
        now = time.perf_counter()
        self.tracker.observe_arrivals(self._arrivals, now - self._last_decision)
        self._arrivals, self._last_decision = 0, now
        if self.runtime is None:  # mode trim without a plan: every draft vLLM proposed is verified
            plan = self.plan if self.plan is not None else SpecPlan.uniform(self.max_k)
        else:
            obs = self.tracker.vector(batch, queue)
            action = self.runtime.policy.predict(obs, deterministic=not self.runtime.learn)
            plan = action if isinstance(action, SpecPlan) else SpecPlan.uniform(int(action))
            if plan.verify_costs is not None:  # not silently dropped
                raise PlanError(f"{getattr(self.runtime.policy, 'name', 'the policy')} chose drafts by confidence (verify_costs), which vLLM's "
                                "drafters do not state here")
            self._credit.append((obs, action if isinstance(action, SpecPlan) else int(action)))
        self.decisions.append((batch, min(plan.max_length, self.max_k)))
        return plan

    def _lengths(self, plan: SpecPlan, rows) -> dict[str, int]:
        return {rid: min(plan.length_for(rid), self.max_k) for rid in rows}

    def schedule(self, *args, **kwargs):
        start = self._step_start = time.perf_counter()
        if self.mode == "trim":
            lengths = self._lengths(self._decide(len(self.running), len(self.waiting)),
                                    [r.request_id for r in self.running])
        else:
            lengths = self._row_plan
        for req in self.running:  # per-row budgets: fewer drafts scheduled for verification
            k = lengths.get(req.request_id)
            if k is not None and self.mode == "trim":  # as on nightjar-rl's engine: no draft past the budget
                k = min(k, max(0, req.max_tokens - req.num_output_tokens - 1))
            if k is not None and len(req.spec_token_ids) > k:
                req.spec_token_ids = req.spec_token_ids[:k]
        self._verify_plan = dict(lengths)
        cost = time.perf_counter() - start
        out = super().schedule(*args, **kwargs)
        resumed = time.perf_counter()
        decides = self.runtime is not None or self.plan is not None
        if self.mode == "propose" and decides and self.max_k and out.num_scheduled_tokens:
            rows = list(out.num_scheduled_tokens)
            self._row_plan = self._lengths(self._decide(len(rows), len(self.waiting)), rows)
            out.num_spec_tokens_to_schedule = max(self._row_plan.values())
        elif self.mode == "trim" and self.max_k:
            out.num_spec_tokens_to_schedule = self.max_k  # full proposals (not vLLM's table): the plan trims them
        self.decision_times.append(cost + time.perf_counter() - resumed)
        return out

    # ---- observing --------------------------------------------------------------------------------
    def update_from_output(self, scheduler_output, model_runner_output):
        start = time.perf_counter()
        before = {}
        for rid in scheduler_output.num_scheduled_tokens:
            req = self.requests.get(rid)
            if req is not None and not req.is_finished():
                before[rid] = (req, req.num_output_tokens)
        cost = time.perf_counter() - start
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        resumed = time.perf_counter()
        stats = self._step_stats(scheduler_output, model_runner_output, before)
        stats.wall_time = resumed - self._step_start
        self._observe(stats)
        self.decision_times[-1] += cost + time.perf_counter() - resumed
        return outputs

    def _step_stats(self, out, model_out, before: dict) -> StepStats:
        """The step as nightjar-rl's `StepStats` (rows decoded = requests that had output before it)."""
        stats = StepStats(step=self._step_count, k=0, batch_size=0, num_waiting=len(self.waiting), num_prefilled=0,
                          verify_layout=MIXED_LAYOUT)
        sampled, index = model_out.sampled_token_ids, model_out.req_id_to_index
        for rid, scheduled in out.num_scheduled_tokens.items():
            if rid not in before:
                continue
            req, had = before[rid]
            emitted = req.num_output_tokens - had
            if had == 0:  # prefill (or a chunk of it)
                stats.prefill_tokens += scheduled
                stats.prefill_padded_tokens += scheduled  # packed with the step's other tokens: no padding
                if emitted:
                    stats.num_prefilled += 1
                    stats.prefill_emitted += emitted
                    stats.first_token_ids.append(rid)
            else:
                drafts = [t for t in out.scheduled_spec_decode_tokens.get(rid, ()) if t >= 0]
                drafted = len(drafts)
                raw = len(sampled[index[rid]]) if sampled and rid in index else 0
                stats.request_ids.append(rid)
                stats.context = max(stats.context, req.num_prompt_tokens + had - 1)  # cached before the step
                stats.plan.append(self._verify_plan.get(rid, self.max_k))
                stats.drafted.append(drafted)
                stats.accepted.append(_kept(req, had, emitted, drafts, raw))
                stats.emitted.append(emitted)
            if req.is_finished():
                stats.finished_ids.append(rid)
                if req.status == RequestStatus.FINISHED_ABORTED:
                    stats.aborted_ids.append(rid)
        stats.batch_size = len(stats.request_ids)
        stats.k = max(stats.plan, default=0)
        stats.verify_tokens = 1 + max(stats.drafted, default=0) if stats.request_ids else 0
        stats.scored_tokens = sum(1 + d for d in stats.drafted)  # vLLM packs rows: no padding
        stats.extra["num_spec_tokens_to_schedule"] = int(out.num_spec_tokens_to_schedule)
        stats.extra["scheduled_rows"] = len(out.num_scheduled_tokens)  # vLLM's batch size (its table's key)
        self._step_count += 1
        return stats

    def _observe(self, stats: StepStats) -> None:
        """Fold a finished step into the observation, the policy, its learning and the step log."""
        self.last_stats = stats
        self.tracker.observe_step(stats)
        rp = self.runtime
        if rp is None:
            return
        rp.policy.observe(stats)
        # the decision a step rewards: in mode trim the one made for it; in mode propose the one that
        # proposed the drafts it verified (made at the previous step)
        keep = 1 if self.mode == "propose" else 0
        reward = float(rp.reward(stats)) if rp.reward is not None else float("nan")
        while len(self._credit) > keep:
            obs, action = self._credit.pop(0)
            if rp.learn and stats.batch_size > 0:
                rp.policy.update(obs, action, reward)
        if rp.learn and rp.save_path is not None and self.save_every > 0 and self._step_count % self.save_every == 0:
            from nightjar_rl.policy.artifact import save_policy

            save_policy(rp.policy, rp.save_path)
        if rp.log is not None:
            from nightjar_rl.runtime.driver import Decision

            rp.log.record(Decision(stats.batch_size, stats.num_waiting, 0, time.perf_counter()), stats, reward)

    # ---- reporting and shutdown ---------------------------------------------------------------------
    def decision_cost(self) -> dict[str, float]:
        """Time this class adds per step (observation, policy, trimming, stats), in microseconds."""
        t = np.asarray(self.decision_times) * 1e6
        if not len(t):
            return {"steps": 0}
        return {"steps": len(t), "median_us": float(np.median(t)), "p90_us": float(np.percentile(t, 90)),
                "mean_us": float(t.mean()), "max_us": float(t.max())}

    def finish(self) -> list[str]:
        """Save a learning policy's artifact and the step log (once); returns what was written."""
        if self._finished or self.runtime is None:
            return []
        self._finished = True
        return self.runtime.finish()

    def shutdown(self) -> None:
        try:
            for line in self.finish():
                logger.warning("nightjar: %s", line)
            logger.warning("nightjar: decision cost per step %s", self.decision_cost())
        finally:
            super().shutdown()
