"""What produced a number: code version, environment, dataset fingerprint."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from pamm.config import REPO_ROOT

_PACKAGES = ("torch", "timm", "numpy", "pandas", "mamba-ssm", "triton", "fvcore", "ptflops", "snakemake", "pamm-bench")
# Split files that define a dataset's content, per layout.
_SPLIT_GLOBS = ("gt_sets/*.txt", "ImageSets/Context/*.txt")


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit SHA and whether the working tree had uncommitted changes ("unknown" outside git)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=repo, capture_output=True, text=True, check=True, timeout=10,
            ).stdout.strip()
        )
        return {"git_sha": sha, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "git_dirty": None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "driver": _nvidia_driver() if cuda else None,
        "packages": package_versions(),
        "slurm": slurm_job(),
    }


def slurm_job() -> dict[str, Any] | None:
    """The SLURM job this process runs in, from the variables slurmd sets; None outside SLURM.

    A run resumed over several jobs (time limit: a new job; requeue: the same id) records the one that finished it.
    """
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    return {
        "job_id": job_id,
        "cluster": os.environ.get("SLURM_CLUSTER_NAME"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "node": os.environ.get("SLURMD_NODENAME"),
    }


def dataset_fingerprint(root: str | Path) -> dict[str, Any]:
    """Id counts and sha256 of the split files (cheap, and changes whenever the split changes)."""
    root = Path(root)
    splits: dict[str, Any] = {}
    for pattern in _SPLIT_GLOBS:
        for path in sorted(root.glob(pattern)):
            data = path.read_bytes()
            ids = [line for line in data.decode(errors="replace").splitlines() if line.strip()]
            splits[str(path.relative_to(root))] = {"ids": len(ids), "sha256": hashlib.sha256(data).hexdigest()}
    marker = root / "pamm_synthetic.json"
    return {"root": str(root.resolve()), "splits": splits, "synthetic": marker.is_file()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
