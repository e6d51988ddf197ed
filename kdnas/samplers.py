"""The Optuna samplers a study may name in ``[sampler] name``: a registered builder each.

A builder takes the study's ``SamplerConfig`` and a seed and returns a fresh sampler; a new sampler is
one function and its registration.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from kdnas.config import SamplerConfig
from kdnas.registry import Registry

__all__ = ["SAMPLERS", "build_sampler"]

SAMPLERS: Registry[Callable[[SamplerConfig, int], optuna.samplers.BaseSampler]] = Registry("sampler")


@SAMPLERS.register("tpe")
def _tpe(cfg: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    # constant_liar: parallel workers see each other's running trials and do not propose the same candidate.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=cfg.startup_trials, multivariate=True, constant_liar=True
    )


@SAMPLERS.register("nsga2")
def _nsga2(cfg: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, cfg.startup_trials))


@SAMPLERS.register("random")
def _random(cfg: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def build_sampler(cfg: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    """A new sampler of the kind ``cfg.name`` names, seeded by ``seed``."""
    return SAMPLERS.get(cfg.name)(cfg, seed)
