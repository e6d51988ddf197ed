"""What a candidate costs before it is trained: parameters, MACs and latency on a named device."""

from __future__ import annotations

import copy
import functools
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdnas.config import LATENCY_ROUND_RUNS, LatencyConfig
from kdnas.errors import KdnasError
from kdnas.files import exclusive, write_json
from kdnas.models import ArchSpec, build_model, count_params
from kdnas.registry import unknown_name

__all__ = [
    "check_device_name",
    "LatencyTable",
    "anchor_network",
    "anchor_spec",
    "anchored",
    "count_macs",
    "measure_latencies",
    "resolve_device",
    "device_model",
    "time_side_by_side",
]

log = logging.getLogger("kdnas.measure")


# The device types kdnas trains and times on; "auto" picks one of them on the machine that runs.
_DEVICE_TYPES = ("cpu", "cuda")
_DEVICE_SYNTAX = "use cpu, cuda, cuda:N or auto"


def check_device_name(name: str) -> None:
    """Raise a KdnasError unless ``name`` is a device kdnas can use somewhere ("cpu", "cuda:1", "auto").

    Whether the device is present is a question for the machine that runs (``resolve_device``).
    """
    if name == "auto":
        return
    if name.partition(":")[0].lower() == "gpu":  # spelled like "cpu", meant as CUDA: suggest what was meant
        raise KdnasError(f"unknown device {name!r} (did you mean 'cuda'?); {_DEVICE_SYNTAX}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise unknown_name("device", name, ("auto", *_DEVICE_TYPES), fix=_DEVICE_SYNTAX) from None
    if device.type not in _DEVICE_TYPES:
        raise KdnasError(f"device {name!r} is not supported; {_DEVICE_SYNTAX}")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; anything else must exist on this machine."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdnasError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return device


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of a batch of one image of ``input_shape`` (C, H, W)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2  # FlopCounterMode counts a multiply-add as 2 FLOPs


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def anchor_spec(in_channels: int) -> ArchSpec:
    """The network every latency measurement times side by side with the networks it is for (see
    ``LatencyTable``): a small residual CNN."""
    return ArchSpec("resnet", in_channels, 10, {"base_width": 8, "blocks": (1, 1, 1)})


def anchor_network(in_channels: int) -> nn.Module:
    """``anchor_spec``'s network, its weights fixed."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model(anchor_spec(in_channels)).eval()


def anchored(latency_ms: float, anchor_ms: float, reference_ms: float | None) -> float:
    """``latency_ms``, timed beside the anchor (``anchor_ms`` then), in the machine state of the anchor's
    reference figure (``reference_ms``; the figure as timed when there is none)."""
    return latency_ms if reference_ms is None else latency_ms * reference_ms / anchor_ms


def measure_latencies(models: Sequence[nn.Module], input_shape: tuple[int, ...], cfg: LatencyConfig) -> list[float]:
    """Milliseconds of one inference forward pass of each model on ``cfg.device`` in eager PyTorch, timed
    side by side (``time_side_by_side``).

    Each model is copied to the device in eval mode and channels_last. On CUDA each run is bracketed by
    synchronisation, so the time is the kernels' and not the launch's.
    """
    device = resolve_device(cfg.device)
    probes = [_copy_for_inference(model, device) for model in models]
    x = torch.randn(cfg.batch_size, *input_shape, device=device).contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with _torch_threads(cfg.threads), torch.inference_mode():
        return time_side_by_side([functools.partial(probe, x) for probe in probes], cfg, sync)


def time_side_by_side(
    runs: Sequence[Callable[[], object]], cfg: LatencyConfig, sync: Callable[[], object] | None = None
) -> list[float]:
    """Milliseconds of each of ``runs`` (one forward pass of one network each), timed side by side.

    ``cfg.warmup`` untimed calls of each come first (kernel selection, caches, a runtime's first slow
    runs), then ``cfg.repeats`` timed calls of each, in rounds of up to ``LATENCY_ROUND_RUNS`` calls that
    take the networks in turn, more rounds following until they have lasted ``cfg.min_time_s``; a
    network's figure is the lowest of its round medians. A round slowed by a passing disturbance does not
    count, a slow drift of the machine (on a 2-core VM its speed changes by up to 1.8x from one minute to
    the next) touches every network alike, and rounds spread over half a second meet the machine's fast
    state, which a timing of milliseconds may miss (docs/benchmarks.md). ``sync`` brackets each call (a
    device's queue).
    """
    sync = sync or (lambda: None)

    def timed(run: Callable[[], object], n: int) -> list[float]:
        times = []
        for _ in range(n):
            sync()
            start = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - start)
        return times

    round_medians: list[list[float]] = [[] for _ in runs]
    for run in runs:
        timed(run, cfg.warmup)
    done, start = 0, time.perf_counter()
    while done < cfg.repeats or time.perf_counter() - start < cfg.min_time_s:
        n = min(LATENCY_ROUND_RUNS, cfg.repeats - done) if done < cfg.repeats else LATENCY_ROUND_RUNS
        for run, medians in zip(runs, round_medians, strict=True):
            medians.append(statistics.median(timed(run, n)))
        done += n
    return [1000 * min(medians) for medians in round_medians]


def _copy_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    probe = copy.deepcopy(model).to(device).eval()
    return probe.to(memory_format=torch.channels_last)


class LatencyTable:
    """The latencies measured in a run directory (``latency.json``): each network is timed once per setup.

    Timing a network again gives another figure (machine load, clock). With latency an objective the
    sampler sees those figures, so a second run of the same study and seed would leave the first
    one's path after the random startup trials; with the table it proposes the same trials. The
    setup (the runtime and its version, device and its model, threads, batch, repeats, input shape,
    torch version) is part of the key: another machine, runtime or setting times again. Delete the
    file to time everything again.

    Every timing runs ``anchor_network`` side by side with the networks, and each figure is scaled by
    the anchor's first figure in this setup over its figure now (``anchored``): a 2-core VM's speed drifts
    by up to 1.8x from one minute to the next, so networks timed at different moments (a space too large
    to time at once, each network timed when sampled; ``kdnas.train`` timing the trained student) would
    otherwise differ by that much. Measured: one network timed 8 times over a minute, 0.172 to 0.277 ms
    alone, 1.83 to 2.04 times the anchor (docs/benchmarks.md).

    Args:
        mean, std: the data's normalisation (0..1 scale), built into the graph of runtimes that time the
            deployed ONNX export; eager torch times the network alone, as it always did.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: LatencyConfig,
        input_shape: tuple[int, ...],
        *,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        from kdnas.runtimes import runtime_for

        self.path, self.cfg, self.input_shape = run_dir / "latency.json", cfg, input_shape
        self.mean, self.std = tuple(mean), tuple(std)
        self.runtime = runtime_for(cfg)
        self.setup = self.runtime.setup(input_shape)
        self.anchor_key = f"anchor: {_network(anchor_spec(input_shape[0]))}"

    @property
    def anchor_reference_ms(self) -> float | None:
        """The anchor's first figure in this setup (the machine state every stored figure is scaled to), or
        None before anything was timed."""
        return self._read().get(self.setup, {}).get(self.anchor_key)

    def latency_ms(self, model: nn.Module, arch: ArchSpec) -> float:
        """The stored latency of ``arch`` in this setup; ``model`` (that network) is timed if there is none."""
        network = _network(arch)
        stored = self._read().get(self.setup, {}).get(network)
        if stored is not None:
            return stored
        return self._store({network: self._measure([model])[0]})[network]

    def time_all(self, archs: Iterable[ArchSpec], max_params: int | None = None, max_macs: int | None = None) -> int:
        """Time, side by side, every network of ``archs`` the table lacks (those over ``max_params`` or
        ``max_macs`` are never trained, so never timed); how many were timed.

        A network timed when a search samples it is timed in whatever state the machine is in then (clock,
        other tenants, other workers), which can reorder networks; timed together, in rounds that take
        them in turn, they all see the same states (figures in docs/benchmarks.md).
        """
        known = self._read().get(self.setup, {})
        missing = {}
        for arch in archs:
            if _network(arch) not in known and _network(arch) not in missing:
                model = build_model(arch)
                over_params = max_params is not None and count_params(model) > max_params
                over_macs = max_macs is not None and count_macs(model, self.input_shape) > max_macs
                if not (over_params or over_macs):
                    missing[_network(arch)] = model
        if missing:
            self._store(dict(zip(missing, self._measure(list(missing.values())), strict=True)))
        return len(missing)

    def _measure(self, models: Sequence[nn.Module]) -> list[float]:
        anchor = anchor_network(self.input_shape[0])
        anchor_ms, *figures = self.runtime.measure([anchor, *models], self.input_shape, self.mean, self.std)
        reference = self._store({self.anchor_key: anchor_ms})[self.anchor_key]
        return [anchored(ms, anchor_ms, reference) for ms in figures]

    def _store(self, measured: dict[str, float]) -> dict[str, float]:
        """Add ``measured`` ({network: ms}) to the file; the stored figures (the first one written wins)."""
        with exclusive(self.path.with_name(".latency.lock"), "latency: waiting for another worker's table"):
            table = self._read()
            networks = table.setdefault(self.setup, {})
            for network, latency in measured.items():
                networks.setdefault(network, latency)
            write_json(self.path, table)
        return networks

    def _read(self) -> dict[str, dict[str, float]]:
        """{setup: {network: milliseconds}}; empty (with a warning) when the file is unreadable."""
        try:
            table = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.warning("latency: %s is unreadable (%s); timing networks again", self.path, err)
            return {}
        if not isinstance(table, dict):
            return {}
        return {setup: networks for setup, networks in table.items() if isinstance(networks, dict)}


def _network(arch: ArchSpec) -> str:
    """The latency table's key of a network."""
    return f"{arch.describe()}, {arch.in_channels} -> {arch.num_classes}"


def device_model(name: str) -> str:
    """What the latency device is: the GPU's name, or the CPU model from /proc/cpuinfo."""
    device = resolve_device(name)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "cpu")
    except OSError:
        return "cpu"
