"""ConCURL: Eq. 5 and Eq. 6 by hand, Sinkhorn against an independent solver, the random transforms (and their
round trip through a checkpoint), the consensus loss reducing to the soft-clustering loss, the presets (a zero
weight computes nothing), the pairwise NMI against scikit-learn, the read-outs, the diversity log and its
figure (the contract every method keeps is tests/test_method_contract.py, its DDP case tests/test_methods.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.metrics import normalized_mutual_info_score
from test_benchmark_scripts import _script

from deepclust.config import build_config
from deepclust.data import ArrayDataset, load_dataset
from deepclust.engine.trainer import train
from deepclust.errors import ConfigError
from deepclust.losses import (
    consensus_loss,
    pairwise_nmi,
    random_transforms,
    sinkhorn,
    swav_loss,
    transformed_scores,
)
from deepclust.losses.consensus import ensemble_probabilities, transform_embeddings
from deepclust.methods import Batch
from deepclust.methods import concurl as concurl_module
from deepclust.methods.concurl import WEIGHT_PRESETS, ConCURL, loss_weights
from deepclust.runs import RunDir

IMAGE_SHAPE = (1, 8, 8)
K = 4
BATCH = 12
TINY = [
    "model.backbone=small_cnn",
    "model.width=4",
    "optim.batch_size=64",
    "train.channels_last=false",
    "train.precision=32",
    "train.progress=false",
    "kmeans.n_init=1",
    *(ConCURL.tiny_settings or ()),
]
LN3 = math.log(3)


@pytest.fixture(scope="module")
def digits() -> ArrayDataset:
    return load_dataset("digits")


def make_method(*extra: str, num_clusters: int = K, seed: int = 0) -> ConCURL:
    torch.manual_seed(seed)
    cfg = build_config(method="concurl", dataset="digits", overrides=[*TINY, f"seed={seed}", *extra])
    return ConCURL(cfg, IMAGE_SHAPE, num_clusters)


def images(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (BATCH, *IMAGE_SHAPE), dtype=torch.uint8, generator=generator)


def fix_views(method: ConCURL, seed: int = 1) -> None:
    """Replace the random augmentation by two fixed views."""
    generator = torch.Generator().manual_seed(seed)
    views = [torch.randn(BATCH, *IMAGE_SHAPE, generator=generator) for _ in range(2)]
    method.augmenter.forward = lambda _images: [v.clone() for v in views]  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------ Eq. 5 and Eq. 6


def test_soft_clustering_loss_eq5_by_hand() -> None:
    """τ = 0.1, scores τ·log-odds: p¹ = [1/4, 3/4], [1/2, 1/2]; p² = [3/4, 1/4], [1/4, 3/4]; q¹ = [1, 0],
    [1/2, 1/2]; q² = [0, 1], [0, 1]. L_21 = −¼[log ¾ + log ½], L_22 = −¼[log ¾ + ½ log ¼ + ½ log ¾], so
    L_2 = ¼[2 log 2 − 2.5 log ¾]."""
    tau = 0.1
    scores_1 = tau * torch.tensor([[0.0, LN3], [0.0, 0.0]])
    scores_2 = tau * torch.tensor([[LN3, 0.0], [0.0, LN3]])
    codes_1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    codes_2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    expected = (2 * math.log(2) - 2.5 * math.log(3 / 4)) / 4
    loss = swav_loss([scores_1, scores_2], [codes_1, codes_2], tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_consensus_loss_eq6_by_hand() -> None:
    """M = 2, B = 1, K = 2, τ = 0.1. p̃^(1,1) = [1/4, 3/4], p̃^(1,2) = [3/4, 1/4]; p̃^(2,1) = [1/2, 1/2],
    p̃^(2,2) = [1/4, 3/4]; q¹ = [1, 0], q² = [1/2, 1/2]. L_31 = −¼[log ¼ + log ¾] (each member's half-half
    mix of log ¼ and log ¾), L_32 = −¼[log ½ + log ¼], so L_3 = ¼[5 log 2 + log 4/3]."""
    tau = 0.1
    scores_1 = tau * torch.tensor([[[0.0, LN3]], [[LN3, 0.0]]])
    scores_2 = tau * torch.tensor([[[0.0, 0.0]], [[0.0, LN3]]])
    codes_1, codes_2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])
    expected = (5 * math.log(2) + math.log(4 / 3)) / 4
    assert consensus_loss(scores_1, scores_2, codes_1, codes_2, tau).item() == pytest.approx(
        expected, rel=1e-6
    )
    probs = ensemble_probabilities(scores_1, tau)
    torch.testing.assert_close(probs, torch.tensor([[[0.25, 0.75]], [[0.75, 0.25]]]))
    # the targets are constants: the gradient reaches the scores only
    scores = scores_1.clone().requires_grad_(True)
    codes = codes_2.clone().requires_grad_(True)
    consensus_loss(scores, scores_2, codes_1, codes, tau).backward()
    assert scores.grad is not None and codes.grad is None


def test_transformed_scores_by_hand() -> None:
    """z = (2, 1), prototypes e1, e2. Projections to d = 1: A = [1, 1] maps everything to positive numbers
    (cosines 1, 1); A = [1, −1] maps z to 1, e1 to 1, e2 to −1 (cosines 1, −1). The diagonal a = (1, 2) maps z
    to (2, 2), e1 to (1, 0), e2 to (0, 2): cosines 1/√2, 1/√2."""
    z = torch.tensor([[2.0, 1.0]])
    prototypes = torch.eye(2)
    projections = torch.tensor([[[1.0, 1.0]], [[1.0, -1.0]]])
    torch.testing.assert_close(
        transformed_scores(z, prototypes, projections), torch.tensor([[[1.0, 1.0]], [[1.0, -1.0]]])
    )
    diagonal = torch.tensor([[1.0, 2.0]])
    root = 1 / math.sqrt(2)
    torch.testing.assert_close(transformed_scores(z, prototypes, diagonal), torch.tensor([[[root, root]]]))
    # random cases against a loop over the members, both layouts
    generator = torch.Generator().manual_seed(0)
    z, prototypes = torch.randn(7, 6, generator=generator), torch.randn(5, 6, generator=generator)
    for transforms in (torch.randn(3, 4, 6, generator=generator), torch.randn(3, 6, generator=generator)):
        matrices = [torch.diag(t) if t.ndim == 1 else t for t in transforms]
        expected = torch.stack(
            [F.normalize(z @ a.T, dim=1) @ F.normalize(prototypes @ a.T, dim=1).T for a in matrices]
        )
        torch.testing.assert_close(transformed_scores(z, prototypes, transforms), expected)
        if transforms.ndim == 3:
            torch.testing.assert_close(
                transform_embeddings(z, transforms), torch.stack([z @ a.T for a in matrices])
            )


def test_random_transforms_kinds() -> None:
    """Orthogonal rows within each block of D (d > D takes several blocks); the plain Gaussian and diagonal
    shapes; the same generator seed gives the same draws."""
    projections = random_transforms(3, 16, 8, "orthogonal", torch.Generator().manual_seed(0))
    assert projections.shape == (3, 8, 16)
    gram = projections @ projections.mT
    off_diagonal = gram - torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
    assert off_diagonal.abs().max() < 1e-4
    # the rows have the length of Gaussian rows (χ with 16 degrees of freedom, mean ≈ 3.9), not 1
    assert 2.0 < projections.norm(dim=-1).mean() < 6.0
    tall = random_transforms(2, 4, 10, "orthogonal", torch.Generator().manual_seed(0))
    block = tall[:, :4] @ tall[:, :4].mT
    assert tall.shape == (2, 10, 4)
    assert (block - torch.diag_embed(torch.diagonal(block, dim1=-2, dim2=-1))).abs().max() < 1e-4
    assert random_transforms(3, 16, 8, "gaussian", torch.Generator().manual_seed(0)).shape == (3, 8, 16)
    assert random_transforms(3, 16, 8, "diagonal", torch.Generator().manual_seed(0)).shape == (3, 16)
    again = random_transforms(3, 16, 8, "orthogonal", torch.Generator().manual_seed(0))
    assert torch.equal(projections, again)
    with pytest.raises(ValueError, match="kind"):
        random_transforms(3, 16, 8, "rotation")


# ----------------------------------------------------------------------------------------------- Sinkhorn


def numpy_sinkhorn(scores: np.ndarray, epsilon: float, tol: float = 1e-13) -> np.ndarray:
    """An independent solver of Eq. 4: alternate the prototype and sample marginals of ``exp(s/ε)`` (float64,
    max-subtracted) until the plan stops changing; returns the B×K codes (rows sum to 1)."""
    plan = np.exp((scores - scores.max()) / epsilon)
    plan /= plan.sum()
    batch, k = plan.shape
    for _ in range(100_000):
        previous = plan.copy()
        plan /= plan.sum(axis=0, keepdims=True) * k  # every prototype 1/K
        plan /= plan.sum(axis=1, keepdims=True) * batch  # every sample 1/B
        if np.abs(plan - previous).max() < tol:
            break
    return plan * batch


def test_sinkhorn_marginals_and_an_independent_solver() -> None:
    """Cosine scores of 40 samples and 5 prototypes at ε = 0.05: after enough iterations every prototype holds
    1/K of the batch to 1e-3 and the codes are those of a solver run to convergence; without
    torch.distributed, ``distributed=True`` is the single-process solution (SwAV's code fails there)."""
    generator = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(40, 8, generator=generator), dim=1)
    prototypes = F.normalize(torch.randn(5, 8, generator=generator), dim=1)
    scores = z @ prototypes.T
    codes = sinkhorn(scores, 0.05, iterations=200)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(40))
    assert (codes.sum(dim=0) / 40 - 1 / 5).abs().max() < 1e-3
    reference = numpy_sinkhorn(scores.double().numpy(), 0.05)
    np.testing.assert_allclose(codes.double().numpy(), reference, atol=1e-4)
    torch.testing.assert_close(sinkhorn(scores, 0.05, 3, distributed=True), sinkhorn(scores, 0.05, 3))


# ---------------------------------------------------------------------------------------- the transforms


@pytest.mark.filterwarnings("ignore:read-out")
def test_transforms_are_a_buffer_drawn_from_the_seed_and_survive_a_checkpoint(
    tmp_path: Path, digits: ArrayDataset
) -> None:
    """The M transforms are in the state dict, the same for the same seed and different for another; a
    checkpoint of a trained run holds the very transforms the configuration draws, bit for bit, and loading
    them into a method of another seed restores them exactly."""
    method = make_method(num_clusters=10)
    assert "transforms" in method.state_dict()
    assert method.transforms.shape == (8, 4, 8)  # M × d × D of the tiny settings
    assert torch.equal(method.transforms, make_method().transforms)
    other = make_method(seed=1, num_clusters=10)
    assert not torch.equal(method.transforms, other.transforms)
    cfg = build_config(
        method="concurl",
        dataset="digits",
        overrides=[
            *TINY,
            "train.max_steps=2",
            "train.checkpoint_every_steps=1",
            "train.eval_every_epochs=1000",
        ],
    )
    run = RunDir(tmp_path / "run").create()
    train(cfg, run)
    saved = torch.load(run.last_checkpoint, weights_only=True)["method"]["transforms"]
    assert torch.equal(saved, ConCURL(cfg, digits.image_shape, 10).transforms)
    assert torch.equal(saved, method.transforms)  # the same seed (0) as the run's
    other.load_state_dict(torch.load(run.last_checkpoint, weights_only=True)["method"])
    assert torch.equal(other.transforms, saved)


def test_one_identity_transform_at_the_same_temperature_is_the_soft_clustering_loss() -> None:
    """M = 1, A = I, τ' = τ: every member is the untransformed soft clustering, so L3 = L2, for the pure
    functions in both layouts and for the method's forward."""
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(2 * BATCH, 6, generator=generator)
    prototypes = F.normalize(torch.randn(K, 6, generator=generator), dim=1)
    scores = F.normalize(z, dim=1) @ prototypes.T
    s_1, s_2 = scores.chunk(2)
    q_1, q_2 = sinkhorn(s_1), sinkhorn(s_2)
    soft = swav_loss([s_1, s_2], [q_1, q_2], 0.1)
    for identity in (torch.eye(6).unsqueeze(0), torch.ones(1, 6)):
        e_1, e_2 = transformed_scores(z, prototypes, identity).chunk(2, dim=1)
        torch.testing.assert_close(consensus_loss(e_1, e_2, q_1, q_2, 0.1), soft)
    method = make_method("params.num_transforms=1").eval()
    method.transforms = torch.eye(8).unsqueeze(0)
    fix_views(method)
    losses = method(Batch(images()))
    torch.testing.assert_close(losses["consensus"], losses["soft"])


# ----------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", list(WEIGHT_PRESETS))
def test_presets_switch_their_losses_off_without_computing_them(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each preset computes exactly its weighted losses: a zero-weight loss's function is never called (nor,
    for the consensus, the transformed scores), the modules only it uses are not built, and the total is the
    weighted sum."""
    calls: dict[str, int] = {}

    def spy(name: str) -> Any:
        original = getattr(concurl_module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)

        return wrapper

    for name in ("byol_loss", "swav_loss", "consensus_loss", "transformed_scores"):
        monkeypatch.setattr(concurl_module, name, spy(name))
    method = make_method(f"params.weights={preset}")
    fix_views(method)
    losses = method(Batch(images()))
    alpha, beta, gamma = WEIGHT_PRESETS[preset]
    expected = {"byol": alpha > 0, "soft": beta > 0, "consensus": gamma > 0}
    assert set(losses) == {"loss"} | {name for name, on in expected.items() if on}
    assert calls.get("byol_loss", 0) == (2 if alpha else 0)
    assert calls.get("swav_loss", 0) == (1 if beta else 0)
    assert calls.get("consensus_loss", 0) == calls.get("transformed_scores", 0) == (1 if gamma else 0)
    assert (method.target is None) == (alpha == 0) and (method.prototypes is None) == (beta == gamma == 0)
    weighted = sum(w * losses[n] for w, n in zip((alpha, beta, gamma), expected, strict=True) if w)
    torch.testing.assert_close(losses["loss"], weighted)
    assert method.primary_readout == ("kmeans" if preset == "byol" else "codes")


def test_explicit_weights_override_the_preset_and_a_zero_turns_a_branch_off() -> None:
    method = make_method("params.consensus_weight=0.5", "params.byol_weight=2")
    assert method.loss_weights == (2.0, 1.0, 0.5) == loss_weights(method.params)
    fix_views(method)
    losses = method(Batch(images()))
    torch.testing.assert_close(
        losses["loss"], 2 * losses["byol"] + losses["soft"] + 0.5 * losses["consensus"]
    )
    assert "consensus" not in make_method("params.consensus_weight=0")(Batch(images()))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("params.weights=all", "params.weights"),
        ("params.transform=rotation", "params.transform"),
        ("params.representation=pixels", "params.representation"),
        ("params.soft_weight=-1", "params.soft_weight"),
        ("params.num_transforms=0", "params.num_transforms"),
        ("params.epsilon=0", "params.epsilon"),
    ],
)
def test_bad_settings_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_method(override)


def test_all_zero_weights_are_refused() -> None:
    with pytest.raises(ConfigError, match="all 0"):
        make_method("params.weights=byol", "params.byol_weight=0")


# ------------------------------------------------------------------------------------------ pairwise NMI


@pytest.mark.parametrize(("k", "n"), [(3, 60), (12, 40)])  # k² ≤ N (one bincount) and k² > N (sorted runs)
def test_pairwise_nmi_matches_scikit_learn_on_every_pair(k: int, n: int) -> None:
    generator = torch.Generator().manual_seed(k)
    labels = torch.randint(0, k, (7, n), generator=generator)
    labels[1] = 0  # a single cluster, twice: NMI 1 between them, 0 against the others
    labels[2] = 0
    labels[3] = (labels[4] + 1) % k  # a relabelling: NMI 1
    labels[5, : n // 2] = labels[6, : n // 2]  # partly shared
    first, second = torch.triu_indices(7, 7, 1)
    expected = [
        normalized_mutual_info_score(labels[a].numpy(), labels[b].numpy())
        for a, b in zip(first.tolist(), second.tolist(), strict=True)
    ]
    np.testing.assert_allclose(pairwise_nmi(labels).numpy(), expected, atol=1e-12)
    assert pairwise_nmi(labels[:1]).numel() == 0


# ------------------------------------------------------------------------------------------------ read-outs


def test_readout_and_codes_over_the_whole_set() -> None:
    """``features`` are the target projection v_ξ, ``p`` Eq. 3's probabilities, and ``codes`` the argmax of the
    Sinkhorn codes of the scores themselves: recovering them from p changes nothing."""
    method = make_method().eval()
    batch = images()
    out = method.readout(batch)
    assert set(out) == {"features", "p"} and method.primary_readout == "codes"
    assert method.target is not None and method.cluster_head is not None
    with torch.no_grad():
        view = method.augmenter.eval_view(batch)
        scores = method.cluster_scores(method.cluster_head(method.backbone(view)))
        torch.testing.assert_close(out["features"], method.target(view))
    torch.testing.assert_close(out["p"], torch.softmax(scores / 0.1, dim=1))
    codes = method.dataset_readouts({name: value.numpy() for name, value in out.items()})["codes"]
    np.testing.assert_array_equal(codes, sinkhorn(scores, 0.05, 3).argmax(dim=1).numpy())
    # without a target (no BYOL branch) the k-means read-out takes the backbone features
    soft = make_method("params.weights=soft").eval()
    with torch.no_grad():
        torch.testing.assert_close(soft.readout(batch)["features"], soft.backbone(view))


def test_more_prototypes_than_clusters_read_out_kmeans_first() -> None:
    method = make_method("params.num_prototypes=6").eval()
    assert method.primary_readout == "kmeans" and method.readout(images())["p"].shape == (BATCH, 6)


# ------------------------------------------------------------------------------- diversity and collapse


def test_epoch_start_logs_the_ensembles_pairwise_nmi(digits: ArrayDataset) -> None:
    """Mean and std over the M(M−1)/2 pairs of the members' clusterings of a fixed subsample, in training mode
    before and after; the same subsample every epoch."""
    method = make_method(num_clusters=10).train()
    stats = method.on_epoch_start(digits, torch.device("cpu"), 0)
    assert set(stats) == {"ensemble_nmi_mean", "ensemble_nmi_std"} and method.training
    labels = method.ensemble_assignments(digits, torch.device("cpu"))
    assert labels.shape == (8, 256)
    nmi = pairwise_nmi(labels)
    assert nmi.numel() == 28
    assert stats["ensemble_nmi_mean"] == pytest.approx(float(nmi.mean()), abs=1e-6)
    assert stats["ensemble_nmi_std"] == pytest.approx(float(nmi.std(unbiased=False)), abs=1e-6)
    assert method.on_epoch_start(digits, torch.device("cpu"), 1) == stats
    assert make_method("params.weights=byol").on_epoch_start(digits, torch.device("cpu"), 0) == {}
    assert make_method("params.diversity_samples=0").on_epoch_start(digits, torch.device("cpu"), 0) == {}


def test_a_soft_loss_at_ln_k_warns_of_collapse(digits: ArrayDataset) -> None:
    method = make_method("params.diversity_samples=0")
    method._soft_loss_sum, method._soft_loss_steps = torch.tensor(3 * math.log(K)), 3
    with pytest.warns(UserWarning, match="collapsed"):
        method.on_epoch_start(digits, torch.device("cpu"), 2)
    method._soft_loss_sum, method._soft_loss_steps = torch.tensor(3 * 0.5 * math.log(K)), 3
    method.on_epoch_start(digits, torch.device("cpu"), 3)  # no warning: far from ln K
    fix_views(method)
    method(Batch(images()))  # a training step adds to the epoch's sum
    assert method._soft_loss_steps == 1


def test_diversity_figure_from_a_runs_log(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    run.save_config(OmegaConf.create({"method": "concurl", "data": {"name": "digits"}}))
    for epoch, (mean, std) in enumerate([(0.2, 0.1), (0.5, 0.08), (0.8, 0.05)]):
        run.log("epoch_start", epoch=epoch, step=7 * epoch, ensemble_nmi_mean=mean, ensemble_nmi_std=std)
    readouts = {"codes": {"acc": 0.5, "nmi": 0.4, "ari": 0.3}, "kmeans": {"acc": 0.6, "nmi": 0.5, "ari": 0.4}}
    run.log("eval", step=21, epoch=3, primary="codes", readouts=readouts)
    out = tmp_path / "fig.png"
    result = _script("concurl_diversity.py", run.path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    assert "| 1 | 0.5000 | 0.0800 |" in result.stdout.splitlines()
    (run.path / "log.jsonl").write_text('{"event": "start", "time": 0}\n')
    refused = _script("concurl_diversity.py", run.path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
