import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate


def test_smoke_overrides_survive_experiment(make_cfg):
    cfg = make_cfg("+experiment=pipeline", "debug=smoke")
    assert cfg.data.limit_train == 512 and cfg.train.max_steps == 4


def test_models_instantiate(make_cfg):
    cfg = make_cfg()
    model = instantiate(cfg.bilevel)
    assert model.automatic_optimization is False
    assert len(model.configure_optimizers()) == 3  # proxy θ, rater μ and the value-gap signal's train-only proxy θ′
    assert instantiate(cfg.model).unet.config.sample_size == cfg.data.resolution


def test_unknown_key_named(make_cfg):
    with pytest.raises(ConfigCompositionException, match="keep_ratoi"):
        make_cfg("keep_ratoi=0.3")


def test_slurm_launcher_composes(tmp_path):
    """conf/hydra/launcher/slurm.yaml composes with the submitit plugin and takes its sizes from the trainer."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from .conftest import CONF

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            "config",
            overrides=[
                "hydra/launcher=slurm",
                "trainer=ddp",
                "trainer.devices=4",
                "hydra.launcher.partition=gpu",
                f"hydra.sweep.dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["tasks_per_node"], launcher["gpus_per_node"], launcher["nodes"]) == (4, 4, 1)
    assert launcher["partition"] == "gpu" and launcher["submitit_folder"] == f"{tmp_path}/.submitit/%j"
    assert cfg.trainer.strategy == "ddp_find_unused_parameters_true"


@pytest.mark.parametrize(
    "name,strategy,devices",
    [("ddp_cpu", "ddp_find_unused_parameters_true", 2), ("ddp_spawn_cpu", "ddp_spawn_find_unused_parameters_true", 2)],
)
def test_ddp_trainer_configs(make_cfg, name, strategy, devices):
    cfg = make_cfg(f"trainer={name}")
    assert (cfg.trainer.accelerator, cfg.trainer.strategy, cfg.trainer.devices) == ("cpu", strategy, devices)


def test_no_test_skips_for_a_package_the_test_install_lacks():
    """Every package a test would skip without (``pytest.importorskip``) is installed by the README's
    test install (``pip install -e ".[test]"``, as .ci/run runs it): a test that never runs tests nothing."""
    import ast
    import importlib.util

    from .conftest import ROOT

    missing = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip" and node.args:
                module = node.args[0].value
                if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
                    missing.append(f"{path.name}: {module}")
    assert not missing, f"tests skip on packages the test install does not provide: {missing}"
