"""Atomic writes (`nightjar_rl/io.py`): complete or absent, and readable as a plain `open` would leave them."""

from __future__ import annotations

import json
import os
import stat

import pytest

from nightjar_rl.io import atomic_write_json, atomic_write_text, atomic_writer, process_umask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_an_atomic_write_gets_the_mode_open_would_give_it(tmp_path, umask, mode):
    """A run folder's summary.txt or config.yaml was 0600 (the temp file's mode) while its CSVs, written
    by plain `open`, were 0644: other users of a shared machine could not read the summary."""
    old = os.umask(umask)
    try:
        assert process_umask() == umask
        text = atomic_write_text(tmp_path / "summary.txt", "ok\n")
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("ok\n")
        (tmp_path / "old.json").write_text("{}")
        os.chmod(tmp_path / "old.json", 0o640)
        replaced = atomic_write_json(tmp_path / "old.json", {"a": 1})  # a rewrite keeps the file's own mode
    finally:
        os.umask(old)
    assert stat.S_IMODE(text.stat().st_mode) == mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert stat.S_IMODE(replaced.stat().st_mode) == 0o640 and json.loads(replaced.read_text()) == {"a": 1}


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("before")
    with pytest.raises(RuntimeError), atomic_writer(tmp_path / "keep.txt") as fh:
        fh.write("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "keep.txt").read_text() == "before" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_malformed_yaml_is_one_line_that_says_where(tmp_path):
    from nightjar_rl.env.scenario import ScenarioError, load_scenario
    from nightjar_rl.experiments.config import ExperimentError, load_experiment

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmax_k: [1, 2\nfoo: 3\n")
    for load, error, what in ((load_scenario, ScenarioError, "scenario"), (load_experiment, ExperimentError, "experiment")):
        with pytest.raises(error) as err:
            load(bad)
        assert str(err.value) == f"{what} {bad}: not valid YAML (expected ',' or ']', but got ':' at line 3, column 4)"
    bad.write_bytes(b"name: \xff\n")
    with pytest.raises(ScenarioError, match="not valid UTF-8"):
        load_scenario(bad)
