"""The golden cases made from the authors' released code (``../shared/fixtures/released``), run as a user would.

Each case's ``case.json`` spells out the public command that imports its checkpoint; :func:`run_case` runs that
command through ``pamm.cli.main`` with the case's files, loads the run with ``pamm.checkpoints.load_run_model``,
and returns each task's relative error against the released float64 outputs.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RELEASED = REPO_ROOT.parent / "shared" / "fixtures" / "released"


@dataclass(frozen=True)
class Case:
    folder: Path
    info: dict

    @property
    def name(self) -> str:
        return str(self.folder.relative_to(RELEASED))

    @property
    def tolerance(self) -> float:
        tol = self.info.get("tolerance")
        if isinstance(tol, dict) and "rel" in tol:
            return float(tol["rel"])
        return float(self.info["comparison"]["recommended_tol"])

    def command(self, run_dir: Path) -> list[str]:
        """The case's import command (after ``pamm-bench``) with its files and ``run_dir`` filled in."""
        project = self.info["project"]
        words = shlex.split(project.get("command") or project["import_command"])
        assert words[:2] == ["pamm-bench", "import-checkpoint"], words[:2]
        args = []
        for word in words[2:]:
            if word == "--profile":  # the fixtures were recorded when the recipe scale's flag had that name
                word = "--scale"
            elif word == "RUN_DIR":
                word = str(run_dir)
            elif (self.folder / word).is_file():
                word = str(self.folder / word)
            args.append(word)
        return ["import-checkpoint", *args]


def released_cases(family: str) -> list[Case]:
    """Every case under ``released/<family>/`` (empty where the fixtures are absent)."""
    return [Case(path.parent, json.loads(path.read_text())) for path in sorted((RELEASED / family).glob("**/case.json"))]


def relative_errors(outputs: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per task: max|out - ref| / max|ref|, the fixtures' metric."""
    errors = {}
    for task, ref in reference.items():
        out = outputs[task]
        assert out.shape == ref.shape, (task, tuple(out.shape), tuple(ref.shape))
        errors[task] = float((out.double() - ref).abs().max() / ref.abs().max())
    return errors


def case_outputs(case: Case) -> dict:
    return torch.load(case.folder / "case.pt", map_location="cpu", weights_only=True)


def import_case(case: Case, run_dir: Path, extra_args: list[str] = ()) -> None:
    from pamm.cli import main

    rc = main(case.command(run_dir) + list(extra_args))
    assert rc == 0, f"import-checkpoint failed for {case.name}"


def model_outputs(run_dir: Path, image: torch.Tensor) -> dict[str, torch.Tensor]:
    from pamm.checkpoints import load_run_model

    model = load_run_model(run_dir).double()
    with torch.no_grad():
        return model(image)


def run_case(case: Case, run_dir: Path) -> dict[str, float]:
    """Import ``case`` through the public command into ``run_dir`` and compare the run's model with the release."""
    import_case(case, run_dir)
    data = case_outputs(case)
    return relative_errors(model_outputs(run_dir, data["input"]), data["outputs"])
