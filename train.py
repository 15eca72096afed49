"""Entry point: `python train.py +experiment=pipeline` (see README.md)."""

import hydra
from omegaconf import DictConfig

import alchemist_pl  # noqa: F401  (registers the config's resolvers: ${alchemist.if:...})


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from alchemist_pl.stages import run

    summary = run(cfg)
    loss = summary["metrics"].get("test/loss")
    return None if loss is None else float(loss)


if __name__ == "__main__":
    main()
