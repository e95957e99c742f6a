"""A training run's metrics.jsonl: a new run starts it empty, a resumed run keeps it up to the resumed step."""

from __future__ import annotations

import json

from foscu.engine.tracking import MetricsLog, progress_bar


def _lines(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_log_keeps_the_steps_up_to_the_resume_and_a_new_one_starts_empty(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (2, 4, 6):
        log.log(step, {"loss": step / 10})
    log.close()
    assert _lines(tmp_path) == [{"step": 2, "loss": 0.2}, {"step": 4, "loss": 0.4}, {"step": 6, "loss": 0.6}]
    resumed = MetricsLog(tmp_path, resume_step=4)
    assert _lines(tmp_path) == [{"step": 2, "loss": 0.2}, {"step": 4, "loss": 0.4}]
    resumed.log(6, {"loss": 0.5})
    resumed.close()
    assert _lines(tmp_path) == [{"step": 2, "loss": 0.2}, {"step": 4, "loss": 0.4}, {"step": 6, "loss": 0.5}]
    MetricsLog(tmp_path).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_line_cut_by_a_kill_ends_what_a_resume_keeps(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 2, "loss": 1.0}\n{"step": 4, "lo\n{"step": 3, "loss": 0.5}\n'
    )
    MetricsLog(tmp_path, resume_step=6).close()
    assert _lines(tmp_path) == [{"step": 2, "loss": 1.0}]


def test_a_disabled_log_and_progress_bar_write_nothing(tmp_path, capsys):
    log = MetricsLog(tmp_path, enabled=False)  # ranks other than 0
    log.log(1, {"loss": 1.0})
    log.close()
    assert list(tmp_path.iterdir()) == []
    with progress_bar("training", 3, enabled=False) as advance:
        advance(1, loss=0.5)
    assert capsys.readouterr() == ("", "")
