"""The `nightjar-rl` command: generate, bench, serve, export, profile, experiment, train, datastore, trace."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from pathlib import Path

from nightjar_rl.decoding.datastore_cli import add_datastore_parser
from nightjar_rl.decoding.layouts import STEP_LAYOUTS
from nightjar_rl.engine_config import EngineConfig
from nightjar_rl.model_names import DEFAULT_MODEL_FORWARD, LINEARS, MODEL_FORWARDS, linears_for
from nightjar_rl.env.trace_cli import add_trace_parser
from nightjar_rl.experiments.cli import add_experiment_parser, add_train_parser
from nightjar_rl.runtime.server_config import ServerConfig
from nightjar_rl.schema import add_arguments, from_namespace
from nightjar_rl.sim.cli import add_roofline_args

DEFAULT_PROFILE_DIR = Path("envs") / "profiles"
MEASURED_BATCH_SIZES = "1,2,4,8,16,32,64"
MAX_EXPORT_BATCH = 65536  # export --max-batch-size: beyond any engine's batch (and the schedule is read per size)
DEFAULT_MAX_NEW_TOKENS = 64  # generate/bench without --max-new-tokens or a --scenario


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """One flag per `EngineConfig` field, with the schema's default, choices and help."""
    add_arguments(p.add_argument_group("engine"), EngineConfig)


def _add_policy_args(p: argparse.ArgumentParser) -> None:
    """How k is chosen: a fixed --k, or any policy (artifact file or spec), optionally learning."""
    g = p.add_argument_group("speculation policy")
    g.add_argument("--k", type=int, default=None, help="fixed speculation length (0 = off; default 4): --policy fixed-K")
    g.add_argument("--policy", default=None, metavar="ARTIFACT|SPEC",
                   help="policy artifact (policies/*.json, or a schedule from `nightjar-rl export`) or spec: "
                        "fixed-3, table-mlc_llm, nightjar, '{\"type\": ...}'; max_k <= --max-speculation")
    g.add_argument("--learn", action="store_true", help="bandits keep learning online (reward: decode tokens/s)")
    g.add_argument("--save-policy", default=None, help="where --learn saves the updated artifact at exit "
                                                        "(default: ARTIFACT with suffix .learned.json)")
    g.add_argument("--log-steps", default=None, metavar="FILE", help="per-step decision table (.csv or .parquet)")


def _runtime_policy(a: argparse.Namespace, cfg: EngineConfig):
    from nightjar_rl.decoding.drafters.registry import drafting_of
    from nightjar_rl.runtime.policy_spec import runtime_policy

    return runtime_policy(cfg.max_speculation, a.k, a.policy, learn=a.learn, save_policy=a.save_policy,
                          log_steps=a.log_steps, drafting=drafting_of(cfg.drafter))


def _serve_workload(rp, engine, requests, progress: bool, desc: str, max_concurrency: int | None = None):
    """Run a workload under the resolved policy (closed loop with at most `max_concurrency` requests
    in flight, if given); the learned artifact and step log are saved even after an interrupt."""
    from nightjar_rl.serving import ServingSession

    try:
        session = ServingSession(engine, requests, max_concurrency)
        return rp.driver(session).run(progress=progress, desc=desc, on_step=rp.on_step)
    finally:
        for line in rp.finish():
            print(line)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with a usage error on one line (the usage is what --help is for); subcommands inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="live", choices=["live", "vllm"],
                   help="live: nightjar-rl's engine; vllm: vLLM's engine stepped in-process (eager) with the engine "
                        "flags vLLM has (model, dtype, slots, context, n-gram drafter, sampling, threads; not the "
                        "forward, linears, kv block, layout or decoder), the policy trimming its drafts per step (needs vLLM: "
                        "install.sh --vllm)")


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that serve prompts: policy, prompt set, token budget, progress."""
    _add_policy_args(p)
    p.add_argument("--scenario", default=None,
                   help="serve a scenario's prompts on its backend (e.g. smollm2-ngram-sim: the simulator, outputs "
                        "from its trace); engine and prompt flags are then the scenario's, but for --num-requests and "
                        "--max-new-tokens")
    p.add_argument("--workload", default=None, metavar="SPEC",
                   help="prompts: bundled (default), a .jsonl file ('prompt' or 'messages', optional id, family, "
                        "max_tokens), jsonl:FILE, or a registered/entry-point source")
    _add_backend_arg(p)
    p.add_argument("--prompts", default=None, help="a JSONL prompt file (same as --workload FILE)")
    p.add_argument("--families", default=None, help="comma-separated prompt families to keep")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"output tokens per request at most (default {DEFAULT_MAX_NEW_TOKENS}; with --scenario, the "
                        "scenario's max_new_tokens unless given)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _engine_config(a: argparse.Namespace) -> EngineConfig:
    return from_namespace(EngineConfig, a)


def _arrival_times(a: argparse.Namespace, rate: float | None, n: int):
    """(arrival times, output budgets from an arrival trace or None) of n requests: Poisson at --rate
    (all at once without it), gamma with --burstiness, or an --arrival-trace (scaled to --rate if given)."""
    import numpy as np

    from nightjar_rl.serving.arrivals import GammaArrivals, PoissonArrivals, TraceArrivals

    burstiness, trace = getattr(a, "burstiness", None), getattr(a, "arrival_trace", None)
    if trace and burstiness is not None:
        raise CLIError("--arrival-trace and --burstiness are two arrival processes: give one")
    if trace:
        process = TraceArrivals(trace, rate)
    elif burstiness is not None:
        if rate is None:
            raise CLIError("--burstiness needs a --rate")
        process = GammaArrivals(rate, burstiness)
    else:
        process = PoissonArrivals(rate if rate is not None else math.inf)
    times = process.sample(n, np.random.default_rng(a.seed))
    return times, process.budgets(len(times)) if isinstance(process, TraceArrivals) else None


def _requests(a: argparse.Namespace, records, prompts: list[list[int]], limits: list[int], rate: float | None):
    """Requests of the records (cycled to --num-requests by the caller), with arrival times; an arrival
    trace may give fewer (its length) and caps budgets by its output token counts."""
    from nightjar_rl.serving import build_requests

    times, traced = _arrival_times(a, rate, len(records))
    if traced is not None:
        limits = [min(b, max(1, int(t))) for b, t in zip(limits, traced)]
    n = len(times)
    return records[:n], build_requests(prompts[:n], [r.id for r in records[:n]], times, limits[:n])


def _load_workload(a, stack, rate: float | None, count: int | None):
    from nightjar_rl.serving.workload import WorkloadQuery, budgets, encode_record, load_workload

    if a.prompts and a.workload:
        raise CLIError("--prompts and --workload name the same thing: give one")
    room = stack.config.max_seq_len - a.max_new_tokens  # longest prompt the engine can take with a full budget
    query = WorkloadQuery(count, a.seed, stack.tokenizer, stack.vocab_size, max(1, room))
    records = load_workload(a.workload or a.prompts, a.families.split(",") if getattr(a, "families", None) else None,
                            query)
    if count is not None:
        records = [records[i % len(records)] for i in range(count)]
    ids = [encode_record(stack.tokenizer, r, stack.vocab_size) for r in records]
    return _requests(a, records, ids, budgets(records, a.max_new_tokens), rate)


class _Workload:
    """What generate/bench serve: an engine, its max k, prompt records and requests, a tokenizer."""

    def __init__(self, a: argparse.Namespace, rate: float | None, count: int | None):
        if a.scenario and a.backend != "live":
            raise CLIError("--backend and --scenario both name the backend: give one (a scenario says `backend:`)")
        if a.max_new_tokens is not None and a.max_new_tokens < 1:
            raise CLIError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
        if count is not None and count < 1:
            raise CLIError(f"--num-requests must be >= 1, got {count}")
        if a.scenario:  # the scenario's backend: the live engine, the simulator or vLLM
            from nightjar_rl.env.backend import make_backend, resolve_data_path
            from nightjar_rl.env.scenario import load_scenario
            from nightjar_rl.serving import PromptRecord
            from nightjar_rl.serving.workload import budgets

            scenario = load_scenario(a.scenario)
            spec = a.workload or a.prompts
            if spec and scenario.backend == "sim":
                recorded = scenario.prompts.get("path", "bundled")
                if spec != recorded:  # a sim replays its trace's prompts; the same workload is what it has
                    raise CLIError(f"scenario {scenario.name!r} replays the prompts its trace was recorded from "
                                   f"({recorded}), not {spec!r}: drop --workload, or use a "
                                   "sim scenario recorded from it (smollm2-sharegpt-sim, smollm2-humaneval-sim)")
                spec = None
            if spec:
                scenario = scenario.replace(prompts={"path": spec, "sample": count, "seed": a.seed})
            if a.max_new_tokens is not None:
                try:
                    scenario = scenario.replace(max_new_tokens=a.max_new_tokens)
                except ValueError as exc:
                    raise CLIError(f"--max-new-tokens {a.max_new_tokens}: {exc}") from None
            backend = make_backend(scenario)
            pool = backend.prompt_pool
            if not len(pool):
                raise CLIError(f"scenario {scenario.name!r} has no prompts")
            n = len(pool) if count is None else count
            picks = [i % len(pool) for i in range(n)]
            fams = pool.families or ["scenario"] * len(pool)
            own = pool.max_tokens or [None] * len(pool)
            records = [PromptRecord(pool.ids[i], "", fams[i] or "scenario", max_tokens=own[i]) for i in picks]
            self.records, self.requests = _requests(a, records, [pool.token_ids[i] for i in picks],
                                                    budgets(records, scenario.max_new_tokens), rate)
            self.config = scenario.engine_config(a.seed)
            self.engine = backend.make_engine(a.seed)
            self.tokenizer = backend.target.tokenizer if backend.needs_model else getattr(backend, "tokenizer", None)
            self.label = {"scenario": scenario.name, "backend": scenario.backend}
            self.max_concurrency = scenario.max_concurrency
            self.scenario_dict = scenario.to_dict()
            self.files = {k: str(resolve_data_path(v, scenario.base_dir)) for k in ("trace", "profile")
                          if (v := getattr(scenario, k))}
        else:
            if a.max_new_tokens is None:
                a.max_new_tokens = DEFAULT_MAX_NEW_TOKENS  # set, so the run folder's provenance records it
            self.config = _engine_config(a)
            stack = _serving_stack(a.backend, self.config)
            self.records, self.requests = _load_workload(a, stack, rate, count)
            self.engine, self.tokenizer = stack.engine, stack.tokenizer
            self.label = {"backend": "vllm"} if a.backend == "vllm" else {}
            self.max_concurrency = None
            self.scenario_dict = None
            spec = a.workload or a.prompts
            self.files = {"prompts": spec} if spec else {}


def _serving_stack(backend: str, cfg: EngineConfig):
    """The engine of `--backend` for `cfg` with its tokenizer: ours (`build_stack`) or vLLM's engine
    stepped in this process (`VLLMStack`, its n-gram drafter; started when first used)."""
    if backend == "vllm":
        from nightjar_rl.integrations.vllm.engine import VLLMStack

        return VLLMStack(cfg)
    from nightjar_rl.stack import build_stack

    return build_stack(cfg)


def cmd_generate(a: argparse.Namespace) -> int:
    from nightjar_rl.io import atomic_write_jsonl

    w = _Workload(a, None, a.num_requests)
    rp = _runtime_policy(a, w.config)
    result = _serve_workload(rp, w.engine, w.requests, not a.quiet, "generate")
    reasons = dict(zip(result.requests["request_id"], result.requests["finish_reason"]))
    rows = []
    for rec, req in zip(w.records, w.requests):
        tokens = result.outputs.get(req.request_id, [])  # none for a request rejected by --max-waiting
        text = w.tokenizer.decode(tokens, skip_special_tokens=True) if w.tokenizer else None
        rows.append({"id": rec.id, "token_ids": tokens, "text": text, "finish_reason": reasons[req.request_id]})
    atomic_write_jsonl(a.out, rows)
    print(f"wrote {len(rows)} generations to {a.out}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from nightjar_rl.io import atomic_write_json
    from nightjar_rl.serving import summarize

    rate = None if a.rate in (None, "inf", "offline") else _positive_float(a.rate, "--rate")
    if a.max_concurrency is not None and a.max_concurrency < 1:
        raise CLIError(f"--max-concurrency must be >= 1, got {a.max_concurrency}")
    w = _Workload(a, rate, a.num_requests)
    cfg = w.config
    rp = _runtime_policy(a, cfg)
    concurrency = a.max_concurrency if a.max_concurrency is not None else w.max_concurrency
    result = _serve_workload(rp, w.engine, w.requests, not a.quiet, "bench", concurrency)
    closed = {} if concurrency is None else {"max_concurrency": concurrency}
    summary = {"model": cfg.model, "drafter": cfg.drafter, "decoder": cfg.decoder, "dtype": cfg.dtype, **w.label,
               "policy": rp.policy.name, "rate": rate if rate is not None else "offline", **closed, **summarize(result)}
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if a.out:
        atomic_write_json(a.out, summary)
        print(f"wrote {a.out}")
    if a.run_dir:
        _write_run_dir(Path(a.run_dir), a, w, summary, result)
    return 0


def _write_run_dir(run_dir: Path, a: argparse.Namespace, w: _Workload, summary: dict, result) -> None:
    """bench --run-dir: summary.json, requests.csv (one row per request) and provenance.json."""
    import dataclasses

    from nightjar_rl.env.recorder import write_table
    from nightjar_rl.io import atomic_write_json
    from nightjar_rl.serving.report import provenance, request_table

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "summary.json", summary)
    write_table(request_table(result, {r.id: r.family for r in w.records}), run_dir / "requests.csv")
    args = {k: v for k, v in vars(a).items() if k != "func"}
    atomic_write_json(run_dir / "provenance.json", provenance(
        {"args": args, "engine": dataclasses.asdict(w.config)}, w.scenario_dict, w.files))
    print(f"wrote {run_dir}/summary.json, requests.csv, provenance.json")


def cmd_serve(a: argparse.Namespace) -> int:
    from nightjar_rl.runtime.server import build_server, make_server

    cfg = _engine_config(a)
    server_cfg = from_namespace(ServerConfig, a, engine=cfg)
    server_cfg.check_bind()  # a bound port or a bad host: one line now, not after the model loads
    rp = _runtime_policy(a, cfg)
    stack = _serving_stack(a.backend, cfg)
    if a.backend == "vllm":
        print("starting vLLM's engine in this process (tens of seconds on a CPU)", flush=True)
    app, engine_loop = build_server(stack, rp, server_cfg)
    server = make_server(app, a.host, a.port, log_level="warning" if a.quiet else "info", engine_loop=engine_loop)
    print(f"serving {server_cfg.model_name} with policy {rp.policy.name} on http://{a.host}:{a.port}", flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the handler it found: make that
    # handler exit through `finally`, so the learned policy and the step log are saved (as on Ctrl-C)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        for line in engine_loop.stop():
            print(line, flush=True)
    if not server.started:
        raise CLIError(f"the server did not start on {a.host}:{a.port} (see the log above)")
    if engine_loop.error:
        print(f"nightjar-rl: error: {engine_loop.error}", file=sys.stderr)
        return 1
    return 0


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def cmd_export(a: argparse.Namespace) -> int:
    from nightjar_rl.io import atomic_write_json
    from nightjar_rl.policy.export import export_schedule, schedule, sensitivity, to_ranges
    from nightjar_rl.policy.resolve import resolve_policy

    if not 1 <= a.max_batch_size <= MAX_EXPORT_BATCH:
        raise CLIError(f"--max-batch-size must be in [1, {MAX_EXPORT_BATCH}], got {a.max_batch_size}")
    if not 0 <= a.acceptance <= 1:
        raise CLIError(f"--acceptance must be in [0, 1], got {a.acceptance}")
    if not (math.isfinite(a.queue_len) and a.queue_len >= 0):
        raise CLIError(f"--queue-len must be a finite number >= 0, got {a.queue_len}")
    if a.num_speculative_tokens is not None and a.num_speculative_tokens < 1:
        raise CLIError(f"--num-speculative-tokens must be >= 1 (a schedule that never speculates needs no "
                       f"speculative config), got {a.num_speculative_tokens}")
    max_k = a.max_k if a.max_k is not None else (1024 if Path(a.policy).is_file() else 8)
    policy = resolve_policy(a.policy, max_k)
    typical = {"acceptance": a.acceptance, "queue_len": a.queue_len}
    ks = schedule(policy, a.max_batch_size, typical)
    result = export_schedule(ks, a.to, a.num_speculative_tokens)
    notes = sensitivity(policy, a.max_batch_size, typical) + result.notes
    text = json.dumps(result.config, indent=1)
    report = sys.stderr if a.out is None else sys.stdout
    print(f"{policy.name}: " + ", ".join(f"bs {lo}-{hi}: k={k}" for lo, hi, k in to_ranges(ks)), file=report)
    for note in notes:
        print(f"note: {note}", file=report)
    if a.out is None:
        print(text)
    else:
        atomic_write_json(a.out, result.config)
        print(f"wrote {a.to} schedule {a.out}")
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    from nightjar_rl.io import atomic_write_json

    if a.keep_host and not a.rescale:
        raise CLIError("--keep-host goes with --rescale PROFILE")
    if a.roofline:
        from nightjar_rl.sim.cli import cmd_profile_roofline

        if a.overhead_ms < 0:
            raise CLIError(f"--overhead-ms must be >= 0, got {a.overhead_ms}")
        profile = cmd_profile_roofline(a)
        name = f"roofline-{a.gpu}-{Path(a.model).stem.removeprefix('random:')}"
        out = Path(a.out) if a.out else DEFAULT_PROFILE_DIR / f"{name}.json"
        atomic_write_json(out, profile)
        print(f"wrote roofline profile {out}")
        return 0
    if a.rescale:
        return _profile_rescale(a)
    if a.anchor_only:
        if a.out is None:
            raise CLIError("profile --anchor-only needs --out FILE.json")
        atomic_write_json(a.out, _anchor_now(a, a.verify_layout))
        print(f"wrote speed anchor {a.out}")
        return 0
    if a.from_steps:
        return _profile_from_steps(a)
    from nightjar_rl.decoding.profiler import profile_hardware
    from nightjar_rl.models import load_model
    from nightjar_rl.stack import engine_speed_anchor, load_draft_model

    for flag, value, low in (("--context", a.context, 1), ("--repeats", a.repeats, 1),
                             ("--overhead-steps", a.overhead_steps, 0), ("--threads", a.threads or 1, 1)):
        if value < low:
            raise CLIError(f"{flag} must be >= {low}, got {value}")
    batch_sizes, tokens = _int_list(a.batch_sizes or MEASURED_BATCH_SIZES, "--batch-sizes"), _int_list(a.tokens, "--tokens")
    contexts = _int_list(a.contexts, "--contexts") if a.contexts else None
    prefill = _int_list(a.prefill_tokens, "--prefill-tokens") if a.prefill_tokens else None
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    timed = _timed_config(a, a.verify_layout)
    target = load_model(a.model, a.dtype, a.device, timed.linears)
    positions = getattr(getattr(target.model, "config", None), "max_position_embeddings", None)
    longest = max([a.context, *(contexts or [])]) + max(tokens)
    if isinstance(positions, int) and longest > positions:
        raise CLIError(f"--context/--contexts plus --tokens reach {longest} positions; {a.model} has {positions}")
    draft = load_draft_model(a.draft, target, a.dtype, a.device, timed.linears) if a.draft else None
    profile = profile_hardware(
        target.model, a.model, batch_sizes, tokens, context=a.context, repeats=a.repeats, draft_model=draft,
        progress=not a.quiet, contexts=contexts, prefill_tokens=prefill, overhead_steps=a.overhead_steps,
        verify_layout=timed.verify_layout, model_forward=timed.model_forward,
    )
    profile["linears"] = timed.linears
    if a.anchor is not None:
        profile["speed_anchor"] = _anchor(a, lambda: engine_speed_anchor(timed, target=target, progress=not a.quiet))
    out = Path(a.out) if a.out else DEFAULT_PROFILE_DIR / f"{a.model.replace('/', '_')}-{profile['device_type']}-{a.dtype}.json"
    atomic_write_json(out, profile)
    print(f"wrote hardware profile {out}")
    return 0


def _profile_from_steps(a: argparse.Namespace) -> int:
    """`profile --from-steps LOG...`: fit the clock model to logged live steps (`nightjar_rl.sim.calibrate`)."""
    from nightjar_rl.hardware import ProfileError
    from nightjar_rl.io import atomic_write_json
    from nightjar_rl.sim.calibrate import CalibrationError, calibrate, read_step_logs

    if a.out is None:
        raise CLIError("profile --from-steps needs --out FILE.json")
    try:
        steps = read_step_logs(a.from_steps)
        result = calibrate(
            steps, holdout=a.holdout, seed=a.seed,
            batch_sizes=_int_list(a.batch_sizes, "--batch-sizes") if a.batch_sizes else None,
            contexts=_int_list(a.contexts, "--contexts") if a.contexts else None,
            fit=a.fit, device=a.device_name, model=a.model, dtype=a.dtype,
        )
    except (CalibrationError, ProfileError) as exc:
        raise CLIError(str(exc)) from None
    if a.anchor is not None:
        result.profile["speed_anchor"] = _anchor(a, lambda: _anchor_now(a, result.profile.get("verify_layout")))
    atomic_write_json(a.out, result.profile)
    print(result.summary())
    print(f"wrote calibrated profile {a.out} (fitted to {len(steps)} logged steps)")
    return 0


def _anchor(a: argparse.Namespace, time_now) -> dict:
    """`--anchor`: the mean of the given anchor files (`--anchor-only`), or `time_now()` without any."""
    from nightjar_rl.hardware import ProfileError, mean_anchor
    from nightjar_rl.io import read_json

    if not a.anchor:
        return time_now()
    try:
        return mean_anchor([read_json(path, "speed anchor", ProfileError) for path in a.anchor])
    except ProfileError as exc:
        raise CLIError(str(exc)) from None


def _timed_config(a: argparse.Namespace, verify_layout: str | None) -> EngineConfig:
    """The engine whose forwards `profile` times: `--model`/`--dtype`/`--device`/`--threads` in
    `verify_layout` (default: the engine's), `--model-forward`, and `--linears` or those that forward runs
    fastest with (vLLM's GEMM for native-vllm)."""
    model_forward = a.model_forward or DEFAULT_MODEL_FORWARD
    return EngineConfig(model=a.model, dtype=a.dtype, device=a.device, threads=a.threads,
                        **({"verify_layout": verify_layout} if verify_layout else {}),
                        model_forward=model_forward, linears=a.linears or linears_for(model_forward))


def _anchor_now(a: argparse.Namespace, verify_layout: str | None, then: dict | None = None) -> dict:
    """The speed anchor of `_timed_config(a, verify_layout)`, timed now; or, given `then`, of the
    forward that anchor was timed on."""
    from nightjar_rl.stack import anchor_engine_config, engine_speed_anchor

    cfg = _timed_config(a, verify_layout)
    return engine_speed_anchor(cfg if then is None else anchor_engine_config(cfg, then), progress=not a.quiet)


def _profile_rescale(a: argparse.Namespace) -> int:
    """`profile --rescale PROFILE --out P.json`: time PROFILE's speed anchor again and write PROFILE with
    every time multiplied by the machine's speed ratio now / then (and today's anchor)."""
    from nightjar_rl.hardware import SPEED_ANCHOR, HardwareProfile, ProfileError, speed_ratio, speed_ratio_by_rows
    from nightjar_rl.io import atomic_write_json

    if a.out is None:
        raise CLIError("profile --rescale needs --out FILE.json")
    given = [flag for flag, value in (("--verify-layout", a.verify_layout), ("--model-forward", a.model_forward),
                                      ("--linears", a.linears), ("--threads", a.threads)) if value]
    if given:
        raise CLIError(f"profile --rescale times the anchor again on the forward it records; drop {', '.join(given)}")
    try:
        profile = HardwareProfile.load(a.rescale)
        then = profile.speed_anchor
        if then is None:
            raise ProfileError(f"{a.rescale} has no speed_anchor: make profiles with --anchor to rescale them")
        if profile.model != a.model:
            raise ProfileError(f"{a.rescale} is a profile of {profile.model!r}; pass --model {profile.model}")
        now = _anchor_now(a, None, then)
        ratio, per_shape = speed_ratio(then, now)
        data = (profile.scaled_forwards(ratio, speed_ratio_by_rows(then, now)) if a.keep_host
                else profile.scaled(ratio)).to_dict()
    except ProfileError as exc:
        raise CLIError(str(exc)) from None
    data[SPEED_ANCHOR] = now
    data["rescaled_from"] = {"profile": str(a.rescale), "ratio": ratio, "per_shape": per_shape, "anchor": then}
    atomic_write_json(a.out, data)
    shapes = ", ".join(f"{k}: {v:.3f}" for k, v in per_shape.items())
    print(f"speed now / when profiled ({then.get('measured', '?')}): {ratio:.3f} (rows x tokens @ context: {shapes})")
    print(f"wrote rescaled profile {a.out}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise CLIError(f"{flag} needs positive integers, got {text!r}")
    return values


def _positive_float(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CLIError(f"{flag} takes a number, got {text!r}") from None
    if not value > 0 or math.isnan(value):
        raise CLIError(f"{flag} must be > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="nightjar-rl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate completions for a prompt file")
    _add_engine_args(g)
    _add_workload_args(g)
    g.add_argument("--out", required=True, help="output JSONL")
    g.add_argument("--num-requests", type=int, default=None, help="requests (a sampling workload's sample size; "
                                                                  "file workloads are cycled)")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="serve a workload and report throughput/latency")
    _add_engine_args(b)
    _add_workload_args(b)
    b.add_argument("--num-requests", type=int, default=None,
                   help="requests: a seeded sample of a sampling workload (sharegpt, humaneval, mix), or cycling "
                        "through a file's prompts")
    b.add_argument("--rate", default=None, help="Poisson arrival rate in requests/s (default: offline, all at once)")
    b.add_argument("--max-concurrency", type=int, default=None, metavar="C",
                   help="closed loop, as vLLM's benchmark_serving: at most C requests in flight, each sent when its "
                        "arrival has passed and a slot is free; its TTFT counts from the send (default: no cap, "
                        "or the --scenario's max_concurrency)")
    b.add_argument("--burstiness", type=float, default=None, metavar="B",
                   help="gamma arrivals at --rate (vLLM's --burstiness): CV^2 of the intervals = 1/B; 1 = Poisson")
    b.add_argument("--arrival-trace", default=None, metavar="CSV",
                   help="replay arrival times from a file (a time column; output token counts cap budgets), "
                        "time-scaled to --rate when given")
    b.add_argument("--out", default=None, help="write the summary JSON here")
    b.add_argument("--run-dir", default=None, help="write summary.json, requests.csv (per request: ids, family, tokens, "
                                                   "TTFT/TPOT/e2e, accepted/drafted, finish reason) and provenance.json")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /metrics)")
    _add_engine_args(s)
    _add_policy_args(s)
    _add_backend_arg(s)
    add_arguments(s.add_argument_group("server"), ServerConfig)
    s.add_argument("--quiet", action="store_true", help="no per-request access log")
    s.set_defaults(func=cmd_serve)

    ex = sub.add_parser("export", help="a policy's k-by-batch-size schedule as a vLLM / TensorRT-LLM / SGLang config")
    ex.add_argument("policy", metavar="POLICY", help="policy artifact or spec (as --policy)")
    ex.add_argument("--to", required=True, choices=["vllm", "trtllm", "sglang"])
    ex.add_argument("--out", default=None, help="write the config here (default: stdout)")
    ex.add_argument("--max-batch-size", type=int, default=256, help="largest batch size in the schedule")
    ex.add_argument("--max-k", type=int, default=None, help="max_k for a spec (default 8; artifacts keep theirs)")
    ex.add_argument("--num-speculative-tokens", type=int, default=None, help="vllm: the cap K (default: the schedule's max)")
    ex.add_argument("--acceptance", type=float, default=0.7, help="typical per-token acceptance the schedule is read at")
    ex.add_argument("--queue-len", type=float, default=0.0, help="typical waiting queue the schedule is read at")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("profile", help="time verify/draft steps over batch sizes; write a hardware profile")
    pr.add_argument("--model", default="smollm2-135m", help="model to time, or with --roofline a shape (llama-3-8b, ...) or shape JSON")
    pr.add_argument("--draft", default=None, help="draft model to time (name/path or early-exit:LAYERS; with --roofline a shape)")
    pr.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    pr.add_argument("--device", default=None)
    pr.add_argument("--batch-sizes", default=None,
                    help=f"batch sizes to time (default {MEASURED_BATCH_SIZES}); with --from-steps, the profile's grid "
                         "(default: the range the logs cover)")
    pr.add_argument("--tokens", default="1,2,3,5,9", help="tokens per row scored (k+1)")
    pr.add_argument("--context", type=int, default=128, help="cached tokens per row")
    pr.add_argument("--repeats", type=int, default=3)
    pr.add_argument("--contexts", default=None, help="also time verify at these cached-token counts (e.g. 64,256)")
    pr.add_argument("--prefill-tokens", default=None, help="time prefill passes of these lengths (e.g. 32,128,512)")
    pr.add_argument("--overhead-steps", type=int, default=0, help="measure per-step engine overhead over N k=0 steps")
    pr.add_argument("--threads", type=int, default=None)
    pr.add_argument("--verify-layout", default=None, choices=list(STEP_LAYOUTS),
                    help="the engine's verify_layout whose forwards are timed (default: the engine's default; "
                         "mixed times its packed forwards); packed also times per-row steps "
                         "(verify_ms_half_drafted)")
    pr.add_argument("--model-forward", default=None, choices=list(MODEL_FORWARDS),
                    help="the decoder forward timed, in the profile and the speed anchor (default: the engine's "
                         "default; native-vllm: vLLM's CPU kernels, the machine's speed as vLLM sees it)")
    pr.add_argument("--linears", default=None, choices=list(LINEARS),
                    help="the target's linear layers when timing (default: those --model-forward runs fastest "
                         "with: vllm for native-vllm, else packed)")
    pr.add_argument("--out", default=None, help=f"output JSON (default: {DEFAULT_PROFILE_DIR}/<model>-<device>-<dtype>.json "
                                               "under the working directory)")
    pr.add_argument("--quiet", action="store_true")
    pr.add_argument("--from-steps", nargs="+", default=None, metavar="LOG",
                    help="fit the profile to live step logs (--log-steps files) instead of timing synthetic batches")
    pr.add_argument("--holdout", type=float, default=0.2, help="with --from-steps: share of steps held out to report the fit error")
    pr.add_argument("--seed", type=int, default=0, help="with --from-steps: seed of the held-out split")
    pr.add_argument("--device-name", default="unknown", help="with --from-steps: the machine the logs come from")
    pr.add_argument("--fit", default="auto", choices=["auto", "parts", "wall"],
                    help="with --from-steps: parts (verify, prefill, overhead timed apart: nightjar-rl's engine), wall "
                         "(whole steps only: vLLM; the profile is for verify_layout mixed), auto: by the log")
    pr.add_argument("--anchor", nargs="*", default=None, metavar="ANCHOR",
                    help="also store a speed anchor in the profile (a few fixed forwards of --model, seconds), so that "
                         "--rescale can price it at the machine's speed on another day: timed now, or the mean of "
                         "ANCHOR files (--anchor-only) timed around the step logs")
    pr.add_argument("--anchor-only", action="store_true", help="time only the speed anchor, write it to --out")
    pr.add_argument("--rescale", default=None, metavar="PROFILE",
                    help="time PROFILE's speed anchor again and write PROFILE scaled by the speed ratio now/then "
                         "to --out (this machine drifts by more than 5%% from hour to hour)")
    pr.add_argument("--keep-host", action="store_true",
                    help="with --rescale: scale only the profile's forwards, each by the anchor's ratio at its "
                         "rows, and keep its host work (the step price beyond the anchor's bare forward; per-step "
                         "overhead): on slow days the engine's steps slowed less than the anchor's forwards")
    add_roofline_args(pr)
    pr.set_defaults(func=cmd_profile)

    add_experiment_parser(sub)
    add_train_parser(sub)
    add_datastore_parser(sub)
    add_trace_parser(sub)
    return parser


# flags naming output paths, checked before any command starts (attribute, flag, is a folder); --out-dir
# is unused when resuming a run folder
_OUTPUTS = (("out", "--out", False), ("log_steps", "--log-steps", False), ("save_policy", "--save-policy", False),
            ("out_dir", "--out-dir", True), ("run_dir", "--run-dir", True))


def main(argv: list[str] | None = None) -> int:
    from nightjar_rl.io import check_writable
    from nightjar_rl.serving import WorkloadError

    args = build_parser().parse_args(argv)
    try:
        for attr, flag, folder in _OUTPUTS:
            if getattr(args, attr, None) and not (attr == "out_dir" and getattr(args, "resume", None)):
                check_writable(getattr(args, attr), flag, folder)
        return int(args.func(args) or 0)
    except (CLIError, WorkloadError, ValueError, FileNotFoundError) as exc:  # ModelLoadError is a ValueError
        print(f"nightjar-rl: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nightjar-rl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
