"""The search space: what ``suggest`` asks of a trial, and how stored params rebuild the same specs."""

from __future__ import annotations

import math

import optuna

from kdnas.config import StudyConfig, study_from_dict
from kdnas.distill import ALPHA_SCHEDULES, KDSpec
from kdnas.models import ArchSpec
from kdnas.space import architectures, candidate_count, space_size, specs_from_params, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "name": "space",
    "student": {"stages": 3, "base_width": {"low": 8, "high": 32, "step": 4}, "blocks": {"low": 1, "high": 3}},
    "kd": {
        "temperature": {"low": 1.0, "high": 8.0, "log": True},
        "alpha": {"low": 0.0, "high": 1.0, "step": 0.1},
        "alpha_decay": ["none", "linear", "cosine", "exponential"],
        "decay_rate": {"low": 0.5, "high": 3.0},
    },
}


def config(**overrides) -> StudyConfig:
    table = {"name": "space", "student": dict(SPACE["student"]), "kd": dict(SPACE["kd"])}
    for section, values in overrides.items():
        table[section].update(values)
    return study_from_dict(table)


def sampled_trials(cfg: StudyConfig, n: int, seed: int = 0):
    """``n`` trials of a real in-memory study with a seeded sampler: (trial, arch, kd) each."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        arch, kd = suggest(trial, cfg, 3, 10, 32)
        study.tell(trial, 0.0)
        out.append((study.get_trials(deepcopy=False)[-1], arch, kd))
    return out


def test_fixed_trial_gives_exactly_its_params():
    params = {
        "base_width": 12,
        "blocks_1": 1,
        "blocks_2": 3,
        "blocks_3": 2,
        "temperature": 2.5,
        "alpha": 0.3,
        "alpha_decay": "cosine",
        "decay_rate": 1.5,
    }
    arch, kd = suggest(optuna.trial.FixedTrial(params), config(), 1, 10, 32)
    assert arch == ArchSpec("resnet", 1, 10, {"base_width": 12, "blocks": (1, 3, 2)})
    assert kd == KDSpec(temperature=2.5, alpha=0.3, alpha_decay="cosine", decay_rate=1.5)


def test_fixed_trial_without_decay_rate_for_constant_alpha():
    params = {
        "base_width": 8,
        "blocks_1": 1,
        "blocks_2": 1,
        "blocks_3": 1,
        "temperature": 4.0,
        "alpha": 0.5,
        "alpha_decay": "none",
    }
    _, kd = suggest(optuna.trial.FixedTrial(params), config(), 1, 10, 32)
    assert kd == KDSpec(temperature=4.0, alpha=0.5, alpha_decay="none", decay_rate=1.0)


def test_sampled_values_stay_in_the_configured_ranges():
    for trial, arch, kd in sampled_trials(config(), 40):
        assert 8 <= arch.spec["base_width"] <= 32 and arch.spec["base_width"] % 4 == 0
        assert len(arch.spec["blocks"]) == 3 and all(1 <= b <= 3 for b in arch.spec["blocks"])
        assert 1.0 <= kd.temperature <= 8.0
        assert 0.0 <= kd.alpha <= 1.0
        assert math.isclose(kd.alpha * 10, round(kd.alpha * 10), abs_tol=1e-9)  # on the 0.1 grid
        assert kd.alpha_decay in ("none", "linear", "cosine", "exponential")
        if kd.alpha_decay != "none":
            assert 0.5 <= kd.decay_rate <= 3.0
        assert (arch.in_channels, arch.num_classes) == (3, 10)
        assert trial.params["base_width"] == arch.spec["base_width"]


def test_sampler_explores_the_space():
    results = sampled_trials(config(), 40)
    assert len({arch.spec["base_width"] for _, arch, _ in results}) > 3
    assert {kd.alpha_decay for _, _, kd in results} == {"none", "linear", "cosine", "exponential"}


def test_default_space_samples_every_registered_schedule():
    kd = {key: value for key, value in SPACE["kd"].items() if key != "alpha_decay"}
    cfg = study_from_dict({"name": "space", "student": SPACE["student"], "kd": kd})
    assert {kd.alpha_decay for _, _, kd in sampled_trials(cfg, 40)} == set(ALPHA_SCHEDULES.names())


def test_decay_rate_exists_only_for_a_decaying_alpha():
    results = sampled_trials(config(), 40)
    for trial, _, kd in results:
        assert ("decay_rate" in trial.params) == (kd.alpha_decay != "none")
        if kd.alpha_decay == "none":
            assert kd.decay_rate == 1.0
    assert any(kd.alpha_decay == "none" for _, _, kd in results)


def test_stored_params_rebuild_the_same_specs():
    for trial, arch, kd in sampled_trials(config(), 25, seed=3):
        assert specs_from_params(trial.params, config(), 3, 10, 32) == (arch, kd)


def test_specs_from_params_matches_suggest_on_a_fixed_trial():
    params = {
        "base_width": 20,
        "blocks_1": 2,
        "blocks_2": 2,
        "blocks_3": 1,
        "temperature": 1.7,
        "alpha": 0.9,
        "alpha_decay": "exponential",
        "decay_rate": 0.8,
    }
    assert specs_from_params(params, config(), 1, 10, 32) == suggest(
        optuna.trial.FixedTrial(params), config(), 1, 10, 32
    )


def test_scalar_values_come_out_fixed():
    cfg = config(
        student={"base_width": 16, "blocks": 2},
        kd={"temperature": 4.0, "alpha": 0.7, "alpha_decay": "linear", "decay_rate": 2.0},
    )
    for trial, arch, kd in sampled_trials(cfg, 5):
        assert arch.spec == {"base_width": 16, "blocks": [2, 2, 2]}
        assert kd == KDSpec(temperature=4.0, alpha=0.7, alpha_decay="linear", decay_rate=2.0)
        assert trial.params["base_width"] == 16


def test_choice_lists_are_categorical():
    cfg = config(student={"base_width": [8, 24]}, kd={"temperature": [1.0, 4.0]})
    results = sampled_trials(cfg, 20)
    assert {arch.spec["base_width"] for _, arch, _ in results} == {8, 24}
    assert {kd.temperature for _, _, kd in results} == {1.0, 4.0}
    assert isinstance(results[0][0].distributions["base_width"], optuna.distributions.CategoricalDistribution)


def test_number_of_stages_sets_the_blocks_params():
    params = {"base_width": 8, "blocks_1": 1, "blocks_2": 2, "temperature": 4.0, "alpha": 0.5, "alpha_decay": "none"}
    arch, _ = specs_from_params(params, config(student={"stages": 2}), 1, 10, 32)
    assert arch.spec["blocks"] == [1, 2]


def test_alpha_grid_contains_exactly_zero():
    # alpha = 0 must be exactly 0.0: kd_loss takes the pure cross-entropy path only then.
    results = sampled_trials(config(), 60, seed=1)
    distribution = results[0][0].distributions["alpha"]
    assert (distribution.low, distribution.high, distribution.step) == (0.0, 1.0, 0.1)
    near_zero = [kd.alpha for _, _, kd in results if kd.alpha < 0.05]
    assert near_zero, "the seeded sampler should draw the lowest grid point in 60 trials"
    assert all(a == 0.0 for a in near_zero)


def test_alpha_zero_replays_exactly():
    params = {
        "base_width": 8,
        "blocks_1": 1,
        "blocks_2": 1,
        "blocks_3": 1,
        "temperature": 4.0,
        "alpha": 0.0,
        "alpha_decay": "none",
    }
    _, kd = specs_from_params(params, config(), 1, 10, 32)
    assert kd.alpha == 0.0 and kd.alpha_at(0.5) == 0.0


def test_candidate_count_is_every_network_and_distillation_setting_the_sampler_can_draw():
    kd = {
        "temperature": [2.0, 4.0],
        "alpha": {"low": 0.0, "high": 1.0, "step": 0.5},
        "alpha_decay": ["none", "linear"],
        "decay_rate": {"low": 1.0, "high": 2.0, "step": 0.5},  # drawn for "linear" only
    }
    cfg = config(student={"base_width": [8, 16], "blocks": 1}, kd=kd)
    drawn = {tuple(sorted(trial.params.items())) for trial, _, _ in sampled_trials(cfg, 1000)}
    assert candidate_count(cfg) == len(drawn) == 2 * 2 * 3 * (1 + 3)
    assert candidate_count(config()) == math.inf  # a continuous temperature


def test_architectures_are_every_network_the_sampler_can_draw():
    cfg = config()
    every = list(architectures(cfg, 3, 10, 32))
    assert space_size(cfg) == len(every)
    assert len(every) == len(set(every)) == 7 * 3**3  # widths 8..32 step 4, 1..3 blocks in each of 3 stages
    drawn = {arch for _, arch, _ in sampled_trials(cfg, 600)}
    assert drawn <= set(every) and len(drawn) > 150

    chosen = config(student={"base_width": [24, 8], "blocks": {"low": 1, "high": 2}, "stages": 2})
    assert [(a.spec["base_width"], a.spec["blocks"]) for a in architectures(chosen, 1, 10, 28)] == [
        (w, [b1, b2]) for w in (8, 24) for b1 in (1, 2) for b2 in (1, 2)
    ]
