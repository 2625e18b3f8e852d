"""The ImageNet side of the comparison (Tables 7-8): the models' feature taps, every method's
config on both pairs, and CRD's sample indices from the image-folder loader."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from catkd import config, data, losses, methods, models, train
from catkd.methods.base import PreReLURecorder, StageRecorder
from conftest import calibrated

CONFIGS = Path(__file__).parent.parent / "configs" / "imagenet"
PAIRS = {"resnet34-resnet18": ("imagenet_resnet34", "imagenet_resnet18"),
         "resnet50-mobilenet_v1": ("imagenet_resnet50", "imagenet_mobilenet_v1")}
# The rows of Tables 7-8 besides the vanilla student.
TABLE_METHODS = ("kd", "dkd", "at", "ofd", "crd", "reviewkd", "catkd")
ZOO = ("imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50", "imagenet_mobilenet_v1")
SIZE = 64  # every stage keeps a map of at least 2x2; 224 would only be slower


@pytest.mark.parametrize("name", ZOO)
def test_stage_and_pre_relu_taps(name):
    """Four stages at 1/4 .. 1/32 of the input; relu(pre-ReLU map) is the stage output; the named
    BatchNorms exist; the hooks change no logit."""
    torch.manual_seed(0)
    model = models.create(name, num_classes=10).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        plain = model(images)
        stages, preacts = StageRecorder(model), PreReLURecorder(model)
        assert torch.equal(model(images), plain)
        outputs, maps = stages.pop(), preacts.pop()
    assert [output.shape[2] for output in outputs] == [SIZE // 4, SIZE // 8, SIZE // 16, SIZE // 32]
    assert len(maps) == len(outputs) == len(model.preact_norms)
    for output, preact in zip(outputs, maps):
        assert torch.allclose(F.relu(preact), output, atol=1e-5)
        assert (preact < 0).any()
    assert all(isinstance(model.get_submodule(norm), torch.nn.BatchNorm2d)
               for norm in model.preact_norms)


def test_the_stage_channels_are_mdistiller_s():
    channels = {}
    for name in ZOO:
        model = models.create(name, num_classes=10).eval()
        recorder = StageRecorder(model)
        with torch.no_grad():
            model(torch.zeros(1, 3, SIZE, SIZE))
        channels[name] = [stage.shape[1] for stage in recorder.pop()]
    assert channels == {"imagenet_resnet18": [64, 128, 256, 512],
                        "imagenet_resnet34": [64, 128, 256, 512],
                        "imagenet_resnet50": [256, 512, 1024, 2048],
                        "imagenet_mobilenet_v1": [128, 256, 512, 1024]}


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("name", TABLE_METHODS)
def test_every_table_method_trains_two_steps_with_its_config(name, pair):
    resolved = config.resolve(CONFIGS / f"{name}-{pair}.yaml")
    teacher_name, student_name = PAIRS[pair]
    assert (resolved["method"], resolved["teacher"]["model"], resolved["student"]) == \
        (name, teacher_name, student_name)
    assert resolved["data"]["dataset"] == "imagenet"
    assert resolved["teacher"]["checkpoint"].startswith("data/imagenet_teachers/")
    settings = dict(resolved["loss"])
    if name == "crd":
        settings["negatives"] = 5  # the paper's 16384 need a training set that large
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    labels, indices = torch.tensor([0, 1, 2]), torch.tensor([0, 4, 8])
    torch.manual_seed(0)
    method = methods.create(name, models.create(student_name, num_classes=10),
                            calibrated(models.create(teacher_name, num_classes=10), images),
                            train_labels=torch.arange(12) % 4, **settings).train()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01)
    student_before = [p.detach().clone() for p in method.student.parameters()]
    for _ in range(2):
        logits, terms = method(images, labels, 0, *([indices] if name == "crd" else []))
        assert logits.shape == (3, 10) and len(terms) >= 2
        assert all(torch.isfinite(value) for value in terms.values())
        optimizer.zero_grad()
        sum(terms.values()).backward()
        optimizer.step()
    assert any(not torch.equal(p, before)
               for p, before in zip(method.student.parameters(), student_before))


def test_configs_cover_every_row_of_tables_7_and_8():
    shipped = {path.stem for path in CONFIGS.glob("*-*-*.yaml")}
    assert shipped == {f"{name}-{pair}" for name in TABLE_METHODS for pair in PAIRS}
    for sweep_file in ("table7.yaml", "table8.yaml"):
        sweep = config.load_file(CONFIGS / "sweeps" / sweep_file)
        assert set(sweep["paper"]) == {"ce", *TABLE_METHODS}


def test_ofd_distils_the_deepest_stages_it_is_told():
    images = torch.randn(2, 3, SIZE, SIZE)
    teacher = calibrated(models.create("imagenet_resnet50", num_classes=10), images)
    method = methods.create("ofd", models.create("imagenet_mobilenet_v1", num_classes=10),
                            teacher, stages=3)
    assert method.student_preacts.names == ("features.5.1.2", "features.11.1.2",
                                            "features.13.1.2")
    assert method.teacher_preacts.names == ("layer2.3.relu", "layer3.5.relu", "layer4.2.relu")
    assert [(c[0].in_channels, c[0].out_channels) for c in method.connectors] == \
        [(256, 512), (512, 1024), (1024, 2048)]
    # Margins from the BatchNorm that ends each kept teacher stage, before the residual sum.
    for margin, norm in zip(method.margins(), ("layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3")):
        bn = teacher.get_submodule(norm)
        assert torch.equal(margin, losses.ofd_margins(bn.weight, bn.bias))
    all_stages = methods.create("ofd", models.create("imagenet_mobilenet_v1", num_classes=10),
                                teacher)
    assert len(all_stages.connectors) == 4
    with pytest.raises(ValueError, match="must be 1 to 4, got 5"):
        methods.create("ofd", models.create("imagenet_mobilenet_v1", num_classes=10), teacher,
                       stages=5)


def test_reviewkd_can_fuse_the_student_s_pre_relu_maps():
    images = torch.randn(2, 3, SIZE, SIZE)
    teacher = calibrated(models.create("imagenet_resnet34", num_classes=10), images)
    student = models.create("imagenet_resnet18", num_classes=10).eval()
    preact = methods.create("reviewkd", student, teacher, student_preact=True)
    post = methods.create("reviewkd", models.create("imagenet_resnet18", num_classes=10),
                          teacher)
    assert isinstance(preact.student_stages, PreReLURecorder)
    assert isinstance(post.student_stages, StageRecorder)
    with torch.no_grad():
        student(images)
    assert all((level < 0).any() for level in preact.student_stages.pop())


# ------------------------------------------------------------------ CRD on an image folder
def image_folder(root: Path, images_per_class: int = 2) -> None:
    for split in ("train", "val"):
        for label, (wnid, colour) in enumerate({"n01": (200, 30, 30),
                                                "n02": (30, 200, 30)}.items()):
            for i in range(images_per_class):
                path = root / "imagenet" / split / wnid / f"{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40, 40), colour).save(path)


def test_the_folder_loader_yields_sample_indices(tmp_path):
    image_folder(tmp_path, images_per_class=3)
    loader = data.imagenet_loader("train", 2, root=tmp_path, workers=0, sample_indices=True)
    seen = {}
    for images, labels, indices in loader:
        assert images.shape == (2, 3, 224, 224)
        seen.update(zip(indices.tolist(), labels.tolist()))
    assert len(seen) == 6 and all(label == loader.dataset.targets[index]
                                  for index, label in seen.items())
    assert len(next(iter(data.imagenet_loader("train", 2, root=tmp_path, workers=0)))) == 2


def test_the_loaders_of_an_imagenet_config_have_the_shape_of_every_other(tmp_path):
    image_folder(tmp_path)
    resolved = config.resolve(CONFIGS / "crd-resnet34-resnet18.yaml", [
        f"data.root={tmp_path}", "data.batch_size=2", "runtime.workers=0"])
    loaders = data.loaders(resolved, sample_indices=True)
    assert (loaders.num_classes, loaders.in_channels, loaders.image_size) == (1000, 3, 224)
    assert loaders.train_labels.tolist() == [0, 0, 1, 1]  # the folders' order
    assert len(next(iter(loaders.train))) == 3 and len(next(iter(loaders.test))) == 2


def test_crd_trains_on_an_imagenet_folder(tmp_path):
    image_folder(tmp_path)
    teacher = tmp_path / "resnet34.pth"
    torch.save(models.create("imagenet_resnet34", num_classes=1000).state_dict(), teacher)
    run = train.fit(CONFIGS / "crd-resnet34-resnet18.yaml", [
        f"data.root={tmp_path}", "data.batch_size=2", "optim.epochs=1", "optim.milestones=[]",
        "runtime.workers=0", "runtime.device=cpu", f"teacher.checkpoint={teacher}", "loss.negatives=1",
        f"out={tmp_path / 'runs'}"], quiet=True)
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["extra_parameters"] > 0
    memory = torch.load(run.path / "last.pt", weights_only=True)["extras"]["student_memory"]
    assert memory.shape == (4, 128)  # one entry per training image of the folder
