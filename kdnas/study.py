"""Opening a study: storage, the check that stored trials are comparable, the sampler, the start-up queue.

Everything a worker needs to join a study comes from the study file and the storage URL, so workers on
many hosts open the same study the same way.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING

from kdnas.config import StudyConfig, section_hash
from kdnas.errors import KdnasError, first_line
from kdnas.status import BUDGET_STATUSES
from kdnas.storage import hide_password, scrub

if TYPE_CHECKING:
    import optuna

    from kdnas.data import DatasetInfo

__all__ = ["search_space_hash", "open_study", "stored_data_info", "budget_trials"]

log = logging.getLogger(__name__)

MAX_DRAWS = 100  # random draws per start-up network wanted before a small space is taken as used up
# The usual recipe people distil with (Hinton et al.'s T, a strong soft term), and no distillation.
USUAL_KD = {"temperature": 4.0, "alpha": 0.9, "alpha_decay": "none"}
NO_KD = {"temperature": 4.0, "alpha": 0.0, "alpha_decay": "none"}
KD_ANCHORS = (NO_KD, USUAL_KD)  # the two ends a "pairs" start-up trains each architecture at, in this order
# The KD settings each start-up architecture is trained at, by [sampler] startup ("random": drawn with it).
STARTUP_ANCHORS = {"pairs": KD_ANCHORS, "usual": (USUAL_KD,)}


def search_space_hash(cfg: StudyConfig) -> str:
    """What makes two runs' trials comparable: data, teacher, space, recipe, objectives, measurement."""
    return section_hash(
        cfg.data, cfg.teacher, cfg.student, cfg.kd, cfg.train, cfg.objectives, cfg.constraints, cfg.latency
    )


def _sampler_seed(cfg: StudyConfig, stored_trials: int, worker: int) -> int:
    """The sampler's seed: (study seed, trials already stored, worker).

    A resumed study must not replay the random sequence of its first run (that would train the same
    candidates again), and the same study file, seed and history still give the same proposals.
    """
    return cfg.seed + 1_000_003 * stored_trials + 7_919 * worker


def open_study(
    cfg: StudyConfig,
    storage_url: str,
    info: DatasetInfo,
    *,
    fresh: bool = False,
    worker: int = 0,
    heartbeat_grace_s: int | None = None,
) -> optuna.Study:
    """Create or load the study named ``cfg.name`` in ``storage_url``; refuse to mix incompatible trials.

    ``info`` describes the loaded data; the study keeps it, so that reading the study back (report,
    export, train) knows the students' channels and classes without decoding the data again.
    ``worker`` tells concurrent workers' samplers apart (each gets its own random stream);
    ``heartbeat_grace_s`` is how long an RDB trial may go without a heartbeat before it is retried.

    Raises:
        KdnasError: the storage cannot be opened, or it holds this study run with other settings.
    """
    import optuna

    from kdnas.samplers import build_sampler
    from kdnas.storage import HEARTBEAT_GRACE_S, open_storage

    shown = hide_password(storage_url)
    storage = open_storage(storage_url, heartbeat_grace_s or HEARTBEAT_GRACE_S)
    try:
        if fresh and cfg.name in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
            optuna.delete_study(study_name=cfg.name, storage=storage)
            log.info("deleted the stored study %r (--fresh)", cfg.name)
        # Only the process that creates the study queues its start-up trials: hosts starting at the same
        # instant would otherwise queue them twice and train each candidate twice.
        created = True
        try:
            study = optuna.create_study(storage=storage, study_name=cfg.name, directions=cfg.objectives.directions)
        except optuna.exceptions.DuplicatedStudyError:
            created = False
            study = optuna.create_study(
                storage=storage, study_name=cfg.name, directions=cfg.objectives.directions, load_if_exists=True
            )
    except Exception as err:  # server gone, permissions, a study of other directions: all one line
        raise KdnasError(f"cannot open study {cfg.name!r} in {shown}: {scrub(first_line(err), storage_url)}") from None
    space_hash = search_space_hash(cfg)
    stored = study.user_attrs.get("space_hash")
    if stored is not None and stored != space_hash:
        raise KdnasError(
            f"study {cfg.name!r} in {shown} was run with a different data/teacher/space/recipe; "
            "rerun with --fresh to start over, or give the study another name"
        )
    if stored is None:
        study.set_user_attr("space_hash", space_hash)
        if created and cfg.sampler.name == "tpe":
            _queue_startup_smallest_first(study, cfg, info)
    study.set_user_attr("data_info", json.loads(json.dumps(info.summary(), default=list)))
    seed = _sampler_seed(cfg, len(study.get_trials(deepcopy=False)), worker)
    study.sampler = build_sampler(cfg.sampler, seed)
    store_config(study, cfg)
    return study


def store_config(study: optuna.Study, cfg: StudyConfig) -> None:
    """Keep ``cfg`` in the study, so that reading the study back (report, export, train) knows its settings."""
    study.set_user_attr("config", json.loads(json.dumps(cfg.to_dict(), default=list)))


def stored_data_info(study: optuna.Study, cfg: StudyConfig) -> DatasetInfo:
    """The data description ``open_study`` stored (a built-in dataset's own for studies older than that).

    Raises:
        KdnasError: the study predates the stored description and its dataset is not built in.
    """
    from kdnas.data import DATASETS, DatasetInfo

    summary = study.user_attrs.get("data_info")
    if summary is not None:
        return DatasetInfo.from_summary(summary)
    if cfg.data.dataset in DATASETS:
        return DATASETS.get(cfg.data.dataset)
    raise KdnasError(
        f"study {cfg.name!r} does not record its data's channels and classes; run kdnas.search on it once "
        "more (it records them, and trains nothing when the budget is reached)"
    )


def _queue_startup_smallest_first(study: optuna.Study, cfg: StudyConfig, info: DatasetInfo) -> None:
    """Queue the start-up trials, drawn with the study's seed, smallest student first.

    Early stopping judges a trial only against finished trials that are no larger. In the sampler's
    random order, the start-up trials that end off the front tend to come before the trials that beat
    them, and nothing could stop them; smallest first, every trial that could beat one has finished
    before it starts. With ``startup = "pairs"`` (and a KD space holding both anchors) each drawn
    architecture is queued twice, without distillation first, then with the usual recipe; with ``"usual"``
    twice as many architectures are queued, each with the usual recipe alone.
    """
    import optuna

    from kdnas.models import build_model, count_params
    from kdnas.space import suggest

    count = min(cfg.sampler.startup_trials, cfg.budget.trials)  # none left queued by a small budget
    anchors = STARTUP_ANCHORS.get(cfg.sampler.startup, ({},))
    if not _holds_anchors(cfg, anchors):
        anchors = ({},)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed))
    wanted = math.ceil(count / len(anchors))
    candidates, networks = [], set()
    for _ in range(MAX_DRAWS * wanted):  # a small space may hold fewer networks than pairs wanted
        if len(candidates) == wanted:
            break
        trial = draws.ask()
        arch, _ = suggest(trial, cfg, info.in_channels, info.num_classes, info.image_size)
        network = arch.describe()
        if anchors[0] and network in networks:
            continue  # the same network drawn twice would train the same candidates again
        networks.add(network)
        candidates.append((count_params(build_model(arch)), trial.params))
    queued = [
        {**params, **kd} if kd else params
        for _, params in sorted(candidates, key=lambda c: c[0])  # stable: equal sizes keep their draw order
        for kd in anchors
    ]
    for params in queued[:count]:
        if params.get("alpha_decay") == "none":
            params.pop("decay_rate", None)  # conditional: only a decaying alpha has a rate
        study.enqueue_trial(params)


def _holds_anchors(cfg: StudyConfig, anchors: tuple[dict, ...]) -> bool:
    """Whether every anchor's KD settings lie in the study's KD space (a study that fixes them has none)."""
    from kdnas.families import grid

    def holds(knob, value) -> bool:
        values = grid(knob)
        if values is None:  # a continuous range
            return knob.low <= value <= knob.high
        return any(value == v or (isinstance(v, float) and math.isclose(value, v)) for v in values)

    kd = cfg.kd
    return all(holds(getattr(kd, name), value) for anchor in anchors for name, value in anchor.items())


def budget_trials(study: optuna.Study) -> int:
    """Trials that count against the budget (those that cost training)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("status") in BUDGET_STATUSES)
