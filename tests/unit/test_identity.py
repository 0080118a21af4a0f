from hpcrun.config.identity import run_id, training_differences


def test_the_run_id_is_the_sorted_training_overrides_without_launcher_keys():
    a = run_id(["+experiment=x", "train.seed=1", "train.lr=3e-4", "cluster=greene", "cluster.time=2:00:00"])
    b = run_id(["train.lr=3e-4", "cluster.partition=gpu", "train.seed=1", "+experiment=x", "checkpoint.save_every=5m"])
    assert a == b == "train.lr=0.0003,train.seed=1"  # values written as Hydra's sweeper writes them
    assert run_id(["+experiment=x", "cluster=slurm", "run.max_requeues=3"]) == "default"


def test_the_run_id_is_a_safe_folder_name_even_for_odd_or_long_values():
    odd = run_id(["data.corpus=/data/my text/$(x)"])
    assert "/" not in odd and " " not in odd and "$" not in odd
    long = run_id([f"train.k{i}={i}" for i in range(50)])
    assert len(long) <= 120 and long != run_id([f"train.k{i}={i}" for i in range(49)])


def test_a_task_of_ones_own_is_identified_by_its_own_keys():
    ids = run_id(["task._target_=mytask.train", "+mytask.width=7", "cluster=local", "checkpoint.save_every=5m"])
    assert ids == "mytask.width=7,task._target_=mytask.train"  # "+" added a key; the key is what counts
    assert run_id(["+experiment=x", "+mytask.width=7"]) == run_id(["mytask.width=7", "+experiment=x"])


def test_only_training_keys_count_as_a_different_run():
    saved = {"train": {"lr": 1e-3}, "cluster": {"time": "1:00:00"}, "run": {"max_requeues": 2}}
    assert training_differences(saved, {"train": {"lr": 1e-3}, "cluster": {"time": "48:00:00"}, "run": {}}) == []
    assert training_differences(saved, {"train": {"lr": 3e-4}, "cluster": {}}) == ["train.lr: 0.001 -> 0.0003"]
    # A task's own sections count like the built-in task's.
    assert training_differences({"mytask": {"width": 7}}, {"mytask": {"width": 8}}) == ["mytask.width: 7 -> 8"]
