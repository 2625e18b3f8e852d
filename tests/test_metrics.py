"""catkd.metrics on hand-made CAMs and masks whose answers are known, and on small models."""

import pytest
import torch
import torch.nn.functional as F

from catkd import cam, data, figures, metrics, models
from catkd.metrics import correlation, energy_inside, iou, pointing_game

SIZE = 32


def square_mask(top: int, left: int, side: int, size: int = SIZE) -> torch.Tensor:
    """bool (size, size), True on a side x side square with its corner at (top, left)."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


def peak_at(row: int, col: int, size: int = SIZE) -> torch.Tensor:
    """(size, size) map: 1 at (row, col), 0 elsewhere."""
    heat = torch.zeros(size, size)
    heat[row, col] = 1.0
    return heat


# ------------------------------------------------------------------------------ pointing game
def test_pointing_game_inside_and_outside():
    masks = square_mask(8, 8, 8).expand(2, SIZE, SIZE)
    cams = torch.stack([peak_at(10, 12), peak_at(25, 25)])
    assert pointing_game(cams, masks).tolist() == [True, False]


def test_pointing_game_upsamples_small_cams():
    # A 4x4 CAM's cell (1, 1) covers pixels 8..15 of a 32-pixel side: the square's pixels.
    masks = torch.stack([square_mask(8, 8, 8), square_mask(24, 24, 8)])
    cams = torch.stack([peak_at(1, 1, 4), peak_at(1, 1, 4)])
    assert pointing_game(cams, masks).tolist() == [True, False]


def test_every_class_cams_need_labels():
    masks = square_mask(0, 0, 8)[None]
    cams = torch.stack([peak_at(30, 30), peak_at(2, 2)])[None]  # (1, K=2, S, S)
    assert pointing_game(cams, masks, torch.tensor([1])).tolist() == [True]
    assert pointing_game(cams, masks, torch.tensor([0])).tolist() == [False]
    with pytest.raises(ValueError, match="need labels"):
        pointing_game(cams, masks)
    with pytest.raises(ValueError, match="0..1"):
        pointing_game(cams, masks, torch.tensor([2]))


# --------------------------------------------------------------------------- energy and IoU
def test_cam_equal_to_mask_scores_one():
    masks = torch.stack([square_mask(4, 4, 10), square_mask(16, 2, 12)])
    cams = masks.float()
    assert pointing_game(cams, masks).all()
    torch.testing.assert_close(energy_inside(cams, masks), torch.ones(2))
    torch.testing.assert_close(iou(cams, masks), torch.ones(2))


def test_half_overlap_by_hand():
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[:, :16] = True  # the left half
    heat = torch.zeros(SIZE, SIZE)
    heat[:, 8:24] = 1.0  # a band of 16 columns, 8 of them on the mask
    # Energy: half of the band's mass is inside. IoU: 8 columns shared of 24 covered.
    torch.testing.assert_close(energy_inside(heat[None], mask[None]), torch.tensor([0.5]))
    torch.testing.assert_close(iou(heat[None], mask[None]), torch.tensor([8 / 24]))


def test_energy_counts_the_positive_part_only():
    mask = square_mask(8, 8, 8)[None]
    signed = 2 * mask.float() - 1  # +1 on the object, -1 everywhere else
    torch.testing.assert_close(energy_inside(signed, mask), torch.ones(1))
    negative = -torch.rand(1, SIZE, SIZE) - 0.1
    torch.testing.assert_close(energy_inside(negative, mask), torch.zeros(1))
    torch.testing.assert_close(iou(negative, mask), torch.zeros(1))  # no positive peak, no region


def test_iou_threshold_is_a_fraction_of_the_maximum():
    mask = square_mask(0, 0, 8)[None]
    heat = 0.4 * square_mask(0, 8, 8).float()  # a weaker region beside the object
    heat[:8, :8] = 1.0
    heat = heat[None]
    torch.testing.assert_close(iou(heat, mask), torch.ones(1))  # 0.4 < 0.5 x max
    torch.testing.assert_close(iou(heat, mask, threshold=0.3), torch.tensor([0.5]))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            iou(heat, mask, threshold=bad)


def test_localisation_shape_errors():
    masks = square_mask(0, 0, 8).expand(2, SIZE, SIZE)
    with pytest.raises(ValueError, match="bool"):
        iou(torch.rand(2, 4, 4), masks.float())
    with pytest.raises(ValueError, match="2 CAMs but 3 masks"):
        energy_inside(torch.rand(2, 4, 4), square_mask(0, 0, 8).expand(3, SIZE, SIZE))
    with pytest.raises(ValueError, match="larger than the masks"):
        pointing_game(torch.rand(2, 64, 64), masks)
    with pytest.raises(ValueError, match=r"\(N, h, w\) or \(N, K, h, w\)"):
        pointing_game(torch.rand(4, 4), masks)


# ------------------------------------------------------------------------------- correlation
def test_correlation_of_a_map_with_itself_and_its_negation():
    cams = torch.randn(3, 5, 7, 7)
    torch.testing.assert_close(correlation(cams, cams), torch.ones(3, 5))
    torch.testing.assert_close(correlation(cams, -cams), -torch.ones(3, 5))
    torch.testing.assert_close(correlation(cams, 2 * cams + 3), torch.ones(3, 5))  # affine-free
    assert correlation(cams[:, 0], cams[:, 1]).shape == (3,)


def test_correlation_true_class_and_constant_maps():
    first, second = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    labels = torch.tensor([0, 2, 1, 2])
    expected = correlation(first, second)[torch.arange(4), labels]
    torch.testing.assert_close(correlation(first, second, labels), expected)
    torch.testing.assert_close(correlation(torch.ones(2, 4, 4), torch.randn(2, 4, 4)),
                               torch.zeros(2))


def test_correlation_pools_the_larger_map():
    coarse = torch.randn(2, 3, 4, 4)
    fine = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 8x8, same content
    fine = fine + 0.01 * torch.randn_like(fine)
    torch.testing.assert_close(correlation(fine, coarse), correlation(coarse, fine))
    assert (correlation(fine, coarse) > 0.99).all()
    # Pooled by averaging: an 8x8 map against its own 2x2 average pooling.
    torch.testing.assert_close(correlation(fine, F.avg_pool2d(fine, 4)), torch.ones(2, 3))


def test_correlation_shape_errors():
    with pytest.raises(ValueError, match="same images and classes"):
        correlation(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="need labels"):
        correlation(torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, h, w\) or \(N, K, h, w\)"):
        correlation(torch.randn(2, 4), torch.randn(2, 4))


# --------------------------------------------------------------------------- trained models
def test_localisation_and_agreement_on_a_model():
    dataset = data.synthetic(40, seed=3)
    model = models.create("resnet8", num_classes=10).train()
    scores = metrics.localisation(model, dataset, batch_size=16)
    assert model.training  # the mode is restored
    assert set(scores) == {"accuracy", "pointing", "energy", "iou"}
    assert 0 <= scores["accuracy"] <= 100
    assert all(0 <= scores[name] <= 1 for name in ("pointing", "energy", "iou"))
    # The same means as the metrics over all the images at once.
    model.eval()
    inputs, _, labels = figures.pick(dataset, range(len(dataset)))
    logits, cams = figures.batched(cam.convert(model), inputs)
    assert scores["iou"] == pytest.approx(iou(cams, dataset.masks, labels).mean().item(), abs=1e-6)
    assert scores["pointing"] == pytest.approx(
        pointing_game(cams, dataset.masks, labels).float().mean().item())

    other = models.create("resnet20", num_classes=10)  # 8x8 CAMs too, another network
    same, apart = metrics.agreement([model, other], model, dataset, batch_size=16)
    assert same == pytest.approx({"true_class": 1.0, "all_classes": 1.0}, abs=1e-5)
    assert apart["all_classes"] < 0.99
    # Each student's agreement is the one it has alone with the teacher.
    assert metrics.agreement([other], model, dataset) == [pytest.approx(apart)]
    with pytest.raises(TypeError, match="a list of students, got one model"):
        metrics.agreement(other, model, dataset)


def test_localisation_needs_masks():
    digits = data.load("digits", "test")
    with pytest.raises(ValueError, match="masks"):
        metrics.localisation(models.create("resnet8", num_classes=10, in_channels=1), digits)
