"""`hpcrun results SWEEP`: one row per point, its swept values, state, step and final metrics, best first; on a
hand-made sweep directory (the sweep tests on the dev cluster make real ones: tests/integration/test_sweep_slurm.py)."""

import csv
import io
import json

import pytest

from hpcrun.cli import main
from hpcrun.observe.results import final_metrics, ranked, results, sort_metric, swept_values


def _sweep(tmp_path, losses):
    """A sweep of train.lr x train.seed whose points logged ``losses`` ({(lr, seed): (loss, eval_loss or None)})."""
    sweep = tmp_path / "sweeps" / "s"
    sweep.mkdir(parents=True)
    points = []
    for (lr, seed), (loss, eval_loss) in losses.items():
        overrides = ["+experiment=tiny_llama", "cluster=slurm", f"train.lr={lr}", f"train.seed={seed}"]
        run = tmp_path / "runs" / f"lr{lr}-s{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("run: {name: tiny}\ncluster: {name: slurm}\n")
        (run / ".hpcrun-run").write_text("")
        (run / "state.json").write_text(json.dumps({"status": "completed", "reason": "done"}))
        records = [{"step": 5, "time": 1.0, "loss": loss + 1, "learning_rate": lr},
                   {"step": 10, "time": 2.0, "loss": loss, "grad_norm": 0.5, "learning_rate": lr / 2}]
        if eval_loss is not None:
            records.append({"step": 10, "time": 3.0, "eval_loss": eval_loss, "epoch": 1.0})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"torn": ')
        (run / "ledger.jsonl").write_text(json.dumps({"event": "planned", "t": 1.0, "start": 1, "steps": 10}) + "\n"
                                          + json.dumps({"event": "progress", "t": 2.0, "start": 1, "step": 10}) + "\n")
        points.append({"overrides": overrides, "run_dir": str(run)})
    (sweep / "sweep.json").write_text(json.dumps({"command": "hpcrun -m ...", "points": points, "arrays": []}))
    return sweep


LOSSES = {(0.0001, 0): (2.5, 2.7), (0.0003, 0): (2.1, 2.2), (0.0001, 1): (2.4, None), (0.0003, 1): (2.0, 2.3)}


def test_each_point_shows_its_swept_values_and_last_metrics_best_first(tmp_path):
    keys, rows = results(_sweep(tmp_path, LOSSES))
    assert keys == ["train.lr", "train.seed"]  # the experiment and cluster do not vary: not columns
    assert rows[0].values == {"train.lr": "0.0001", "train.seed": "0"}
    assert rows[0].metrics == {"loss": 2.5, "learning_rate": 0.00005, "grad_norm": 0.5, "eval_loss": 2.7}
    assert (rows[0].state, rows[0].step, rows[0].max_steps) == ("COMPLETED", 10, 10)
    metric = sort_metric(rows, None)
    assert metric == "eval_loss"
    best = ranked(rows, metric)
    assert [r.metrics.get("eval_loss") for r in best] == [2.2, 2.3, 2.7, None]  # no eval loss: last
    assert [r.metrics["loss"] for r in ranked(rows, "loss", descending=True)] == [2.5, 2.4, 2.1, 2.0]
    with pytest.raises(Exception, match="--sort accuracy: no point logged it; logged: eval_loss, grad_norm"):
        sort_metric(rows, "accuracy")


def test_the_command_prints_a_table_json_csv_and_draws_the_metric_against_a_swept_value(tmp_path, capsys):
    sweep = _sweep(tmp_path, LOSSES)
    assert main(["results", str(sweep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "train.lr", "train.seed", "STATE", "STEP", "EVAL_LOSS", "LOSS"]
    assert lines[1].split() == ["1", "0.0003", "0", "COMPLETED", "10/10", "2.2", "2.1"]
    assert lines[4].split() == ["4", "0.0001", "1", "COMPLETED", "10/10", "-", "2.4"]

    assert main(["results", str(sweep), "--sort", "loss", "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["loss"] for row in table] == ["2.0", "2.1", "2.4", "2.5"]
    assert set(table[0]) >= {"train.lr", "train.seed", "state", "eval_loss", "grad_norm", "learning_rate", "run_dir"}

    assert main(["results", str(sweep), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sorted_by"] == "eval_loss" and data["swept"] == ["train.lr", "train.seed"]

    png = tmp_path / "lr.png"
    assert main(["results", str(sweep), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "eval_loss against train.lr" in capsys.readouterr().err
    assert main(["results", str(sweep), "--plot", str(png), "--x", "model.lr"]) == 2  # one line, naming the key
    said = capsys.readouterr()
    assert "--x model.lr: not a key this sweep varies (train.lr, train.seed)" in said.err
    assert said.out == ""  # the error alone, not the table before it


def test_a_run_directory_is_not_a_sweep_and_metrics_skip_what_is_not_a_number(tmp_path, capsys):
    assert main(["results", str(tmp_path)]) == 2
    assert "is not a sweep directory" in capsys.readouterr().err
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": "nan", "note": "x", "ok": true, "acc": 0.5}\n')
    metrics = final_metrics(run)
    assert sorted(metrics) == ["acc", "loss"] and metrics["acc"] == 0.5 and metrics["loss"] != metrics["loss"]  # NaN
    assert swept_values([["a=1", "b=2"], ["a=1", "b=3"]]) == (["b"], [{"b": "2"}, {"b": "3"}])


def _diverged(tmp_path):
    """LOSSES plus a point whose lr made it diverge: HF logged loss 0.0 (its NaN filter), grad_norm and eval_loss
    NaN, as on the dev cluster with train.lr=1e10."""
    sweep = _sweep(tmp_path, {**LOSSES, (1e10, 0): (0.0, None)})
    run = tmp_path / "runs" / "lr10000000000.0-s0"
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "time": 1.0, "loss": 5.7, "grad_norm": 3.419}\n'
        '{"step": 10, "time": 2.0, "loss": 0.0, "grad_norm": NaN, "fp_overflow": Infinity}\n'
        '{"step": 10, "time": 3.0, "eval_loss": NaN}\n')
    return sweep


def test_a_diverged_point_shows_its_last_values_nan_and_inf_and_never_ranks_best(tmp_path, capsys):
    import math

    keys, rows = results(_diverged(tmp_path))
    bad = rows[-1]
    assert math.isnan(bad.metrics["grad_norm"]) and math.isnan(bad.metrics["eval_loss"])  # the last, not step 1's
    assert bad.metrics["fp_overflow"] == float("inf") and bad.metrics["loss"] == 0.0
    for metric in ("loss", "eval_loss", "grad_norm"):
        for descending in (False, True):
            order = ranked(rows, metric, descending)
            assert order[-1] is bad or (order[-2] is bad and metric not in order[-1].metrics), (metric, descending)

    assert main(["results", str(tmp_path / "sweeps" / "s"), "--sort", "loss"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].split() == ["5", "10000000000.0", "0", "COMPLETED", "10/10", "0", "nan"]  # LOSS, then EVAL_LOSS
    assert main(["results", str(tmp_path / "sweeps" / "s"), "--json"]) == 0
    points = json.loads(capsys.readouterr().out)["points"]  # strict JSON: no bare NaN
    point = next(p for p in points if p["run_dir"].endswith("lr10000000000.0-s0"))
    assert point["metrics"]["eval_loss"] == "nan" and point["metrics"]["fp_overflow"] == "inf"
    assert main(["results", str(tmp_path / "sweeps" / "s"), "--csv"]) == 0
    row = next(r for r in csv.DictReader(io.StringIO(capsys.readouterr().out)) if r["train.lr"] == "10000000000.0")
    assert (row["eval_loss"], row["grad_norm"], row["fp_overflow"], row["loss"]) == ("nan", "nan", "inf", "0.0")
