"""What a training run leaves next to its checkpoints for the model card: the Trainer state (loss log),
the training arguments as JSON, and a short run description (objective, data, hardware)."""

from __future__ import annotations

import platform
from pathlib import Path

from trainers.io import atomic_write_json, atomic_write_text


def _cpuinfo_field(name: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo, encoding="utf8", errors="replace") as handle:
            for line in handle:
                if line.split(":")[0].strip() == name:
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere the platform's processor or machine string)."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The native bf16 flags (of ``modeling_llara.modeling_llara.FAST_BF16_CPU_FLAGS``: AMX-BF16, AVX512-BF16)
    this CPU has, read from ``cpuinfo``'s first flags line. A system without that file (not Linux) has none."""
    from modeling_llara.modeling_llara import FAST_BF16_CPU_FLAGS

    flags = set(_cpuinfo_field("flags", cpuinfo).split())
    return [flag for flag in FAST_BF16_CPU_FLAGS if flag in flags]


def bf16_kind(flags) -> str:
    """The kind of CPU that decides which bf16 kernels run, from a run's recorded ``bf16_cpu_flags``: ``AMX-BF16``
    when the CPU has AMX (its kernels are used even where AVX512-BF16 is present too), else ``AVX512-BF16``, else
    ``no native bf16``; ``unknown`` when the run recorded no flags (``None``). Runs of two kinds round bf16 results
    differently, so a comparison names the kind of each run."""
    if flags is None:
        return "unknown"
    from modeling_llara.modeling_llara import FAST_BF16_CPU_FLAGS

    present = [flag for flag in FAST_BF16_CPU_FLAGS if flag in flags]  # ordered: AMX first
    return present[0].upper().replace("_", "-") if present else "no native bf16"


def environment() -> dict:
    """Where a result was measured: CPU model and bf16 flags, threads, CUDA device, torch version (bf16 kernels,
    and so bf16 results, differ between CPUs with and without AMX)."""
    import torch

    return {
        "cpu": cpu_model(),
        "bf16_cpu_flags": cpu_bf16_flags(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError):
        pass
    return None


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory since start or the last :func:`reset_peak_rss` (Linux ``VmHWM``;
    None elsewhere)."""
    return _status_bytes("VmHWM")


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux ``VmRSS``; None elsewhere)."""
    return _status_bytes("VmRSS")


def reset_peak_rss() -> bool:
    """Start a new peak-memory window: the kernel's peak mark drops to the current resident memory (Linux
    ``/proc/self/clear_refs`` = 5). False where that is not possible: the peak then keeps counting from start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def hardware_description() -> str:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"{torch.cuda.device_count()} x {name}"
    cores = torch.get_num_threads()
    return f"CPU ({cpu_model()}, {cores} threads)"


def save_run_records(trainer, objective: str, datasets: list[str] | None = None) -> None:
    """Write trainer_state.json, training_args.json and run_info.json into ``trainer.args.output_dir``."""
    if not trainer.is_world_process_zero():
        return
    out = Path(trainer.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_state()
    atomic_write_text(out / "training_args.json", trainer.args.to_json_string())
    info = {
        "objective": objective,
        "hardware": hardware_description(),
        "world_size": trainer.args.world_size,
        "datasets": [str(d) for d in (datasets or [])],
    }
    atomic_write_json(out / "run_info.json", info)
