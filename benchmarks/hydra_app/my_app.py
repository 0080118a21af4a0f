"""The smallest Hydra app, launched through hydra-submitit-launcher, for benchmarks/sweep_scale.py."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    return int(cfg.seed)


if __name__ == "__main__":
    main()
