"""The losses of SimCLR, BYOL, SwAV, CC and ProPos by hand, their options, their distributed losses, and the
configurations shipped for them (the contract every method keeps is tests/test_method_contract.py)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from deepclust.config import CONFIG_DIR, build_config
from deepclust.errors import ConfigError
from deepclust.losses import (
    byol_loss,
    cc_entropy_term,
    cluster_contrastive_loss,
    nearest_neighbour_contrast,
    nt_xent,
    sinkhorn,
    swav_loss,
)
from deepclust.methods import METHODS, method_class
from deepclust.methods.base import EXTRA_SPLIT, Batch, Method, TrainingProgress
from deepclust.methods.common import BackboneMethod, NeighbourPositives
from deepclust.models.ema import cosine_momentum
from deepclust.models.support_set import pixel_keys

IMAGE_SHAPE = (1, 8, 8)
K = 4
BATCH = 16
# Tiny sizes: a narrow small CNN on the 8×8 digits, small heads.
TINY = ["model.backbone=small_cnn", "model.width=4", "optim.batch_size=16", "train.channels_last=false"]
# The methods built on views alone (the ones that start from a finished run are tested in test_scan.py).
NAMES = sorted(
    name
    for name, cls in METHODS.items()
    if issubclass(cls, BackboneMethod) and cls.pretrained_setting is None
)


def make_config(name: str, *extra: str) -> DictConfig:
    """A digits configuration of ``name`` at tiny sizes."""
    settings = METHODS[name].tiny_settings or ()
    return build_config(method=name, dataset="digits", overrides=[*TINY, *settings, *extra])


def make_method(name: str, *extra: str) -> Method:
    torch.manual_seed(0)
    return method_class(name)(make_config(name, *extra), IMAGE_SHAPE, K)


def images(seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BATCH, *IMAGE_SHAPE), dtype=torch.uint8, generator=generator)


def fixed_views(method: Method, seed: int = 1) -> list[Tensor]:
    """Replace the method's random augmentation by two fixed views; returns them."""
    generator = torch.Generator().manual_seed(seed)
    views = [torch.randn(BATCH, *IMAGE_SHAPE, generator=generator) for _ in range(2)]
    method.augmenter.forward = lambda _images: [v.clone() for v in views]  # type: ignore[method-assign]
    return views


def train_steps(
    method: Method, steps: int, start: int = 0, total_steps: int = 10, steps_per_epoch: int = 2
) -> list[dict[str, Tensor]]:
    """The training loop's step order (base.py) for steps ``start, …, start + steps − 1`` with Adam, in a run
    of ``total_steps`` steps, ``steps_per_epoch`` to an epoch."""
    optimizer = torch.optim.Adam(method.parameter_groups(0.0), lr=1e-2)
    history = []
    for step in range(start, start + steps):
        losses = method(Batch(images(step)))
        losses["loss"].backward()
        progress = TrainingProgress(step, step / total_steps, steps_per_epoch)
        method.on_before_optimizer_step(progress)
        optimizer.step()
        method.on_after_optimizer_step(progress)
        optimizer.zero_grad(set_to_none=True)
        history.append({k: v.detach() for k, v in losses.items()})
    return history


def test_simclr_loss_by_hand() -> None:
    """NT-Xent at the configured τ between the projections of the two views (one backbone pass for both, so
    the projector's BatchNorm sees the 2N views together)."""
    method = make_method("simclr", "params.temperature=0.3").train()
    view_a, view_b = fixed_views(method)
    losses = method(Batch(images()))
    z_a, z_b = method.projector(method.backbone(torch.cat([view_a, view_b]))).chunk(2)
    torch.testing.assert_close(losses["loss"], nt_xent(z_a, z_b, 0.3))
    assert not torch.allclose(losses["loss"], nt_xent(z_a, z_b, 0.5))


def test_byol_loss_by_hand() -> None:
    """Each view's prediction against the other view's target projection, both orders summed (Eq. 2 + L̃)."""
    method = make_method("byol").train()
    view_a, view_b = fixed_views(method)
    losses = method(Batch(images()))
    pred_a = method.predictor(method.projector(method.backbone(view_a)))
    pred_b = method.predictor(method.projector(method.backbone(view_b)))
    with torch.no_grad():
        target_a, target_b = method.target(view_a), method.target(view_b)
    expected = byol_loss(pred_a, target_b) + byol_loss(pred_b, target_a)
    torch.testing.assert_close(losses["loss"], expected)
    assert not torch.allclose(expected, byol_loss(pred_a, target_a) + byol_loss(pred_b, target_b))


def test_swav_loss_by_hand() -> None:
    """Swapped prediction at the configured τ and ε: −½ [mean_i Σ_k q_b log p_a + mean_i Σ_k q_a log p_b], the
    codes q by Sinkhorn from each view's prototype scores, p the softmax of the other view's scores / τ."""
    method = make_method("swav", "params.temperature=0.2", "params.epsilon=0.1").train()
    view_a, view_b = fixed_views(method)
    losses = method(Batch(images()))
    z = F.normalize(method.projector(method.backbone(torch.cat([view_a, view_b]))), dim=1)
    scores_a, scores_b = method.prototypes(z).chunk(2)
    with torch.no_grad():
        codes_a = sinkhorn(scores_a, 0.1, method.params.sinkhorn_iterations)
        codes_b = sinkhorn(scores_b, 0.1, method.params.sinkhorn_iterations)
    log_p_a, log_p_b = F.log_softmax(scores_a / 0.2, dim=1), F.log_softmax(scores_b / 0.2, dim=1)
    expected = -0.5 * ((codes_b * log_p_a).sum(1).mean() + (codes_a * log_p_b).sum(1).mean())
    torch.testing.assert_close(losses["loss"], expected)
    unswapped = -0.5 * ((codes_a * log_p_a).sum(1).mean() + (codes_b * log_p_b).sum(1).mean())
    assert not torch.allclose(expected, unswapped)


@pytest.mark.parametrize("name", NAMES)
def test_needs_two_views(name: str) -> None:
    with pytest.raises(ConfigError, match="num_views"):
        make_method(name, "augment.num_views=1", "augment.blur_prob=[0.0]", "augment.solarize_prob=[0.0]")


# ---------------------------------------------------------------------------------------------- BYOL


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0.0, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(0.5, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(1.0, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(1.5, 0.99) == pytest.approx(1.0)  # past the end of training it stays at 1
    assert cosine_momentum(0.3, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi * 0.3) + 1) / 2)


def step_target_and_check_ema(method: Method, online: torch.nn.Module, tau: float) -> None:
    """Run the method's after-step hook and check that every float tensor of its target moved to
    τ·target + (1 − τ)·online (integer buffers, such as BatchNorm's step count, are copied), at least one of them
    changing."""
    target_before = [t.clone() for t in method.target.state_dict().values()]
    online_now = [o.clone() for o in online.state_dict().values()]
    method.on_after_optimizer_step(TrainingProgress(3, 0.3, 10))
    assert method.momentum == pytest.approx(tau)
    moved = 0
    for key, t_old, o, t_new in zip(
        method.target.state_dict(),
        target_before,
        online_now,
        method.target.state_dict().values(),
        strict=True,
    ):
        if t_old.is_floating_point():
            assert torch.allclose(t_new, tau * t_old + (1 - tau) * o, atol=1e-6), key
            moved += int(not torch.equal(t_new, t_old))
        else:
            assert torch.equal(t_new, o), key
    assert moved > 0


def test_byol_target_gets_no_gradient_and_follows_ema() -> None:
    method = make_method("byol", "params.base_momentum=0.9").train()
    online = torch.nn.Sequential(method.backbone, method.projector)
    # The target starts as an exact copy of the online encoder.
    for t, o in zip(method.target.state_dict().values(), online.state_dict().values(), strict=True):
        assert torch.equal(t, o)
    optimizer = torch.optim.SGD(method.parameter_groups(0.0), lr=0.1)
    method(Batch(images()))["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.target.parameters())
    optimizer.step()
    step_target_and_check_ema(method, online, 1 - (1 - 0.9) * (math.cos(math.pi * 3 / 10) + 1) / 2)


# ---------------------------------------------------------------------------------------------- SwAV


def test_swav_prototypes_frozen_then_learned_and_unit_norm() -> None:
    method = make_method("swav", "params.freeze_prototypes_epochs=0.1").train()
    optimizer = torch.optim.Adam(method.parameter_groups(0.0), lr=1e-2)
    weights = method.prototypes.weight
    for step in range(2):
        before = weights.detach().clone()
        method(Batch(images(step)))["loss"].backward()
        assert weights.grad is not None
        progress = TrainingProgress(step, step / 10, 10)
        method.on_before_optimizer_step(progress)
        frozen = step < 1  # 0.1 epochs of 10 steps
        assert (weights.grad is None) == frozen
        optimizer.step()
        method.on_after_optimizer_step(progress)
        optimizer.zero_grad(set_to_none=True)
        # Renormalising unit rows may change the last bits, so "unchanged" is up to rounding.
        assert bool((weights.detach() - before).abs().max() > 1e-4) != frozen
        assert torch.allclose(weights.detach().norm(dim=1), torch.ones(K), atol=1e-6)


def test_swav_queue_fills_round_trips_and_is_used() -> None:
    extra = ["params.queue_length=32", "params.queue_start_epoch=1", "train.epochs=5"]
    method = make_method("swav", *extra).train()
    assert method.queue.shape == (2, 32, 8)
    assert "queue" in dict(method.named_buffers())
    train_steps(method, steps=2)  # 2 steps to an epoch: epoch 1 starts after 2 steps
    assert not method.queue.any()
    train_steps(method, steps=1, start=2)
    assert method.queue[:, :BATCH].any(dim=-1).all() and not method.queue[:, BATCH:].any()
    train_steps(method, steps=1, start=3)
    assert method.queue.any(dim=-1).all()
    restored = make_method("swav", *extra)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.queue, method.queue)
    assert restored.get_extra_state() == method.get_extra_state()
    # Once full, the queue takes part in Sinkhorn, so the loss differs from a queue-less model's.
    fixed_views(method)
    fixed_views(restored)
    with_queue = method(Batch(images()))["loss"]
    restored.queue.zero_()
    restored.set_extra_state({**restored.get_extra_state(), "queue_filled": 0})
    without_queue = restored(Batch(images()))["loss"]
    assert not torch.allclose(with_queue, without_queue)


def test_swav_multi_crop_trains_on_small_views_and_other_methods_refuse_them() -> None:
    """Every view, large or small, predicts the Sinkhorn codes of the two large ones (SwAV Eq. 1 summed over the
    views): the loss equals ``swav_loss`` over all views' scores, not only the assignment views'."""
    generator = torch.Generator().manual_seed(0)

    def check(method: Method, sizes: list[int]) -> None:
        views = [torch.randn(BATCH, 1, size, size, generator=generator) for size in sizes]
        method.views = lambda _images: [view.clone() for view in views]  # type: ignore[method-assign]
        loss = method(Batch(images()))["loss"]
        with torch.no_grad():
            scores = list(method.prototypes(method.embed(views)).chunk(len(views)))
        epsilon, iterations, tau = (
            method.params.epsilon,
            method.params.sinkhorn_iterations,
            method.params.temperature,
        )
        codes = [sinkhorn(view_scores, epsilon, iterations) for view_scores in scores[:2]]
        assert loss.item() == pytest.approx(swav_loss(scores, codes, tau).item(), rel=1e-5)
        assert not math.isclose(loss.item(), swav_loss(scores[:2], codes, tau).item(), rel_tol=1e-3)
        loss.backward()
        assert next(method.backbone.parameters()).grad is not None

    method = make_method("swav", "augment.small_crops=2", "augment.small_crop_size=4").train()
    seen: list[tuple[int, ...]] = []
    hook = method.backbone.register_forward_hook(lambda _m, inputs, _out: seen.append(tuple(inputs[0].shape)))
    method(Batch(images()))
    # one backbone pass per resolution: the 2 large views, then the 2 small ones
    assert seen == [(2 * BATCH, 1, 8, 8), (2 * BATCH, 1, 4, 4)]
    hook.remove()
    check(method, [8, 8, 4, 4])
    # more large views than assignment views: every view predicts the codes of views 0 and 1
    three = make_method(
        "swav", "augment.num_views=3", "augment.blur_prob=[0,0,0]", "augment.solarize_prob=[0,0,0]"
    ).train()
    check(three, [8, 8, 8])
    with pytest.raises(ConfigError, match="small_crops=0"):
        make_method("cc", "augment.small_crops=2")


def test_swav_other_prototype_count_reads_out_kmeans() -> None:
    method = make_method("swav", "params.num_prototypes=7").eval()
    assert method.prototypes.weight.shape[0] == 7
    assert method.primary_readout == "kmeans"
    assert "head" not in method.readout(images())


# ---------------------------------------------------------------------------------------------- CC


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_cc_loss_is_the_sum_of_its_parts(variant: str) -> None:
    temperatures = ("params.instance_temperature=0.3", "params.cluster_temperature=0.7")
    method = make_method(
        "cc", f"params.entropy_variant={variant}", "params.entropy_weight=2.0", *temperatures
    ).train()
    view_a, view_b = fixed_views(method)
    losses = method(Batch(images()))
    h_a, h_b = method.backbone(view_a), method.backbone(view_b)
    z_a = F.normalize(method.instance_head(h_a), dim=1)
    z_b = F.normalize(method.instance_head(h_b), dim=1)
    c_a, c_b = method.cluster_heads[0](h_a), method.cluster_heads[0](h_b)
    instance = nt_xent(z_a, z_b, 0.3)
    cluster = cluster_contrastive_loss(c_a, c_b, 0.7)
    entropy = 2.0 * cc_entropy_term(c_a, c_b, variant=variant)
    assert torch.allclose(losses["instance"], instance)
    assert torch.allclose(losses["cluster"], cluster)
    assert torch.allclose(losses["entropy"], entropy)
    assert torch.allclose(losses["loss"], instance + cluster + entropy)


def test_cc_instance_only_is_the_instance_loss_and_leaves_the_cluster_head_without_gradient() -> None:
    method = make_method("cc").train()
    view_a, view_b = fixed_views(method)
    losses = method(Batch(images(), split=EXTRA_SPLIT))
    assert set(losses) == {"loss", "instance"}
    h_a, h_b = method.backbone(view_a), method.backbone(view_b)
    z_a = F.normalize(method.instance_head(h_a), dim=1)
    z_b = F.normalize(method.instance_head(h_b), dim=1)
    assert torch.allclose(losses["loss"], nt_xent(z_a, z_b, 0.5))
    losses["loss"].backward()
    assert all(p.grad is None for p in method.cluster_heads.parameters())
    assert all(p.grad is not None for p in method.instance_head.parameters())
    assert method.uses_extra_split and not method_class("simclr").uses_extra_split


@pytest.mark.parametrize(
    "override,message",
    [
        ("params.entropy_variant=both", "entropy_variant"),
        ("params.num_heads=0", "num_heads"),
        ("params.head_loss_momentum=1.0", "head_loss_momentum"),
    ],
)
def test_cc_rejects_bad_settings(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_method("cc", override)


def test_cc_heads_minimise_their_mean_loss_and_read_out_the_lowest() -> None:
    """Three cluster heads: the loss is L_ins plus the mean of their L_clu, each head's running loss follows
    its own L_clu, and the read-out and the logged parts are those of the head with the lowest one."""
    method = make_method("cc", "params.num_heads=3", "params.head_loss_momentum=0.5").train()
    assert method.cluster_heads.best == 0  # no step yet: every running loss is NaN
    view_a, view_b = fixed_views(method)
    h_a, h_b = method.backbone(view_a), method.backbone(view_b)
    z_a = F.normalize(method.instance_head(h_a), dim=1)
    z_b = F.normalize(method.instance_head(h_b), dim=1)
    instance = nt_xent(z_a, z_b, 0.5).detach()
    clusters, entropies = [], []
    for head in method.cluster_heads:
        c_a, c_b = head(h_a), head(h_b)
        clusters.append(cluster_contrastive_loss(c_a, c_b, 1.0).detach())
        entropies.append(cc_entropy_term(c_a, c_b).detach())
    by_hand = torch.stack(clusters) + torch.stack(entropies)
    assert len(set(by_hand.tolist())) == 3  # the heads start from different weights

    losses = method(Batch(images()))
    torch.testing.assert_close(losses["loss"].detach(), instance + by_hand.mean())
    torch.testing.assert_close(method.cluster_heads.running_losses, by_hand)  # the first step sets them
    best = int(by_hand.argmin())
    assert method.cluster_heads.best == best
    torch.testing.assert_close(losses["cluster"].detach(), clusters[best])
    torch.testing.assert_close(losses["entropy"].detach(), entropies[best])
    method.cluster_heads.running_losses.zero_()
    method(
        Batch(images())
    )  # the same views and weights again: momentum 0.5 moves the running losses half-way
    torch.testing.assert_close(method.cluster_heads.running_losses, 0.5 * by_hand)

    method.cluster_heads.running_losses.copy_(torch.tensor([0.5, -1.0, 0.2]))
    assert method.cluster_heads.best == 1
    torch.testing.assert_close(method.cluster_probs(h_a), method.cluster_heads[1](h_a))
    saved = method.state_dict()["cluster_heads.running_losses"]
    assert torch.equal(saved, torch.tensor([0.5, -1.0, 0.2]))


@pytest.mark.parametrize("space", ["embedding", "pixels"])
def test_cc_neighbour_queue_uses_nt_xent_until_full_then_nnclr_against_the_support_set(space: str) -> None:
    """With a support set of one batch: step 1 is CC's NT-Xent and fills it; step 2, on the same images and
    views, finds each sample's own first view of step 1 as its neighbour (in either space) and takes NNCLR's
    symmetric loss; the set round-trips through the state dict."""
    extra = (f"params.neighbour_queue={BATCH}", f"params.neighbour_space={space}")
    method = make_method("cc", *extra).train()
    view_a, view_b = fixed_views(method)
    with torch.no_grad():
        z_a = F.normalize(method.instance_head(method.backbone(view_a)), dim=1)
        z_b = F.normalize(method.instance_head(method.backbone(view_b)), dim=1)
    first = method(Batch(images()))
    torch.testing.assert_close(first["instance"].detach(), nt_xent(z_a, z_b, 0.5))
    assert method.neighbours.support_set.full
    torch.testing.assert_close(method.neighbours.support_set.embeddings, z_a)
    second = method(Batch(images()))
    # in pixel space both views find their image's step-1 entry; in embedding space view b finds its own
    neighbour_b = z_a if space == "pixels" else z_a[(z_b @ z_a.T).argmax(dim=1)]
    expected = 0.5 * (
        nearest_neighbour_contrast(z_a, z_b, 0.5) + nearest_neighbour_contrast(neighbour_b, z_a, 0.5)
    )
    torch.testing.assert_close(second["instance"].detach(), expected)
    assert not torch.allclose(second["instance"], first["instance"])
    restored = make_method("cc", *extra)
    restored.load_state_dict(method.state_dict())
    support = restored.neighbours.support_set
    assert support.full and torch.equal(support.embeddings, z_a)


def test_cc_pixel_neighbours_compare_images_pooled_to_the_key_side() -> None:
    method = make_method(
        "cc",
        f"params.neighbour_queue={BATCH}",
        "params.neighbour_space=pixels",
        "params.neighbour_key_side=2",
    ).train()
    batch = images()
    method(Batch(batch))
    channels = batch.shape[1]
    keys = method.neighbours.support_set.keys
    torch.testing.assert_close(keys, pixel_keys(batch, side=2))
    assert keys.shape[1] == channels * 2 * 2


@pytest.mark.parametrize(
    "override,message",
    [
        ("params.neighbour_space=labels", "neighbour_space"),
        ("params.neighbour_queue=-1", "neighbour_queue"),
        ("params.neighbour_key_side=0", "neighbour_key_side"),
    ],
)
def test_cc_rejects_bad_neighbour_settings(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_method("cc", override)


def test_cc_head_zero_is_the_single_head() -> None:
    """More heads add only their own weights; head 0 starts from the single head's weights."""
    single, multi = make_method("cc"), make_method("cc", "params.num_heads=2")
    added = set(multi.state_dict()) - set(single.state_dict())
    assert set(single.state_dict()) < set(multi.state_dict())
    assert added and all(
        k.startswith(("cluster_heads.heads.1.", "cluster_heads.running_losses")) for k in added
    )
    for a, b in zip(single.cluster_heads[0].parameters(), multi.cluster_heads[0].parameters(), strict=True):
        assert torch.equal(a, b)
    assert len(multi.cluster_heads) == 2


# ---------------------------------------------------------------------------------------------- DDP

WORLD = 2
# every method, and CC's stacked cluster heads (gathered along the samples of H×N×K assignments)
DISTRIBUTED_CASES = {name: (name,) for name in NAMES} | {
    "cc, 3 heads": ("cc", "params.num_heads=3"),
    "cc, neighbours": ("cc", "params.neighbour_queue=8"),
    "cc, pixel neighbours": ("cc", "params.neighbour_queue=8", "params.neighbour_space=pixels"),
}


def fill_support_set(method: Method) -> None:
    """Fill a CC support set with fixed unit embeddings and keys (every process pushes the same rows, so the
    gathered push leaves every process the set one process gets)."""
    neighbours = getattr(method, "neighbours", None)
    if not isinstance(neighbours, NeighbourPositives):
        return
    support = neighbours.support_set
    generator = torch.Generator().manual_seed(2)
    size, dim = support.embeddings.shape
    embeddings = F.normalize(torch.randn(size, dim, generator=generator), dim=1)
    keys = (
        None
        if support.keys is None
        else F.normalize(torch.randn(size, support.keys.shape[1], generator=generator), dim=1)
    )
    support.push(embeddings, keys)
    assert support.full


def _distributed_worker(rank: int, port: int, out_dir: str) -> None:
    """One of WORLD gloo processes: each method's loss on this rank's half of a fixed batch."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for case, (name, *extra) in DISTRIBUTED_CASES.items():
            method = make_method(
                name, *extra
            ).eval()  # BatchNorm on running statistics: independent of the split
            views = fixed_views(method)
            fill_support_set(method)
            rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
            method.augmenter.forward = lambda _images, v=views, r=rows: [x[r].clone() for x in v]
            losses = method(Batch(images()[rows]))
            losses["loss"].backward()
            results[case] = {k: v.detach() for k, v in losses.items()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_distributed_losses_average_to_the_single_process_loss(tmp_path: Path) -> None:
    """Gathered NT-Xent and cluster contrast, all-reduced Sinkhorn, global-batch entropy: the mean over two
    processes of their losses on half batches equals the loss of one process on the whole batch."""
    single = {}
    for case, (name, *extra) in DISTRIBUTED_CASES.items():
        method = make_method(name, *extra).eval()
        fixed_views(method)
        fill_support_set(method)
        single[case] = {k: v.detach() for k, v in method(Batch(images())).items()}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_distributed_worker, args=(port, str(tmp_path)), nprocs=WORLD, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for case, values in single.items():
        for key, value in values.items():
            mean = sum(r[case][key] for r in ranks) / WORLD
            assert torch.allclose(mean, value, atol=1e-5), (case, key, mean, value)


# ---------------------------------------------------------------------------------------------- configs

SHIPPED = sorted(CONFIG_DIR.glob("*/*.yaml"))


def test_every_method_has_its_configs() -> None:
    expected = {"digits", "fashion-mnist", "cifar10", "cifar100-20", "stl10", "imagenet10", "imagenet-dogs"}
    expected.add("tiny-imagenet")
    for name in NAMES:
        assert {path.stem for path in (CONFIG_DIR / name).glob("*.yaml")} == expected


def test_configs_ship_inside_the_package() -> None:
    """A wheel install must find the CPU defaults: the YAML files sit in the package and its package-data."""
    import tomllib

    import deepclust

    assert CONFIG_DIR.parent == Path(deepclust.__file__).resolve().parent
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["deepclust"]
    assert SHIPPED and all(any(p.relative_to(CONFIG_DIR.parent).match(g) for g in patterns) for p in SHIPPED)
