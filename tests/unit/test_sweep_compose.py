"""A sweep's points are composed by hpcrun.config.points.PointComposer: the first point of each shape in full, the
others by setting their values on a copy. Every point's config, and every error, must be the one composing that
point alone gives."""

import textwrap

import pytest
from omegaconf import OmegaConf

from hpcrun.config.compose import available, compose, search_dirs, to_container
from hpcrun.config.points import PointComposer
from hpcrun.errors import ConfigError
from hpcrun.launch.sweep import expand
from hpcrun.rundir.create import config_yaml

SWEEP = ["+experiment=tiny_llama,lora_sft_chat", "cluster=slurm,local", "train.lr=1e-4,3e-3", "train.seed=range(0,3)",
         "cluster.time=30m,2:00:00", "+cluster.sbatch_extra.comment=a,b", "model.lora.r=0,8", "data.seq_len=64"]


def _same_as_alone(composer, points, **kwargs):
    for overrides in points:
        assert to_container(composer.compose(overrides)) == to_container(compose(overrides, **kwargs)), overrides


def test_each_points_config_is_the_one_composing_it_alone_gives(monkeypatch):
    monkeypatch.setenv("USER", "alice")
    points = expand(SWEEP)
    assert len(points) == 2 * 2 * 2 * 3 * 2 * 2 * 2
    composer = PointComposer()
    _same_as_alone(composer, points[::7] + points[-1:])
    # one full composition per shape (experiment and cluster), and those shapes do take the quick way
    assert len(composer.templates) == 4
    assert all(t is not None for t in composer.templates.values())


def test_values_set_on_a_copy_are_converted_as_composing_converts_them():
    composer = PointComposer()
    base = ["+experiment=tiny_llama", "cluster=slurm"]
    composer.compose(base + ["train.lr=1e-4", "train.max_steps=10", "run.name=a", "model.lora.r=0"])
    cfg = composer.compose(base + ["train.lr=1", "train.max_steps=20", "run.name=7", "model.lora.r=8"])
    assert (cfg.train.lr, type(cfg.train.lr)) == (1.0, float)
    assert cfg.run.name == "7" and cfg.model.lora.r == 8 and cfg.train.max_steps == 20
    assert cfg.run.dir.endswith("/7/model.lora.r=8,train.lr=1,train.max_steps=20")  # run.dir follows name and id
    assert to_container(cfg) == to_container(compose(base + ["train.lr=1", "train.max_steps=20", "run.name=7",
                                                             "model.lora.r=8"]))


def test_interpolations_that_read_a_swept_value_follow_it(tmp_path):
    """A user's experiment whose run name and a task setting are built from swept values."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        run:
          name: lr${train.lr}-s${train.seed}
        train:
          max_steps: 5
        data:
          tokenizer: ${run.dir}/tok
        """))
    points = expand(["+experiment=mine", "train.lr=1e-4,3e-4", "train.seed=0,1"])
    composer = PointComposer(cwd=tmp_path)
    _same_as_alone(composer, points, cwd=tmp_path)
    (template,) = composer.templates.values()
    assert template is not None and {k for k, _, _ in template.dependent} >= {"run.name", "run.dir",
                                                                             "data.tokenizer"}
    last = composer.compose(points[-1])
    assert last.run.name == "lr0.0003-s1"
    assert last.data.tokenizer == "runs/lr0.0003-s1/train.lr=0.0003,train.seed=1/tok"  # run.dir as written
    assert last.run.dir == str(tmp_path / "runs/lr0.0003-s1/train.lr=0.0003,train.seed=1")  # made absolute after


def test_a_bad_value_in_one_point_is_the_same_one_line_error_as_alone():
    composer = PointComposer()
    composer.compose(["+experiment=tiny_llama", "train.lr=1e-3"])
    composer.compose(["+experiment=tiny_llama", "cluster.time=1h"])
    for bad in (["+experiment=tiny_llama", "train.lr=abc"], ["+experiment=tiny_llama", "cluster.time=90mins"],
                ["+experiment=tiny_llama", "train.lr=-1"], ["+experiment=tiny_llama", "train.max_step=3"]):
        with pytest.raises(ConfigError) as fast:
            composer.compose(bad)
        with pytest.raises(ConfigError) as alone:
            compose(bad)
        assert str(fast.value) == str(alone.value)


def test_points_share_nothing_mutable():
    composer = PointComposer()
    a = composer.compose(["+experiment=tiny_llama", "train.seed=0"])
    b = composer.compose(["+experiment=tiny_llama", "train.seed=1"])
    b.cluster.sbatch_extra["x"] = "y"
    b.train.seed = 5
    assert "x" not in a.cluster.sbatch_extra and a.train.seed == 0


def test_config_yaml_is_what_omegaconf_writes(monkeypatch):
    """config.yaml is written section by section with libyaml (a sweep writes a thousand): the text must be
    OmegaConf.to_yaml's, so that strings that look like numbers or booleans stay strings when read back."""
    monkeypatch.setenv("USER", "alice")
    odd = ["run.name='a: b \"c\" é 1e-4 '", "+cluster.sbatch_extra.comment=true", "+cluster.sbatch_extra.x='1.5'",
           "+cluster.sbatch_extra.y='null'"]
    for experiment in available("experiment", search_dirs()):
        for cluster in ("local", "slurm", "greene"):
            cfg = compose([f"+experiment={experiment}", f"cluster={cluster}", *odd])
            text = config_yaml(cfg)
            assert text == OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))), (experiment, cluster)
            assert OmegaConf.to_container(OmegaConf.create(text)) == to_container(cfg)


def test_what_the_quick_way_cannot_follow_is_composed_in_full_and_comes_out_the_same(tmp_path):
    """A relative reference, a resolver reading a swept key, a point's literal where the first point had an
    interpolation, a run.id set by hand: each gives composing's own config (or its own refusal)."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "odd.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        train:
          weight_decay: ${.lr}
          max_grad_norm: ${oc.select:train.lr,1.0}
        """))
    _same_as_alone(PointComposer(cwd=tmp_path), expand(["+experiment=odd", "train.lr=0.1,0.2"]), cwd=tmp_path)
    points = [["+experiment=tiny_llama", "train.lr=0.1", "train.weight_decay=${train.lr}"],
              ["+experiment=tiny_llama", "train.lr=0.2", "train.weight_decay=0.5"]]
    _same_as_alone(PointComposer(cwd=tmp_path), points, cwd=tmp_path)
    composer = PointComposer(cwd=tmp_path)
    ids = {composer.compose(p).run.id for p in expand(["+experiment=tiny_llama", "run.id=mine", "train.lr=0.1,0.2"])}
    assert ids == {"mine"}
