"""Configs: files with a base, dotted overrides, and errors for anything mistyped."""

import pytest

from catkd import config
from conftest import QUICK


def test_defaults_are_the_papers_cifar_recipe():
    resolved = config.resolve()
    assert resolved["optim"] == {"epochs": 240, "lr": 0.05, "momentum": 0.9,
                                 "weight_decay": 5e-4, "schedule": "step",
                                 "milestones": [150, 180, 210], "gamma": 0.1}
    assert resolved["data"]["batch_size"] == 64 and resolved["data"]["dataset"] == "cifar100"


def test_file_with_base_and_overrides(tmp_path):
    (tmp_path / "recipe.yaml").write_text("optim:\n  epochs: 30\n  lr: 0.1\ndata:\n  flip: false\n")
    (tmp_path / "run.yaml").write_text(
        "base: recipe.yaml\nmethod: catkd\nstudent: resnet8\nteacher:\n  model: resnet20\n"
        "loss:\n  beta: 15\noptim:\n  lr: 0.05\n")
    resolved = config.resolve(tmp_path / "run.yaml",
                              ["optim.milestones=[10, 20]", "loss.normalize=l2", "seed=3"])
    assert resolved["optim"]["epochs"] == 30 and resolved["optim"]["lr"] == 0.05
    assert resolved["optim"]["milestones"] == [10, 20] and resolved["seed"] == 3
    assert resolved["data"]["flip"] is False
    assert resolved["loss"] == {"beta": 15, "normalize": "l2"}
    assert resolved["teacher"] == {"model": "resnet20", "checkpoint": None, "epochs": None}


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=0.1"], r"unknown config key 'optim.lrr' \(did you mean 'lr'\?\)"),
    (["epochs=3"], "unknown config key 'epochs'"),
    (["method=catkd", "teacher.model=resnet20", "loss.betta=3"],
     r"unknown setting loss.betta for method 'catkd' \(did you mean 'beta'\?\)"),
    (["method=kdd"],
     "unknown method 'kdd'; valid methods: at, cat, catkd, ce, crd, dkd, fitnet, kd, ofd, "
     "reviewkd, rkd"),
    (["method=kd"], "set teacher.model"),
    (["teacher.model=resnet20"], "trains without a teacher"),
    (["teacher=resnet20"], "is a section"),
    (["data.fraction=1.5"], r"data.fraction must be in \(0, 1\]"),
    (["optim.schedule=cosine"], "valid: step, onecycle"),
    (["optim.epochs=0"], "optim.epochs must be a positive integer"),
    (["optim.lr"], "an override is key=value"),
    (["loss=3"], "holds the method's settings"),
])
def test_mistakes_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        config.resolve(None, overrides)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config.resolve(tmp_path / "nope.yaml")


def test_run_identity_ignores_execution_keys_only():
    base = config.resolve(None, ["seed=1"])
    same = config.resolve(None, ["seed=1", "runtime.device=cpu", "out=/tmp/elsewhere"])
    other = config.resolve(None, ["seed=2"])
    bf16 = config.resolve(None, ["seed=1", "runtime.bf16=true"])
    fp32 = config.resolve(None, ["seed=1", "runtime.bf16=false"])
    assert config.run_name(base) == config.run_name(same) != config.run_name(other)
    assert config.run_name(bf16) != config.run_name(fp32)  # bf16 changes the numbers
    assert config.run_name(base) in (config.run_name(bf16), config.run_name(fp32))
    assert config.run_name(base).startswith("ce_resnet8x4_cifar100_seed1_")


def test_every_shipped_config_resolves():
    from pathlib import Path

    shipped = sorted(Path(__file__).parent.parent.glob("configs/**/*.yaml"))
    assert len(shipped) > 60
    for path in shipped:
        # Sweep files are not run configs; tests/test_sweep.py expands every one of them.
        if path.name != "recipe.yaml" and path.parent.name != "sweeps":
            config.resolve(path)


def test_run_names_are_stable_and_a_method_revision_renames_its_runs(monkeypatch):
    from catkd import methods

    # The quick teacher's folder, as the README and earlier run folders name it.
    teacher = config.resolve("configs/quick/teacher.yaml", ["runtime.bf16=true"])
    assert config.run_name(teacher) == "ce_resnet20_fashion-mnist_seed0_5614a9a062"
    # A method whose computation changed gets new run folders: old runs are not returned.
    student = config.resolve("configs/quick/catkd.yaml", ["runtime.bf16=true"])
    assert methods.revision("catkd") == methods.revision("cat") == methods.revision("ofd") == 2
    revised = config.run_name(student)
    monkeypatch.setattr(methods.CAT, "revision", 1)
    assert config.run_name(student) != revised


def test_a_model_from_outside_the_zoo_names_its_runs_by_how_it_is_built_now(monkeypatch):
    """torchvision and timm models are reduced to a total stride of 4 for small images since
    their revision 2: a run made with their ImageNet strides has the same weights' shapes and
    would load silently into another model, so its folder is not the new one's."""
    from catkd import models

    teacher = config.resolve(QUICK / "kd.yaml", ["teacher.model=torchvision.resnet18"])
    assert (models.revision("torchvision.resnet18"), models.revision("resnet20")) == (2, 1)
    revised = config.run_name(teacher)
    monkeypatch.setattr(models, "revision", lambda name: 1)
    assert config.run_name(teacher) != revised


def test_lockstep_groups_gather_the_students_that_see_the_same_batches_from_one_teacher():
    def run(*overrides):
        return config.resolve(QUICK / "kd.yaml", ["data.dataset=digits", *overrides])

    kd, dkd, catkd = run(), run("method=dkd", "loss={}"), run("method=catkd", "loss={}")
    other_seed, at, ce = run("seed=1"), run("method=at", "loss={}"), run("method=ce",
                                                                       "teacher.model=null")
    # OFD's teacher normalises with the batch's statistics; CRD's batches carry sample indices.
    ofd, crd = run("method=ofd", "loss={}"), run("method=crd", "loss={}")
    gradcam = run("method=cat", "loss={}", "loss.teacher_maps=gradcam")
    # A torchvision teacher has no forward_features to share.
    torchvision = [run("teacher.model=torchvision.resnet18", f"method={method}", "loss={}")
                   for method in ("kd", "dkd")]
    runs = [kd, other_seed, at, dkd, ce, catkd, gradcam, ofd, crd]
    assert config.lockstep_groups(runs) == [[kd, at, dkd, catkd], [other_seed], [ce], [gradcam],
                                            [ofd], [crd]]
    assert config.lockstep_groups(torchvision) == [[run] for run in torchvision]
    # Cut so that every worker gets work: 9 runs, 4 workers, at most 3 runs a group.
    assert config.lockstep_groups(runs, jobs=4) == [[kd, at, dkd], [catkd], [other_seed], [ce],
                                                    [gradcam], [ofd], [crd]]
