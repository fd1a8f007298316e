"""TableAppender: batched atomic appends (one rewrite per table per interval, and on close or error)."""

import pandas as pd
import pytest

from nightjar_rl.env import recorder
from nightjar_rl.env.recorder import TableAppender, read_table


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rows(*values) -> pd.DataFrame:
    return pd.DataFrame({"x": list(values)})


def test_rows_are_written_once_per_interval_and_on_close(tmp_path):
    clock, path = FakeClock(), tmp_path / "t.csv"
    with TableAppender(every_s=5.0, clock=clock) as tables:
        for t, v in ((1.0, 1), (2.0, 2), (4.9, 3)):
            clock.now = t
            tables.add(path, rows(v))
        assert not path.exists()  # nothing due before 5 s
        clock.now = 5.0
        tables.add(path, rows(4))
        assert list(read_table(path)["x"]) == [1, 2, 3, 4]
        clock.now = 9.0  # 4 s after the last flush: kept back
        tables.add(path, rows(5))
        assert list(read_table(path)["x"]) == [1, 2, 3, 4]
    assert list(read_table(path)["x"]) == [1, 2, 3, 4, 5]


def test_an_interrupt_still_writes_every_table_in_first_fed_order(tmp_path, monkeypatch):
    details, done = tmp_path / "details.csv", tmp_path / "done.csv"
    order = []
    real = recorder.append_rows
    monkeypatch.setattr(recorder, "append_rows", lambda p, r: (order.append(p.name), real(p, r))[1])
    with pytest.raises(KeyboardInterrupt), TableAppender(every_s=60.0, clock=FakeClock()) as tables:
        tables.add(details, pd.DataFrame({"k": []}))  # an empty part keeps the columns
        tables.add(done, rows(1))
        tables.add(details, pd.DataFrame({"k": [7, 8]}))
        raise KeyboardInterrupt
    assert order == ["details.csv", "done.csv"]
    assert list(read_table(details)["k"]) == [7, 8] and list(read_table(done)["x"]) == [1]


def test_it_appends_to_an_existing_table(tmp_path):
    path = tmp_path / "t.csv"
    rows(1, 2).to_csv(path, index=False)
    with TableAppender(clock=FakeClock()) as tables:
        tables.add(path, rows(3))
    assert list(read_table(path)["x"]) == [1, 2, 3]


def test_append_rows_replacing_a_unit_of_work_never_duplicates_it(tmp_path):
    """train.csv: a learner retrained after a kill between its log append and its policy save."""
    path = tmp_path / "train.csv"
    log = pd.DataFrame({"policy": ["a", "a"], "replicate": [0, 0], "episode": [0, 1]})
    other = pd.DataFrame({"policy": ["a", "b"], "replicate": [1, 0], "episode": [0, 0]})
    recorder.append_rows(path, other)
    recorder.append_rows(path, log, replace={"policy": "a", "replicate": 0})
    recorder.append_rows(path, log, replace={"policy": "a", "replicate": 0})  # the retrain
    table = read_table(path)
    assert len(table) == 4 and table[(table.policy == "a") & (table.replicate == 0)].episode.tolist() == [0, 1]
