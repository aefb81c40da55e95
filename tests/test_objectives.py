"""The flow-matching objective's pieces on hand-made tensors: the loss, the weighting, the
condition dropout, and the terms it returns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.models.generator import SubjectGenerator
from components.objectives import FlowMatching, FlowMatchingBatch, TrainModule, condition_dropout, flow_matching_loss


def test_the_loss_is_the_velocity_error():
    x0, eps = torch.zeros(1, 2, 2), torch.ones(1, 2, 2)  # target velocity eps - x0 = 1 everywhere
    v = torch.tensor([[[1.0, 1.0], [3.0, 1.0]]])  # one token-channel off by 2
    assert flow_matching_loss(v, x0, eps) == pytest.approx(4 / 4)
    w = torch.tensor([[[1.0, 1.0], [3.0, 1.0]]])  # the erring entry weighs 3: 3 * 4 / (1 + 1 + 3 + 1)
    assert flow_matching_loss(v, x0, eps, w) == pytest.approx(12 / 6)
    assert flow_matching_loss(v, x0, eps, torch.ones_like(v)) == pytest.approx(flow_matching_loss(v, x0, eps))


def test_condition_dropout_splits_the_unit_interval():
    u = torch.tensor([0.05, 0.15, 0.25, 0.35, 0.95])
    drop_t, drop_r = condition_dropout(u, drop_text=0.1, drop_refs=0.1, drop_both=0.1)
    # [0, .1) text only, [.1, .2) both, [.2, .3) references only, the rest neither
    assert drop_t.tolist() == [True, True, False, False, False]
    assert drop_r.tolist() == [False, True, True, False, False]
    many = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    t, r = condition_dropout(many, 0.1, 0.05, 0.05)
    assert (t & ~r).float().mean() == pytest.approx(0.1, abs=0.005)
    assert (r & ~t).float().mean() == pytest.approx(0.05, abs=0.005)
    assert (t & r).float().mean() == pytest.approx(0.05, abs=0.005)


def test_subject_weights_follow_the_masks_and_the_terms_report_the_plain_error():
    g = SubjectGenerator.tiny(width=32, heads=2, double_blocks=1, single_blocks=1, text_hidden=16, text_layers=1)
    masks = np.zeros((1, 32, 32), np.uint8)
    masks[0, :4, :4] = 1  # exactly patch (0, 0) of the 8x8 grid
    w = FlowMatching(subject_weight=5.0).token_weights(g, masks, torch.float32)
    assert w.shape == (1, 64, 48) and torch.all(w[0, 0] == 5.0) and torch.all(w[0, 1:] == 1.0)
    assert FlowMatching().token_weights(g, masks, torch.float32) is None
    targets = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    batch = FlowMatchingBatch(targets, ["a cat"], [[targets[0]]], masks)
    plain, plain_terms = FlowMatching()(g, batch, torch.Generator().manual_seed(1))
    weighted, terms = FlowMatching(subject_weight=5.0)(g, batch, torch.Generator().manual_seed(1))
    assert terms["mse"] == pytest.approx(plain.item()) and plain_terms["mse"] == pytest.approx(plain.item())
    assert weighted.item() != pytest.approx(plain.item())
    # the module accelerate prepares computes the same loss in its forward
    wrapped, _ = TrainModule(g, FlowMatching(subject_weight=5.0))(batch, torch.Generator().manual_seed(1))
    assert torch.equal(wrapped, weighted)
