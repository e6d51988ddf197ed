"""Registries: the one list of names for each kind of thing a study file names, and the error on a miss."""

from __future__ import annotations

import optuna
import pytest

from kdnas.config import SamplerConfig
from kdnas.data import DATASETS
from kdnas.distill import ALPHA_SCHEDULES
from kdnas.errors import KdnasError
from kdnas.families import FAMILIES
from kdnas.pruning import EARLY_STOP_POLICIES
from kdnas.registry import Registry
from kdnas.runtimes import RUNTIMES
from kdnas.samplers import SAMPLERS, build_sampler
from kdnas.trainer import PRECISIONS

REGISTRIES = [DATASETS, FAMILIES, ALPHA_SCHEDULES, PRECISIONS, SAMPLERS, EARLY_STOP_POLICIES, RUNTIMES]


def _colours() -> Registry[int]:
    colours: Registry[int] = Registry("colour")
    for value, name in enumerate(("red", "green", "blue")):
        colours.register(name)(value)
    return colours


def test_names_keep_the_registration_order():
    assert _colours().names() == ["red", "green", "blue"]
    assert list(_colours()) == ["red", "green", "blue"]


def test_get_returns_what_was_registered():
    assert _colours().get("blue") == 2
    assert "green" in _colours() and "pink" not in _colours()


def test_a_misspelled_name_gets_a_suggestion_and_the_sorted_known_names():
    with pytest.raises(KdnasError) as info:
        _colours().get("gren")
    assert str(info.value) == "unknown colour 'gren' (did you mean 'green'?); known: blue, green, red"


def test_a_name_far_from_every_known_one_gets_no_suggestion():
    with pytest.raises(KdnasError) as info:
        _colours().check("purple")
    assert str(info.value) == "unknown colour 'purple'; known: blue, green, red"


def test_registering_a_name_twice_is_an_error():
    colours = _colours()
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        colours.register("red")(7)
    assert colours.get("red") == 0


@pytest.mark.parametrize(
    ("registry", "name"), [pytest.param(r, n, id=f"{r.kind}-{n}") for r in REGISTRIES for n in r.names()]
)
def test_every_registered_name_is_suggested_back_from_a_typo(registry, name):
    registry.check(name)
    with pytest.raises(KdnasError, match=rf"^unknown {registry.kind} '{name}x' \(did you mean '{name}'\?\); known: "):
        registry.check(f"{name}x")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        pytest.param("tpe", optuna.samplers.TPESampler, id="tpe"),
        pytest.param("nsga2", optuna.samplers.NSGAIISampler, id="nsga2"),
        pytest.param("random", optuna.samplers.RandomSampler, id="random"),
    ],
)
def test_build_sampler_builds_the_named_sampler(name, kind):
    assert type(build_sampler(SamplerConfig(name=name), seed=0)) is kind


def test_every_registered_sampler_is_covered():
    assert set(SAMPLERS.names()) == {"tpe", "nsga2", "random"}


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_the_same_seed_proposes_the_same_candidates(name):
    def proposals(seed: int) -> list[float]:
        study = optuna.create_study(
            directions=["maximize", "minimize"], sampler=build_sampler(SamplerConfig(name=name, startup_trials=2), seed)
        )
        values = []
        for _ in range(6):
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, [x, (x - 0.3) ** 2])
            values.append(x)
        return values

    assert proposals(3) == proposals(3)
    assert proposals(3) != proposals(4)
