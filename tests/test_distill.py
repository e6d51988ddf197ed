"""The blended KD loss against an independent numpy calculation, and the alpha schedules by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdnas.distill import ALPHA_SCHEDULES, KDSpec, kd_loss
from kdnas.errors import KdnasError

# Float32 torch against float64 numpy: agreement to ~1e-6 relative; 1e-5 leaves room for summation order.
REL_TOL = 1e-5
ABS_TOL = 1e-6


def logits_case(seed: int = 0, n: int = 5, c: int = 7):
    rng = np.random.default_rng(seed)
    student = rng.normal(0, 2, size=(n, c))
    teacher = rng.normal(0, 3, size=(n, c))
    targets = rng.integers(0, c, size=n)
    return student, teacher, targets


def as_torch(student, teacher, targets):
    return (
        torch.tensor(student, dtype=torch.float32),
        torch.tensor(teacher, dtype=torch.float32),
        torch.tensor(targets, dtype=torch.int64),
    )


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
    return float(-np_log_softmax(z)[np.arange(len(y)), y].mean())


def np_soft_term(zs: np.ndarray, zt: np.ndarray, temperature: float) -> float:
    """T^2 * mean over the batch of KL(p_t || p_s), both at temperature T."""
    log_ps, log_pt = np_log_softmax(zs / temperature), np_log_softmax(zt / temperature)
    kl_per_row = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1)
    return float(temperature**2 * kl_per_row.mean())


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


# ---------------------------------------------------------------------------------------------------
# kd_loss
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "temperature"),
    [
        pytest.param(0.5, 4.0, id="a0.5-T4"),
        pytest.param(0.3, 1.0, id="a0.3-T1"),
        pytest.param(0.9, 2.5, id="a0.9-T2.5"),
        pytest.param(1.0, 8.0, id="a1-T8"),
    ],
)
def test_kd_loss_matches_independent_formula(alpha, temperature):
    zs, zt, y = logits_case(seed=1)
    expected = alpha * np_soft_term(zs, zt, temperature) + (1 - alpha) * np_cross_entropy(zs, y)
    got = kd_loss(*as_torch(zs, zt, y), alpha=alpha, temperature=temperature).item()
    assert close(got, expected), (got, expected)


def test_kd_loss_golden_value():
    # Two samples, three classes, alpha 0.5, T 2. By hand: CE = mean(0.46444, 0.06588) = 0.265126;
    # KL at T=2 averaged over the rows = 0.0563492, times T^2 = 0.225397; 0.5 * 0.225397 + 0.5 * 0.265126.
    zs = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = np.array([[2.0, 1.0, 0.0], [0.5, 0.5, 4.0]])
    y = np.array([1, 2])
    got = kd_loss(*as_torch(zs, zt, y), alpha=0.5, temperature=2.0).item()
    assert math.isclose(got, 0.2452615, rel_tol=1e-6)


def test_alpha_zero_is_exactly_cross_entropy():
    zs, zt, y = as_torch(*logits_case(seed=2))
    assert torch.equal(kd_loss(zs, zt, y, alpha=0.0, temperature=4.0), F.cross_entropy(zs, y))


def test_alpha_zero_works_without_teacher_logits():
    zs, _, y = as_torch(*logits_case(seed=3))
    assert torch.equal(kd_loss(zs, None, y, alpha=0.0, temperature=4.0), F.cross_entropy(zs, y))


def test_alpha_zero_applies_label_smoothing():
    zs, _, y = as_torch(*logits_case(seed=3))
    got = kd_loss(zs, None, y, alpha=0.0, temperature=4.0, label_smoothing=0.1)
    assert torch.equal(got, F.cross_entropy(zs, y, label_smoothing=0.1))


def test_alpha_positive_without_teacher_logits_is_an_error():
    zs, _, y = as_torch(*logits_case())
    with pytest.raises(ValueError, match="teacher_logits are required"):
        kd_loss(zs, None, y, alpha=0.5, temperature=4.0)


def test_alpha_one_is_the_soft_term_alone():
    zs, zt, y = logits_case(seed=4)
    got = kd_loss(*as_torch(zs, zt, y), alpha=1.0, temperature=3.0).item()
    assert close(got, np_soft_term(zs, zt, 3.0))
    # Labels do not matter at alpha 1.
    other = (y + 1) % zs.shape[1]
    assert kd_loss(*as_torch(zs, zt, other), alpha=1.0, temperature=3.0).item() == got


@pytest.mark.parametrize("temperature", [pytest.param(t, id=f"T{t}") for t in (1.0, 2.0, 4.0, 10.0)])
def test_soft_term_is_scaled_by_t_squared(temperature):
    zs, zt, y = logits_case(seed=5)
    log_ps, log_pt = np_log_softmax(zs / temperature), np_log_softmax(zt / temperature)
    kl = float((np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1).mean())
    got = kd_loss(*as_torch(zs, zt, y), alpha=1.0, temperature=temperature).item()
    assert close(got, temperature**2 * kl)


def test_soft_term_is_zero_when_student_equals_teacher():
    zs, _, y = logits_case(seed=6)
    got = kd_loss(*as_torch(zs, zs, y), alpha=1.0, temperature=4.0).item()
    assert abs(got) < 1e-6


def test_teacher_logits_in_half_precision_are_accepted():
    zs, zt, y = logits_case(seed=7)
    s, t, yy = as_torch(zs, zt, y)
    got = kd_loss(s, t.half(), yy, alpha=0.5, temperature=2.0).item()
    expected = kd_loss(s, t.half().float(), yy, alpha=0.5, temperature=2.0).item()
    assert got == expected


def test_gradient_reaches_the_student_and_matches_the_analytic_form():
    # d/dz_s [T^2 KL(p_t || softmax(z_s/T))] averaged over N rows = T * (p_s - p_t) / N.
    zs, zt, y = logits_case(seed=8, n=4, c=5)
    temperature = 3.0
    s, t, yy = as_torch(zs, zt, y)
    s.requires_grad_(True)
    kd_loss(s, t, yy, alpha=1.0, temperature=temperature).backward()
    p_s, p_t = np.exp(np_log_softmax(zs / temperature)), np.exp(np_log_softmax(zt / temperature))
    expected = temperature * (p_s - p_t) / len(zs)
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_gradient_does_not_flow_into_a_detached_teacher_but_does_into_the_student():
    s, t, y = as_torch(*logits_case(seed=9))
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd_loss(s, t.detach(), y, alpha=0.5, temperature=2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_blended_gradient_is_the_blend_of_the_gradients():
    zs, zt, y = logits_case(seed=10)
    grads = {}
    for alpha in (0.0, 0.4, 1.0):
        s, t, yy = as_torch(zs, zt, y)
        s.requires_grad_(True)
        kd_loss(s, t, yy, alpha=alpha, temperature=2.0).backward()
        grads[alpha] = s.grad
    torch.testing.assert_close(grads[0.4], 0.4 * grads[1.0] + 0.6 * grads[0.0], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------
# Alpha schedules
# ---------------------------------------------------------------------------------------------------

SCHEDULE_CASES = [
    # (schedule, rate, fraction of alpha left at progress 0, 0.5, 1), computed by hand
    ("none", 1.0, (1.0, 1.0, 1.0)),
    ("none", 3.0, (1.0, 1.0, 1.0)),
    ("linear", 1.0, (1.0, 0.5, 0.0)),
    ("linear", 0.5, (1.0, 0.75, 0.5)),
    ("linear", 2.0, (1.0, 0.0, 0.0)),  # reaches zero at mid-training and stays there
    ("linear", 3.0, (1.0, 0.0, 0.0)),  # never negative
    ("cosine", 1.0, (1.0, 0.5, 0.0)),
    ("cosine", 0.5, (1.0, 0.8535533905932737, 0.5)),  # (1 + cos(pi/4)) / 2
    ("cosine", 2.0, (1.0, 0.0, 0.0)),
    ("cosine", 4.0, (1.0, 0.0, 0.0)),  # clamped, does not come back up
    ("exponential", 1.0, (1.0, 0.6065306597126334, 0.36787944117144233)),  # e^-0.5, e^-1
    ("exponential", 2.0, (1.0, 0.36787944117144233, 0.1353352832366127)),  # e^-1, e^-2
]


@pytest.mark.parametrize(
    ("schedule", "rate", "expected"),
    [pytest.param(s, r, e, id=f"{s}-rate{r}") for s, r, e in SCHEDULE_CASES],
)
def test_alpha_schedule_values(schedule, rate, expected):
    spec = KDSpec(temperature=2.0, alpha=0.8, alpha_decay=schedule, decay_rate=rate)
    for progress, fraction in zip((0.0, 0.5, 1.0), expected, strict=True):
        assert math.isclose(spec.alpha_at(progress), 0.8 * fraction, rel_tol=1e-12, abs_tol=1e-12), (progress, fraction)


def test_every_registered_schedule_is_covered():
    assert {s for s, _, _ in SCHEDULE_CASES} == set(ALPHA_SCHEDULES.names())


@pytest.mark.parametrize("schedule", [pytest.param(s, id=s) for s in ALPHA_SCHEDULES.names()])
def test_schedules_start_at_alpha_and_never_increase(schedule):
    spec = KDSpec(alpha=0.6, alpha_decay=schedule, decay_rate=1.7)
    values = [spec.alpha_at(p / 20) for p in range(21)]
    assert values[0] == 0.6
    assert all(b <= a + 1e-15 for a, b in zip(values, values[1:], strict=False))
    assert all(0.0 <= v <= 0.6 for v in values)


@pytest.mark.parametrize("schedule", [pytest.param(s, id=s) for s in ALPHA_SCHEDULES.names()])
def test_alpha_zero_stays_zero_under_every_schedule(schedule):
    spec = KDSpec(alpha=0.0, alpha_decay=schedule, decay_rate=2.0)
    assert [spec.alpha_at(p) for p in (0.0, 0.5, 1.0)] == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------
# KDSpec validation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"temperature": 0.0}, "temperature must be > 0, got 0.0", id="T-zero"),
        pytest.param({"temperature": -1.0}, "temperature must be > 0, got -1.0", id="T-negative"),
        pytest.param({"temperature": float("nan")}, "temperature must be > 0, got nan", id="T-nan"),
        pytest.param({"alpha": -0.1}, r"alpha must be in \[0, 1\], got -0.1", id="alpha-negative"),
        pytest.param({"alpha": 1.01}, r"alpha must be in \[0, 1\], got 1.01", id="alpha-above-1"),
        pytest.param({"alpha": float("nan")}, r"alpha must be in \[0, 1\], got nan", id="alpha-nan"),
        pytest.param({"decay_rate": 0.0}, "decay_rate must be > 0, got 0.0", id="rate-zero"),
        pytest.param({"decay_rate": -3.0}, "decay_rate must be > 0, got -3.0", id="rate-negative"),
        pytest.param(
            {"alpha_decay": "step"},
            "unknown alpha schedule 'step'; known: cosine, exponential, linear, none",
            id="unknown-schedule",
        ),
        pytest.param(
            {"alpha_decay": "cosin"}, r"unknown alpha schedule 'cosin' \(did you mean 'cosine'\?\)", id="misspelled"
        ),
    ],
)
def test_kdspec_rejects_bad_values(kwargs, expected):
    with pytest.raises(KdnasError, match=expected):
        KDSpec(**kwargs)


@pytest.mark.parametrize("alpha", [pytest.param(a, id=f"alpha{a}") for a in (0.0, 1.0)])
def test_kdspec_accepts_the_ends_of_the_alpha_range(alpha):
    assert KDSpec(alpha=alpha).alpha == alpha
