"""The notebooks' figures and helpers, on scikit-learn's digits and an untrained resnet8."""

import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text

from catkd import cam, data, figures, models


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "test")


@pytest.fixture(scope="module")
def outputs(digits):
    torch.manual_seed(0)
    teacher = cam.convert(models.create("resnet8", num_classes=10, in_channels=1).eval())
    student = cam.convert(models.create("resnet8", num_classes=10, in_channels=1).eval())
    inputs, pixels, labels = figures.pick(digits, range(6))
    return pixels, labels, {"teacher": figures.batched(teacher, inputs),
                            "student": figures.batched(student, inputs)}


def test_pick_gives_loader_inputs_display_pixels_and_labels(digits):
    indices = [5, 0, 17]
    inputs, pixels, labels = figures.pick(digits, indices)
    full_inputs, full_labels = next(iter(data.BatchLoader(digits, batch_size=len(digits),
                                                           train=False)))
    torch.testing.assert_close(inputs, full_inputs[indices])
    assert torch.equal(labels, full_labels[indices])
    assert pixels.shape == (3, 1, 8, 8) and 0 <= pixels.min() and pixels.max() <= 1
    torch.testing.assert_close(pixels, digits.images[indices].float() / 255)
    # One index, as a tensor, works too; indices outside the dataset do not.
    assert figures.pick(digits, torch.tensor(3))[0].shape == (1, 1, 8, 8)
    with pytest.raises(IndexError):
        figures.pick(digits, [len(digits)])
    with pytest.raises(ValueError):
        figures.pick(digits, [])


def test_batched_equals_one_pass_for_tensors_and_tuples(digits):
    torch.manual_seed(0)
    model = models.create("resnet8", num_classes=10, in_channels=1).eval()
    inputs, _, _ = figures.pick(digits, range(23))
    with torch.no_grad():
        expected_logits = model(inputs)
        expected_cams = cam.convert(model)(inputs)[1]
    torch.testing.assert_close(figures.batched(model, inputs, batch_size=5), expected_logits)
    logits, cams = figures.batched(cam.convert(model), inputs, batch_size=5)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(cams, expected_cams)
    assert not logits.requires_grad


def test_logit_check_draws_bars_and_histogram():
    original = torch.randn(5, 10)
    bias = torch.randn(10)
    cam_means = original - bias + 1e-7 * torch.randn(5, 10)
    figure = figures.logit_check(original, cam_means, bias, [str(i) for i in range(10)],
                                 max_classes=4)
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert len(figure.axes[0].get_xticklabels()) == 4
    assert figures.logit_check(original, original, None, list("abcdefghij")).axes
    with pytest.raises(ValueError):
        figures.logit_check(original, cam_means[:, :5], bias, list("abcdefghij"))


def test_cam_grid_has_a_row_per_image_and_model_and_titles_with_probabilities(outputs, digits):
    pixels, labels, out = outputs
    classes = out["teacher"][0].topk(3, dim=1).indices
    figure = figures.cam_grid(pixels, out, classes, digits.classes, labels)
    assert len(figure.axes) == 6 * 2 * (3 + 1)
    probabilities = out["student"][0].softmax(dim=1)
    # Row 2 is the first image's student row; its first CAM is of the teacher's top class.
    cls = int(classes[0, 0])
    assert figure.axes[1 * 4 + 1].get_title() == f"{cls}\n{probabilities[0, cls]:.2f}"
    assert figure.axes[0].get_title() == f"label\n{int(labels[0])}"
    with pytest.raises(ValueError):
        figures.cam_grid(pixels, {}, classes, digits.classes)
    with pytest.raises(ValueError):
        figures.cam_grid(pixels[:2], out, classes, digits.classes)


def test_cam_view_and_static_explorer(outputs, digits):
    pixels, labels, out = outputs
    figure = figures.cam_view(pixels, out, digits.classes, image=2, cls=7, labels=labels)
    assert len(figure.axes) == 3
    assert figure.axes[1].get_title().startswith("teacher: CAM of 7")
    assert len(figures.cam_view(pixels, out, digits.classes, 0, 0, ["student"]).axes) == 2
    with pytest.raises(ValueError):
        figures.cam_view(pixels, out, digits.classes, 0, 0, ["nobody"])
    static = figures.cam_explorer(pixels, out, digits.classes, labels, live=False,
                                  static_classes=4)
    assert isinstance(static, Figure) and len(static.axes) == 2 * (4 + 1)


def legible(figure: Figure) -> bool:
    """Whether ``figure`` fits the book's page (so it is not scaled down) and writes no text
    smaller than ``figures.TEXT_SIZE``."""
    figure.draw_without_rendering()  # lays it out, ticks included
    texts = [text for text in figure.findobj(Text) if text.get_visible() and text.get_text()]
    return figure.get_size_inches()[0] <= figures.PAGE_WIDTH + 1e-9 and \
        all(text.get_fontsize() >= figures.TEXT_SIZE for text in texts)


def test_the_static_explorer_and_the_metric_panels_are_legible_at_page_width(outputs, digits):
    pixels, labels, out = outputs
    explorer = figures.cam_explorer(pixels, out, digits.classes, labels, live=False)
    assert len(explorer.axes) == 2 * (5 + 1) and legible(explorer)
    metrics = ["accuracy", "pointing", "energy", "iou", "agreement"]
    panels = figures.seed_bars({metric: {"ce": [0.4, 0.5], "catkd": [0.5, 0.6]}
                                for metric in metrics}, {"teacher": {"accuracy": 99.0}})
    assert [axis.get_title() for axis in panels.axes] == metrics and legible(panels)


def test_live_explorer_follows_the_chosen_image(outputs, digits, monkeypatch):
    widgets = pytest.importorskip("ipywidgets")
    pixels, labels, out = outputs
    drawn = []
    monkeypatch.setattr(figures, "cam_view", lambda *args: drawn.append(args[3:6]) or Figure())
    box = figures.cam_explorer(pixels, out, digits.classes, labels)
    assert isinstance(box, widgets.VBox)
    image, cls = box.children[0].children
    model = box.children[1]
    top = out["teacher"][0].argmax(dim=1)
    assert cls.value == int(top[0])
    image.value = 4
    assert cls.value == int(top[4])  # a new image starts at the teacher's top class for it
    model.value = "student"
    assert drawn[-1] == (4, int(top[4]), ["student"])


def test_figures_leave_no_pyplot_figure_open(outputs, digits):
    import matplotlib.pyplot as plt

    pixels, labels, out = outputs
    before = plt.get_fignums()
    figures.cam_grid(pixels[:1], out, out["teacher"][0][:1].topk(2).indices, digits.classes)
    figures.logit_check(torch.zeros(1, 3), torch.zeros(1, 3), None, list("abc"))
    assert plt.get_fignums() == before


def test_accuracy_bars_draw_one_labelled_bar_per_run_and_chance():
    figure = figures.accuracy_bars({"2x2": 83.9, "4x4": 86.2, "7x7": 86.7}, chance=10,
                                   title="resolution")
    assert isinstance(figure, Figure)
    (axis,) = figure.axes
    assert [patch.get_height() for patch in axis.patches] == pytest.approx([83.9, 86.2, 86.7])
    assert [label.get_text() for label in axis.get_xticklabels()] == ["2x2", "4x4", "7x7"]
    assert [line.get_ydata()[0] for line in axis.lines] == [10]
    assert axis.get_title() == "resolution"
    assert len(figures.accuracy_bars({"a": 50.0}).axes[0].lines) == 0
    with pytest.raises(ValueError):
        figures.accuracy_bars({})


def test_localisation_grid_draws_a_panel_per_image_and_model():
    synthetic = data.synthetic(3, seed=0)
    _, pixels, labels = figures.pick(synthetic, range(3))
    maps = {"teacher": torch.rand(3, 8, 8), "student": torch.rand(3, 4, 4)}
    figure = figures.localisation_grid(pixels, synthetic.masks, maps, labels, synthetic.classes)
    assert isinstance(figure, Figure) and len(figure.axes) == 3 * 3
    assert figure.axes[0].get_title() == synthetic.classes[int(labels[0])]
    assert [axis.get_title() for axis in figure.axes[1:3]] == ["teacher", "student"]
    with pytest.raises(ValueError, match="masks"):
        figures.localisation_grid(pixels, synthetic.masks[:2], maps)
    with pytest.raises(ValueError, match="student"):
        figures.localisation_grid(pixels, synthetic.masks, {"student": torch.rand(2, 4, 4)})
    # Without masks (chapter 7: models of two families side by side): the same grid, no outline.
    plain = figures.localisation_grid(pixels, None, maps, labels, synthetic.classes, size=1.0)
    assert len(plain.axes) == 3 * 3 and plain.get_size_inches()[0] == pytest.approx(3.0)
    assert not any(axis.collections for axis in plain.axes)
    assert all(axis.collections for axis in figure.axes[1:3])


def test_seed_bars_draw_a_panel_per_metric():
    values = {"accuracy": {"ce": [70.0, 72.0], "catkd": [90.0, 91.0]},
              "iou": {"ce": [0.4, 0.5], "catkd": [0.5, 0.6]}}
    figure = figures.seed_bars(values, {"teacher": {"accuracy": 99.0, "iou": 0.6},
                                        "chance": {"accuracy": 10.0}})
    assert [axis.get_title() for axis in figure.axes] == ["accuracy", "iou"]
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["teacher", "chance"]
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["ce", "catkd"]
    with pytest.raises(ValueError, match="same run labels"):
        figures.seed_bars({"a": {"ce": [1.0]}, "b": {"kd": [1.0]}})


def report_cells():
    from catkd.report import Cell

    return [Cell("ce", "a-b", 2, [80.0, 82.0], [79.0, 81.0]),
            Cell("catkd", "a-b", 2, [85.0, 86.0], [85.0, 86.0], paper=86.5),
            Cell("catkd", "c-d", 2, [70.0], [70.0], ["missing"]),
            Cell("kd", "c-d", 2, [], [], ["missing", "missing"])]


def test_table_bars_draw_a_panel_per_column_with_finished_cells_only():
    figure = figures.table_bars(report_cells(), "a table")
    first, second = figure.axes
    assert [tick.get_text() for tick in first.get_xticklabels()] == ["ce", "catkd"]
    assert [tick.get_text() for tick in second.get_xticklabels()] == ["catkd"]  # kd: no run
    heights = [patch.get_height() for patch in first.patches]
    assert heights == pytest.approx([81.0, 85.5])
    assert len(first.collections) >= 3  # seeds as dots and the paper's dash
    # The panels share their y axis, whose range holds every seed of every column (70 to 86).
    assert first.get_ylim() == second.get_ylim() == pytest.approx((67.0, 88.0))
    with pytest.raises(ValueError, match="at least one finished run"):
        figures.table_bars(report_cells()[3:])


def test_table_lines_draw_a_line_per_row_over_numeric_columns():
    from catkd.report import Cell

    cells = [Cell("catkd", fraction, 1, [value], [value])
             for fraction, value in (("0.1", 60.0), ("1.0", 90.0), ("0.3", 75.0))]
    figure = figures.table_lines(cells, "column", "fraction")
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_xdata()) == [0.1, 0.3, 1.0]
    assert list(line.get_ydata()) == [60.0, 75.0, 90.0]


def test_cost_accuracy_marks_methods_with_extra_parameters():
    figure = figures.cost_accuracy({"kd": (10.0, 88.0, 0), "crd": (30.0, 87.0, 16640)}, "s")
    axis = figure.axes[0]
    assert [text.get_text() for text in axis.texts] == ["kd", "crd"]
    assert len(axis.collections) == 2


def test_overlay():
    image = torch.zeros(1, 32, 32)  # a black grey-scale image
    cam_map = torch.tensor([[0.0, 0.0], [0.0, 5.0]])
    picture = figures.overlay(image, cam_map, alpha=1.0)
    assert picture.shape == (32, 32, 3) and picture.min() >= 0 and picture.max() <= 1
    # The jet colormap is dark blue at 0 and dark red at 1: the hot corner is red.
    assert picture[-1, -1, 0] > 0.4 and picture[-1, -1, 2] < 0.1
    assert picture[0, 0, 2] > 0.4 and picture[0, 0, 0] < 0.1
    with pytest.raises(ValueError, match=r"\(1 or 3, H, W\), got \(32, 32\)"):
        figures.overlay(image[0], cam_map)
    with pytest.raises(ValueError, match=r"one CAM of shape \(h, w\), got \(1, 2, 2\)"):
        figures.overlay(image, cam_map[None])
