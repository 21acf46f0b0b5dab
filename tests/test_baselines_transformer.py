"""InvPT and TaskPrompter at tiny sizes: shapes, gradients, checkpoints, and their attention maths."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import baselines  # noqa: F401  (registers the baseline models)
from pamm.config import resolve_config
from pamm.models import create_model
from pamm.tasks import dataset_tasks

MODELS = ("invpt", "taskprompter")
DATASETS = ("nyud", "pascal")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def build(name: str, dataset: str, seed: int = 0, img_size: tuple[int, int] | None = None):
    cfg = resolve_config("tiny", dataset, name)
    size = tuple(img_size or cfg["data"]["size"])
    torch.manual_seed(seed)
    model = create_model(name, dataset_tasks(dataset), img_size=size, **cfg["model"])
    return model, size


def tiny_aux_grid(size: tuple[int, int]) -> tuple[int, int]:
    """InvPT's intermediate predictions: the tiny ViT (patch 8) grid, halved and rounded up."""
    return math.ceil(size[0] / 8 / 2), math.ceil(size[1] / 8 / 2)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_shapes_and_gradients(name: str, dataset: str) -> None:
    model, size = build(name, dataset)
    tasks = dataset_tasks(dataset)
    image = torch.randn(2, 3, *size)

    model.train()
    out = model(image)
    for task, channels in tasks.items():
        assert out[task].shape == (2, channels, *size), task
    if name == "invpt":
        assert set(out["aux"]) == set(tasks)
        for task, channels in tasks.items():
            assert out["aux"][task].shape == (2, channels, *tiny_aux_grid(size)), task
    else:
        assert "aux" not in out
    loss = sum(out[t].square().mean() for t in tasks) + sum(a.square().mean() for a in out.get("aux", {}).values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        out = model(image)
    assert set(out) == set(tasks), "no aux outside training"
    for task, channels in tasks.items():
        assert out[task].shape == (2, channels, *size)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip_reproduces_eval_outputs(name: str, tmp_path) -> None:
    model, size = build(name, "pascal", seed=0)
    model.train()
    model(torch.randn(2, 3, *size))  # move the BN running stats off their defaults
    model.eval()
    image = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = model(image)
    torch.save(model.state_dict(), tmp_path / "model.pt")

    restored, _ = build(name, "pascal", seed=1)
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    restored.eval()
    with torch.no_grad():
        got = restored(image)
    for task in expected:
        assert torch.equal(got[task], expected[task]), task


def test_taskprompter_prompt_attention_equals_block_attention() -> None:
    """Our recomputed prompt rows, softmaxed, equal the attention timm's block itself computes."""
    from baselines.taskprompter import prompt_attention_logits

    model, size = build("taskprompter", "nyud")
    model.eval()
    block = model.backbone.blocks[1]
    tokens = torch.cat([model.prompts.unsqueeze(0).expand(2, -1, -1), torch.randn(2, 80, model.backbone.embed_dim)], dim=1)
    captured = {}
    block.attn.fused_attn = False  # the explicit path passes the probabilities through attn_drop
    handle = block.attn.attn_drop.register_forward_hook(lambda m, inp, out: captured.setdefault("probs", inp[0]))
    try:
        with torch.no_grad():
            block(tokens)
            logits = prompt_attention_logits(block.attn, block.norm1(tokens), model.num_prompts)
    finally:
        handle.remove()
    num_prompts = model.num_prompts
    assert logits.shape == (2, block.attn.num_heads, num_prompts, num_prompts + 80)
    probs = torch.softmax(logits * block.attn.scale, dim=-1)
    torch.testing.assert_close(probs, captured["probs"][:, :, :num_prompts], rtol=1e-5, atol=1e-6)

    # And against a from-scratch computation with the qkv weights on a 1-sample case.
    normed = block.norm1(tokens[:1])
    q_all, k_all, _ = block.attn.qkv(normed).detach().chunk(3, dim=-1)
    head_dim = block.attn.head_dim
    for head in range(block.attn.num_heads):
        cols = slice(head * head_dim, (head + 1) * head_dim)
        direct = q_all[0, :num_prompts, cols] @ k_all[0, :, cols].T
        torch.testing.assert_close(logits[0, head], direct, rtol=1e-5, atol=1e-5)


def test_taskprompter_block_step_is_the_timm_block_plus_the_prompt_update() -> None:
    """``_run_block`` with the update zeroed is timm's own block; with it, only the prompt rows change."""
    model, _ = build("taskprompter", "nyud")
    model.eval()
    block, update = model.backbone.blocks[0], model.prompt_updates[0]
    with torch.no_grad():
        update.to_channels.weight.normal_(0.0, 0.5)
        tokens = torch.cat([model.prompts.unsqueeze(0).expand(2, -1, -1), torch.randn(2, 80, model.backbone.embed_dim)], 1)
        plain = block(tokens)
        with_update, normed, prompt_pixels = model._run_block(block, update, tokens)
        p = model.num_prompts
        torch.testing.assert_close(with_update[:, p:], plain[:, p:], rtol=1e-6, atol=1e-6)
        assert (with_update[:, :p] - plain[:, :p]).abs().max() > 1e-3
        torch.testing.assert_close(normed, block.norm1(tokens))
        torch.testing.assert_close(prompt_pixels, update.to_pixels(block.norm1(tokens)[:, :p]))

        update.to_channels.weight.zero_()
        update.to_channels.bias.zero_()
        torch.testing.assert_close(model._run_block(block, update, tokens)[0], plain, rtol=1e-6, atol=1e-6)


def test_taskprompter_every_block_but_the_last_tap_maps_its_prompts_back() -> None:
    model, _ = build("taskprompter", "pascal")
    assert len(model.prompt_updates) == model.taps[-1] + 1
    assert all(u.to_channels is not None for u in model.prompt_updates[:-1])
    assert model.prompt_updates[-1].to_channels is None
    pixels = model.grid[0] * model.grid[1]
    assert model.prompt_updates[0].to_pixels.weight.shape == (pixels, model.backbone.embed_dim)
    assert all(h.body[0].bias is not None for h in model.heads.values())


def test_invpt_message_passing_equals_explicit_score_fusion() -> None:
    """The SDPA form (head mixing folded into q, message as mask) equals softmax(conv1x1([S, resized M])) @ v."""
    from baselines.invpt import JointTaskAttention

    torch.manual_seed(0)
    tasks, dim, heads, grid = 3, 12, 2, (6, 8)
    attn = JointTaskAttention(tasks, dim, heads, kv_stride=4, receives_message=True).eval()
    maps = [torch.randn(2, dim, *grid) for _ in range(tasks)]
    message_grid = (2, 3)  # deliberately not half the query grid (3, 4): odd-size resizing
    keys = tasks * 2 * 2
    message = torch.randn(2, heads, tasks * message_grid[0] * message_grid[1], keys)
    with torch.no_grad():
        got, scores = attn(maps, (message, message_grid), want_message=True)

        queries = torch.cat([c(m).flatten(2).transpose(1, 2) for c, m in zip(attn.query_convs, maps)], 1)
        q = attn._heads(attn.proj_q(queries))
        pooled = torch.cat([F.avg_pool2d(m, 4, 4, ceil_mode=True).flatten(2).transpose(1, 2) for m in maps], 1)
        k, v = attn._heads(attn.proj_k(pooled)), attn._heads(attn.proj_v(pooled))
        current = q @ k.transpose(-2, -1) * attn.scale
        resized = attn._resize_message(message, message_grid, (3, 4))
        fused = attn.fuse_scores(torch.cat([current, resized], dim=1))
        out = attn.proj((fused.softmax(-1) @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(scores[0], fused, rtol=1e-5, atol=1e-5)
    assert scores[1] == (3, 4)
    expected = [t.transpose(1, 2).reshape(2, dim, 3, 4) for t in out.split(12, dim=1)]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_invpt_runs_on_odd_token_grids() -> None:
    model, _ = build("invpt", "nyud", img_size=(56, 72))  # 7x9 tokens -> decoder grids 4x5, 8x10, 16x20
    model.train()
    out = model(torch.randn(1, 3, 56, 72))
    assert out["semseg"].shape == (1, 40, 56, 72)
    assert out["aux"]["semseg"].shape == (1, 40, 4, 5)


def test_taskprompter_rejects_another_input_size() -> None:
    model, _ = build("taskprompter", "nyud")
    with pytest.raises(ValueError, match="token grid"):
        model(torch.randn(1, 3, 64, 64))
