"""Every registered model meets the multi-task interface: a ``backbone`` that profiling counts, and a decoder."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import baselines  # noqa: F401  (registers the baseline models)
from pamm.config import list_variants, resolve_config
from pamm.engine.build import build_model_for
from pamm.engine.profile import count_parameters
from pamm.models import MultiTaskModel, check_model, list_models
from pamm.tasks import DATASET_TASKS


def _points() -> list[tuple[str, str, str]]:
    """(model, dataset, variant): each registered model's default variant, the single-task one per task."""
    points = []
    for model in list_models():
        for dataset in ("nyud", "pascal"):
            variants = [v for v in list_variants(model) if v.removeprefix("stl_") in DATASET_TASKS[dataset]]
            points.append((model, dataset, variants[0] if model == "stl" else "default"))
    return points


def test_the_registry_holds_every_builtin_model():
    assert {"mtl", "stl", "pamm", "invpt", "taskprompter", "mtmamba", "mtmamba_pp"} <= set(list_models())


@pytest.mark.parametrize("model,dataset,variant", _points())
def test_every_model_reports_backbone_and_decoder_parameters(model, dataset, variant):
    """At the tiny scale (meta device: shapes only), profiling finds parameters both under ``model.backbone``
    and outside it, and the two add up to the total."""
    cfg = resolve_config("tiny", dataset, model, variant)
    with torch.device("meta"):
        built = build_model_for(cfg)
    assert isinstance(built, MultiTaskModel)
    counts = count_parameters(built)
    assert counts["params_backbone_m"] > 0, f"{model}: no parameters under model.backbone"
    assert counts["params_decoder_m"] > 0, f"{model}: no parameters outside model.backbone"
    backbone = sum(p.numel() for p in built.backbone.parameters()) / 1e6
    assert counts["params_backbone_m"] == pytest.approx(backbone)
    assert counts["params_backbone_m"] + counts["params_decoder_m"] == pytest.approx(counts["params_m"])


class _Decoder(nn.Module):
    def __init__(self, tasks: dict[str, int], encoder_name: str = "backbone") -> None:
        super().__init__()
        self.tasks = dict(tasks)
        setattr(self, encoder_name, nn.Conv2d(3, 4, 3))
        self.heads = nn.ModuleDict({t: nn.Conv2d(4, c, 1) for t, c in tasks.items()})


def test_the_check_names_the_model_and_the_missing_part():
    tasks = {"semseg": 40, "depth": 1}
    check_model(_Decoder(tasks), "ok", tasks)
    with pytest.raises(TypeError, match=r"model 'hidden' \(_Decoder\) has no `backbone` submodule: keep the image "
                                        r"encoder as `self.backbone`"):
        check_model(_Decoder(tasks, encoder_name="vit"), "hidden", tasks)
    with pytest.raises(TypeError, match=r"model 'fewer' \(_Decoder\): `tasks` is \{'semseg': 40\}, expected"):
        check_model(_Decoder({"semseg": 40}), "fewer", tasks)
    with pytest.raises(TypeError, match="model 'plain' .*no nn.Module"):
        check_model(object(), "plain", tasks)
    assert not isinstance(_Decoder(tasks, encoder_name="vit"), MultiTaskModel)
