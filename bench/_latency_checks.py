"""bench/speed.py's latency sections: whether eager torch ranks the space's networks as ONNX Runtime does,
and how far one network's timing strays between moments, alone and scaled by the anchor network."""

from __future__ import annotations

import dataclasses
import time

import torch

from kdnas.config import LatencyConfig, StudyConfig
from kdnas.data import DatasetInfo
from kdnas.families import get_family
from kdnas.measure import anchor_network, anchored
from kdnas.models import ArchSpec, build_model, count_params
from kdnas.runtimes import runtime_for
from kdnas.space import architectures, space_size


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation: Pearson's of the ranks (ties share their mean rank)."""
    import pandas as pd

    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def _networks_of(cfg: StudyConfig, info: DatasetInfo, most: int) -> list[ArchSpec]:
    """Every network of the space when it holds at most ``most``; else ``most`` distinct ones drawn
    uniformly at random (seeded: an mbconv space holds millions)."""
    import optuna

    shape = (info.in_channels, info.num_classes, info.image_size)
    if space_size(cfg) <= most:
        return list(architectures(cfg, *shape))
    family = get_family(cfg.student.family)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn: dict[ArchSpec, None] = {}
    while len(drawn) < most:
        spec = family.suggest(study.ask(), cfg.student.knobs, info.image_size)
        drawn[ArchSpec(cfg.student.family, info.in_channels, info.num_classes, spec)] = None
    return list(drawn)


def _of_space(cfg: StudyConfig, count: int) -> str:
    size = space_size(cfg)
    return "all of them" if count >= size else f"drawn at random from {size:,.0f}"


def runtimes(cfg: StudyConfig, info: DatasetInfo, tiny: bool, networks: int) -> None:
    """Does eager torch rank the space's networks as ONNX Runtime (the deployed graph) does, at batch 1?"""
    import onnxruntime

    archs = _networks_of(cfg, info, 3 if tiny else networks)
    models = [build_model(arch) for arch in archs]
    shape = (info.in_channels, info.image_size, info.image_size)
    runs = dict(warmup=1, repeats=3) if tiny else dict(warmup=cfg.latency.warmup, repeats=cfg.latency.repeats)
    figures, seconds = {}, {}
    for name in ("torch", "onnxruntime"):
        start = time.perf_counter()
        runtime = runtime_for(LatencyConfig(runtime=name, threads=cfg.latency.threads, **runs))
        figures[name] = runtime.measure(models, shape, info.mean, info.std)
        seconds[name] = time.perf_counter() - start
    print(
        f"\n== runtimes: {len(archs)} networks of {cfg.name!r} ({_of_space(cfg, len(archs))}) at batch 1, "
        f"{cfg.latency.threads} thread(s), "
        f"{runs['repeats']} timed runs each, side by side; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__} (torch: {seconds['torch']:.0f} s; onnxruntime, exports included: "
        f"{seconds['onnxruntime']:.0f} s)"
    )
    width = max(len(arch.describe()) for arch in archs)
    print(f"{'network':<{width}} {'params':>9} {'torch ms':>9} {'ORT ms':>9} {'ORT/torch':>9}")
    for arch, model, eager, ort in zip(archs, models, figures["torch"], figures["onnxruntime"], strict=True):
        print(f"{arch.describe():<{width}} {count_params(model):>9,} {eager:9.3f} {ort:9.3f} {ort / eager:9.2f}")
    correlation = rank_correlation(figures["torch"], figures["onnxruntime"])
    print(
        f"rank correlation (Spearman) of torch and ONNX Runtime latency over {len(archs)} networks: {correlation:.3f}"
    )


# ---------------------------------------------------------------------------------------------------
# anchor
# ---------------------------------------------------------------------------------------------------


def anchor(cfg: StudyConfig, info: DatasetInfo, tiny: bool, rounds: int = 8, pause_s: float = 5.0) -> None:
    """Do a minimum timing time and scaling by the anchor network make figures timed at different moments
    comparable? Each round times the network beside the anchor twice: exactly ``repeats`` runs, and rounds
    going on for ``min_time_s`` (the study's, or the default where the study sets none)."""
    rounds, pause_s = (2, 0.0) if tiny else (rounds, pause_s)
    arch = _networks_of(cfg, info, 1)[0]
    models = [build_model(arch).eval(), anchor_network(info.in_channels)]
    latency = dataclasses.replace(cfg.latency, warmup=1, repeats=3) if tiny else cfg.latency
    min_time_s = 0.01 if tiny else latency.min_time_s or LatencyConfig.min_time_s
    ways = {
        f"{latency.repeats} runs": runtime_for(dataclasses.replace(latency, min_time_s=0)),
        f"over {min_time_s:g} s": runtime_for(dataclasses.replace(latency, min_time_s=min_time_s)),
    }
    shape = (info.in_channels, info.image_size, info.image_size)
    print(
        f"\n== anchor: {arch.describe()} on {cfg.latency.runtime}, {rounds} rounds {pause_s:g} s apart, beside "
        f"the anchor network, timed with {' and with '.join(ways)}; 'anchored': scaled to the anchor's figure "
        "in round 0"
    )
    print(f"{'':>5} " + " ".join(f"{way:>30}" for way in ways))
    print(f"{'round':>5} " + " ".join(f"{'alone ms':>9} {'anchor ms':>9} {'anchored ms':>11}" for _ in ways))
    alone, scaled, references = {w: [] for w in ways}, {w: [] for w in ways}, {}
    for i in range(rounds):
        if i:
            time.sleep(pause_s)
        cells = []
        for way, runtime in ways.items():
            network_ms, anchor_ms = runtime.measure(models, shape, info.mean, info.std)
            reference = references.setdefault(way, anchor_ms)
            alone[way].append(network_ms)
            scaled[way].append(anchored(network_ms, anchor_ms, reference))
            cells.append(f"{network_ms:9.3f} {anchor_ms:9.3f} {scaled[way][-1]:11.3f}")
        print(f"{i:>5} " + " ".join(cells), flush=True)
    for way in ways:
        for what, figures in (("alone", alone[way]), ("anchored", scaled[way])):
            strays = max(abs(f / figures[0] - 1) for f in figures)
            print(
                f"{way}, {what}: {min(figures):.3f} to {max(figures):.3f} ms, at most {100 * strays:.1f}% from round 0"
            )
