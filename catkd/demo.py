"""``make book`` until the book's notebooks exist: the conversion and the losses on real data.

Trains (or reuses, from ``runs/``) the quick profile's resnet20 teacher and its ce, cat and
catkd resnet8 students on Fashion-MNIST, then on the test set:

1. converts the teacher (Figure 1) and checks that its logits are unchanged;
2. measures how far each student's CAMs are from the teacher's (the CAT loss, r = 2, l2);
3. draws the teacher's CAMs of its top-4 classes for a few images (Figure 2) beside the CAMs
   that the label-free CAT student learned for the same classes.

Writes ``build/demo/results.md`` and ``build/demo/cams.png``. Run: ``python -m catkd.demo``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from catkd import cam, data, losses, train  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "quick"
STUDENTS = ("ce", "cat", "catkd")


def main(out: str = "build/demo") -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_run = train.fit(CONFIGS / "teacher.yaml")
    student_runs = {name: train.fit(CONFIGS / f"{name}.yaml") for name in STUDENTS}

    test_set = data.load("fashion-mnist", "test")
    loader = data.BatchLoader(test_set, batch_size=500, train=False)
    teacher = cam.convert(teacher_run.model())
    students = {name: cam.convert(run.model()) for name, run in student_runs.items()}

    largest_change, distances = 0.0, {name: 0.0 for name in STUDENTS}
    with torch.no_grad():
        _draw_cams(teacher, students["cat"], test_set, out_dir / "cams.png")
        for images, _ in loader:
            teacher_logits, teacher_cams = teacher(images)
            largest_change = max(largest_change,
                                 (teacher_logits - teacher.model(images)).abs().max().item())
            for name, student in students.items():
                distances[name] += (losses.cat_loss(student(images)[1], teacher_cams).item()
                                    / len(loader))
    if largest_change > 1e-5:
        raise AssertionError(f"the conversion changed the logits by {largest_change:.2e}")

    lines = ["| model | method | test accuracy (last epoch) | CAT loss to the teacher's CAMs (r 2, l2) |",
             "|---|---|---|---|",
             f"| resnet20 (teacher) | ce | {teacher_run.summary['last_acc']:.2f}% | 0 |"]
    lines += [f"| resnet8 | {name} | {run.summary['last_acc']:.2f}% | {distances[name]:.4f} |"
              for name, run in student_runs.items()]
    report = "\n".join([
        "# The structure revisit and CAT on Fashion-MNIST (quick profile)", "",
        f"Converted teacher: largest change of a logit over the {len(test_set)} test images "
        f"{largest_change:.1e} (float32).", "", *lines, ""])
    (out_dir / "results.md").write_text(report)
    print(report)
    print(f"written: {out_dir / 'results.md'}, {out_dir / 'cams.png'}")
    return {"largest_change": largest_change, "cat_distance": distances}


def _draw_cams(teacher: cam.CAMModel, student: cam.CAMModel, test_set: data.ImageDataset,
               path: Path, num_images: int = 4, top: int = 4) -> None:
    """Rows: test images. Columns: the image, the teacher's CAMs of its top classes, then the
    CAT student's CAMs of the same classes."""
    picks = torch.arange(num_images) * (len(test_set) // num_images)
    loader = data.BatchLoader(data.ImageDataset(
        test_set.images[picks], test_set.labels[picks], test_set.classes, test_set.mean,
        test_set.std, test_set.name), batch_size=num_images, train=False)
    images, labels = next(iter(loader))
    teacher_logits, teacher_cams = teacher(images)
    student_cams = student(images)[1]
    probabilities, top_classes = teacher_logits.softmax(dim=1).topk(top, dim=1)
    raw = test_set.images[picks].float() / 255
    figure, axes = plt.subplots(num_images, 1 + 2 * top, figsize=(2 * (1 + 2 * top), 2.2 * num_images))
    for row in range(num_images):
        axes[row, 0].imshow(raw[row, 0], cmap="gray")
        axes[row, 0].set_title(f"label: {test_set.classes[labels[row]]}", fontsize=8)
        for column, (cls, probability) in enumerate(zip(top_classes[row], probabilities[row])):
            for offset, cams, who in ((1, teacher_cams, "teacher"), (1 + top, student_cams, "CAT")):
                axis = axes[row, offset + column]
                axis.imshow(cam.overlay(raw[row], cams[row, cls]))
                axis.set_title(f"{who}: {test_set.classes[cls]}"
                               + (f" {probability:.2f}" if who == "teacher" else ""), fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main(*sys.argv[1:])
