"""Cost of one decision of an exported neural policy (`mlp` artifact): `policy.predict(obs)`.

Times `predict(obs, deterministic=True)` one observation at a time, as the runtime calls it (the
observation is built by the driver either way, so it is not included). Observations come from the
tiny simulator under random k, so inputs look like real ones. Without `--artifact`, a PPO-shaped
network (64x64 tanh, VecNormalize statistics, max_k 8) with random weights is written to a temporary
folder and loaded back through `load_policy`. With `--sb3 CHECKPOINT.zip`, SB3's own
`model.predict` of that checkpoint is timed beside it for reference (needs stable-baselines3).

Target (issue 9): under 50 microseconds per decision on the project's CPU. Run on a quiet machine:

    python experiments/bench_policy_decision.py --decisions 20000 --repeats 5
    python experiments/bench_policy_decision.py --artifact runs/<run>/policies/ppo.json
    python experiments/bench_policy_decision.py --quick --out-dir /tmp/bench_policy   # seconds (tests)

With --out-dir the result is also written to <out-dir>/result.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import quickmode  # same folder

from nightjar_rl.contracts.observation import obs_size
from nightjar_rl.io import atomic_write_json
from nightjar_rl.policy import MLPPolicy, load_policy, save_policy

QUICK = {"decisions": 200, "repeats": 1}


def random_ppo_policy(max_k: int, folder: Path, hidden: int = 64) -> MLPPolicy:
    """A PPO-shaped artifact (linear-tanh-linear-tanh-linear) with random weights, saved and reloaded."""
    rng = np.random.default_rng(0)
    n = obs_size(max_k)
    tensors = {"layers.0.weight": rng.normal(0, 0.3, (hidden, n)), "layers.0.bias": np.zeros(hidden),
               "layers.2.weight": rng.normal(0, 0.3, (hidden, hidden)), "layers.2.bias": np.zeros(hidden),
               "layers.4.weight": rng.normal(0, 0.3, (max_k + 1, hidden)), "layers.4.bias": np.zeros(max_k + 1)}
    norm = {"mean": rng.uniform(0, 4, n).tolist(), "var": rng.uniform(0.5, 9, n).tolist(), "clip": 10.0, "epsilon": 1e-8}
    policy = MLPPolicy(max_k, weights=tensors, layers=["linear", "tanh", "linear", "tanh", "linear"],
                       normalization=norm, provenance={"algorithm": "PPO (random weights, benchmark)"})
    return load_policy(save_policy(policy, folder / "bench.json"))


def observations(max_k: int, count: int) -> np.ndarray:
    """Observations of the tiny simulator (random k, light to heavy load), padded/trimmed to max_k."""
    from nightjar_rl.env.spec_decode_env import SpecDecodeEnv

    env = SpecDecodeEnv("tiny-sim")
    rng = np.random.default_rng(0)
    out, episode = [], 0
    while len(out) < count:
        obs, _ = env.reset(seed=episode, options={"rate": [1, 5, 50, 500][episode % 4]})
        episode += 1
        done = False
        while not done and len(out) < count:
            out.append(obs)
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.max_k + 1)))
            done = terminated or truncated
    data = np.array(out, dtype=np.float32)
    size = obs_size(max_k)
    if data.shape[1] < size:
        data = np.pad(data, ((0, 0), (0, size - data.shape[1])))
    return np.ascontiguousarray(data[:, :size])


def time_per_call(fn, inputs: np.ndarray, repeats: int) -> list[float]:
    """Microseconds per call, one value per repeat (each repeat calls fn on every input once)."""
    fn(inputs[0])  # warm up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for o in inputs:
            fn(o)
        out.append((time.perf_counter() - t0) / len(inputs) * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=None, help="an mlp policy artifact (default: a random PPO-shaped one)")
    ap.add_argument("--max-k", type=int, default=8, help="max_k of the random policy (default 8)")
    ap.add_argument("--decisions", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sb3", default=None, metavar="CHECKPOINT.zip", help="also time SB3's predict of this checkpoint")
    ap.add_argument("--out-dir", default=None, help="also write the result to OUT_DIR/result.json")
    args = quickmode.parse_args(ap, QUICK)

    with tempfile.TemporaryDirectory() as tmp:
        policy = load_policy(args.artifact) if args.artifact else random_ppo_policy(args.max_k, Path(tmp))
    if not isinstance(policy, MLPPolicy):
        raise SystemExit(f"{args.artifact}: type {policy.type_name!r}, expected an mlp artifact")
    obs = observations(policy.max_k, args.decisions)
    ours = time_per_call(lambda o: policy.predict(o, deterministic=True), obs, args.repeats)
    result = {"policy": policy.name, "layers": policy.layers, "decisions": len(obs), "repeats": args.repeats,
              "predict_us_median": statistics.median(ours), "predict_us_min": min(ours), "target_us": 50.0}
    if args.sb3:
        import stable_baselines3
        import torch

        torch.set_num_threads(1)
        algo = json.loads(Path(args.artifact).read_text())["params"]["provenance"]["algorithm"] if args.artifact else "PPO"
        model = getattr(stable_baselines3, algo).load(args.sb3, device="cpu")
        sb3 = time_per_call(lambda o: model.predict(o, deterministic=True), obs, args.repeats)
        result.update(sb3_predict_us_median=statistics.median(sb3), speedup_vs_sb3=statistics.median(sb3) / result[
            "predict_us_median"])
    result["meets_target"] = result["predict_us_median"] < result["target_us"]
    print(json.dumps(result, indent=1))
    if args.out_dir:
        atomic_write_json(Path(args.out_dir) / "result.json", result)


if __name__ == "__main__":
    main()
