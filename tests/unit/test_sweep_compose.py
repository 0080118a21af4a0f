"""A sweep composes each distinct set of group choices once and applies each point's values to a copy
(hpcrun.config.compose._hydra_compose): every point's config must be the one composing it alone gives."""

import pytest

from hpcrun.config.compose import compose, to_container
from hpcrun.errors import ConfigError
from hpcrun.launch.sweep import expand

SWEEP = ["+experiment=tiny_llama,lora_sft_chat", "cluster=slurm,local", "train.lr=1e-4,3e-3", "train.seed=range(0,3)",
         "cluster.time=30m,2:00:00", "+cluster.sbatch_extra.comment=a,b", "model.lora.r=0,8", "data.seq_len=64"]


def test_each_points_config_is_the_one_composing_it_alone_gives(monkeypatch):
    monkeypatch.setenv("USER", "alice")
    points = expand(SWEEP)
    assert len(points) == 2 * 2 * 2 * 3 * 2 * 2 * 2
    bases: dict = {}
    sample = points[::7] + points[-1:]
    for overrides in sample:
        assert to_container(compose(overrides, bases=bases)) == to_container(compose(overrides)), overrides
    assert len(bases) == len({(p[0], p[1]) for p in sample})  # one composition per experiment and cluster pair


def test_a_bad_value_in_one_point_is_the_same_one_line_error_as_alone():
    bases: dict = {}
    compose(["+experiment=tiny_llama", "train.lr=1e-3"], bases=bases)
    for bad in (["+experiment=tiny_llama", "train.lr=abc"], ["+experiment=tiny_llama", "cluster.time=90mins"],
                ["+experiment=tiny_llama", "train.max_step=3"]):
        with pytest.raises(ConfigError) as fast:
            compose(bad, bases=bases)
        with pytest.raises(ConfigError) as alone:
            compose(bad)
        assert str(fast.value) == str(alone.value)
