import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

EXPERIMENTS = ["rate", "prune", "subset", "baseline", "pipeline"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose(make_cfg, name):
    cfg = make_cfg(f"+experiment={name}")
    assert cfg.stage in ("rate", "prune", "train", "pipeline")
    assert cfg.task_name == name


def test_smoke_overrides_survive_experiment(make_cfg):
    cfg = make_cfg("+experiment=pipeline", "debug=smoke")
    assert cfg.data.limit_train == 512 and cfg.train.max_steps == 4


def test_models_instantiate(make_cfg):
    cfg = make_cfg()
    model = instantiate(cfg.bilevel)
    assert model.automatic_optimization is False
    assert len(model.configure_optimizers()) == 2
    assert instantiate(cfg.model).unet.config.sample_size == cfg.data.resolution


def test_unknown_key_named(make_cfg):
    with pytest.raises(ConfigCompositionException, match="keep_ratoi"):
        make_cfg("keep_ratoi=0.3")
