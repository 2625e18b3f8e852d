"""Bad input and damaged files: one clear line, exit code 2 on the command line and
ValueError or FileNotFoundError (OSError where the file system refuses) from the API; nothing
runs before the config is checked, and no broken run is ever kept as finished.

The property-based tests (hypothesis) feed random overrides, config files and checkpoint bytes
through ``config.resolve`` and the command line, and print how many inputs they tried.
"""

import gzip
import json
import math
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from catkd import config, data, models, train
from catkd.runs import LAST, SUMMARY
from catkd.__main__ import main
from conftest import tiny

# Bounded, so that the file runs in well under a minute; no example database in the project.
FEW = settings(max_examples=40, deadline=None, database=None)
MANY = settings(max_examples=300, deadline=None, database=None)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(argument) for argument in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *args) -> str:
    """The one line a command that must refuse writes to stderr (exit code 2)."""
    code, _, err = cli(capsys, *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (code, err)
    return err


def finished_runs(folder: Path) -> list[Path]:
    return [summary.parent for summary in Path(folder).rglob(SUMMARY)]


def print_tried(capsys, what: str, tried: int) -> None:
    with capsys.disabled():
        print(f"\n{tried} {what} tried")


# ------------------------------------------------------------------------- config and overrides
def _leaves(section: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in section.items():
        if isinstance(value, dict) and value:
            keys |= _leaves(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_every_key_has_a_type_and_range_or_a_registry():
    named = {"method", "student", "teacher.model", "data.dataset", "optim.schedule", "loss",
             "runtime.device", "runtime.bf16", "runtime.channels_last", "runtime.compile"}
    assert set(config.VALID) == _leaves(config.DEFAULTS) - named
    assert all(data.num_classes(name) >= 2 for name in data.names())
    for name in ("digits", "synthetic", "synthetic-distractors"):  # the ones that need no files
        assert data.num_classes(name) == data.load(name, "test").num_classes, name


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=abc"], "optim.lr must be a positive number, got 'abc'"),
    (["optim.lr=1e-3"], "write 0.001, not 1e-3"),
    (["seed=abc"], "seed must be an integer"),
    (["method=catkd", "teacher.model=resnet14", "loss.beta=abc"],
     "loss.beta of method 'catkd' must be a number"),
    (["optim=1", "optim.epochs=1"], "sets a key inside optim, which an earlier override set"),
    (["data.flip=maybe"], "data.flip must be true or false, got 'maybe'"),
    (["optim.milestones=abc"], "optim.milestones must be a list of increasing"),
    (["optim.milestones=[2, 1]"], "optim.milestones must be a list of increasing"),
    (["optim.milestones=[3]"], "lie beyond optim.epochs=2"),
    (["teacher.epochs=0"], "teacher.epochs must be a positive integer"),
    (["teacher.epochs=abc"], "teacher.epochs must be a positive integer"),
    (["method=kd", "teacher.model=resnet14", "teacher.epochs=1", "optim.milestones=[2]"],
     "teacher.epochs=1 ends before optim.milestones"),
    (["data.classes=0"], "data.classes must be a positive integer"),
    (["data.classes=11"], r"data.classes must be within 1..10 (the classes of digits)"),
    (["data.fraction=true"], "data.fraction must be in (0, 1]"),
    (["data.batch_size=2.5"], "data.batch_size must be a positive integer"),
    (["name=../elsewhere"], "name must be a folder name without '/'"),
    (["optim.lr=[1"], "override 'optim.lr=[1': the value is not valid YAML"),
])
def test_a_wrong_value_is_one_line_naming_the_key(tmp_path, capsys, overrides, message):
    assert message in refused(capsys, "train", *tiny(tmp_path, *overrides))
    with pytest.raises(ValueError) as error:
        config.resolve(None, tiny(tmp_path, *overrides))
    assert message in str(error.value)
    assert not any(tmp_path.iterdir()), "a refused config left files behind"


def test_overrides_are_a_list():
    with pytest.raises(ValueError, match=r"a list of key=value strings, e.g. \['optim.epochs=1'\]"):
        train.fit(None, "optim.epochs=1")
    with pytest.raises(ValueError, match="an override is key=value"):
        config.resolve(None, [3])


@pytest.mark.parametrize("kind", ["config", "sweep"])
def test_a_file_that_is_not_yaml_is_one_line_naming_it(tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.yaml"
    path.write_text("optim:\n  lr: [0.1\n  epochs: 3\n")
    command = ["train", "--config", path] if kind == "config" else ["sweep", path, "--list"]
    message = refused(capsys, *command)
    assert f"{kind} file {path} is not valid YAML" in message and "line 3" in message
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert f"{kind} file {path} is not a text file" in refused(capsys, *command)
    path.write_text("- a list\n- not a mapping\n")
    assert "must hold a mapping of keys" in refused(capsys, *command)
    if kind == "sweep":
        assert "is not valid YAML" not in refused(capsys, "report", path)


def test_a_config_file_that_is_its_own_base_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="is its own base"):
        config.resolve(tmp_path / "a.yaml")


def test_an_explicit_data_root_that_does_not_exist_is_an_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    message = refused(capsys, "train", *tiny(tmp_path, "data.dataset=fashion-mnist",
                                             f"data.root={missing}"))
    assert f"the dataset folder {missing} (data.root, probe --root) does not exist" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load("fashion-mnist", "test", root=missing)
    assert not finished_runs(tmp_path)


def test_a_truncated_fashion_mnist_gz_names_the_file(tmp_path, capsys):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for prefix in ("train", "t10k"):
        for name, array in (("images-idx3-ubyte", np.zeros((4, 28, 28))),
                            ("labels-idx1-ubyte", np.arange(4))):
            header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            with gzip.open(folder / f"{prefix}-{name}.gz", "wb") as file:
                file.write(header + array.astype(np.uint8).tobytes())
    damaged = folder / "train-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:30])
    with pytest.raises(ValueError, match=f"{damaged} is damaged .*: replace it"):
        data.load("fashion-mnist", "train", root=tmp_path)
    message = refused(capsys, "train", *tiny(tmp_path / "runs", "data.dataset=fashion-mnist",
                                             f"data.root={tmp_path}"))
    assert str(damaged) in message


# ---------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def teacher_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"model": models.create("resnet14", 10, 1).state_dict()}, path)
    return path.read_bytes()


def test_a_teacher_checkpoint_that_is_not_weights_is_one_line(tmp_path, capsys, teacher_bytes):
    checkpoint = tmp_path / "teacher.pth"
    distil = ["method=kd", "teacher.model=resnet14", f"teacher.checkpoint={checkpoint}"]
    torch.save(models.create("resnet14", 10, 1), checkpoint)  # the whole module, pickled
    message = refused(capsys, "train", *tiny(tmp_path, *distil))
    assert f"checkpoint {checkpoint} cannot be read as weights" in message
    assert "save model.state_dict()" in message and "weights_only=False" not in message
    for damaged in (b"", b"garbage bytes", teacher_bytes[:len(teacher_bytes) // 2]):
        checkpoint.write_bytes(damaged)
        assert str(checkpoint) in refused(capsys, "train", *tiny(tmp_path, *distil))
        with pytest.raises(ValueError, match="cannot be read as weights"):
            models.load_checkpoint(models.create("resnet14", 10, 1), checkpoint)
    assert not finished_runs(tmp_path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished tiny runs: "two" (2 epochs, step schedule), "one" (1 epoch), "onecycle" (2
    epochs) and "wide" (another student)."""
    out = tmp_path_factory.mktemp("runs")
    changes = {"two": [], "one": ["optim.epochs=1"], "onecycle": ["optim.schedule=onecycle"],
               "wide": ["student=resnet14"]}
    return {name: train.fit(None, tiny(out, f"name={name}", *extra), quiet=True).path
            for name, extra in changes.items()}


def unfinished_copy(run: Path, out: Path) -> Path:
    """``run`` copied into ``out`` without its summary: a run interrupted after its last.pt."""
    copy = out / run.name
    shutil.copytree(run, copy)
    (copy / SUMMARY).unlink()
    return copy


def test_a_damaged_last_pt_names_it_and_how_to_restart(tmp_path, capsys, runs):
    copy = unfinished_copy(runs["two"], tmp_path)
    good = (copy / LAST).read_bytes()
    for damaged in (b"", b"\x80\x02garbage", good[:len(good) - 100]):
        (copy / LAST).write_bytes(damaged)
        message = refused(capsys, "train", *tiny(tmp_path, "name=two"))
        assert f"{copy / LAST} is damaged" in message
        assert "move it away" in message and "restarts from scratch" in message
        assert not finished_runs(tmp_path)
    (copy / LAST).rename(copy / "last.pt.old")  # as the message says
    code, _, _ = cli(capsys, "train", *tiny(tmp_path, "name=two"))
    assert code == 0 and finished_runs(tmp_path) == [copy]


@pytest.mark.parametrize("into, source, problem", [
    ("one", "two", "its epoch 2 is not within this run's 1..1"),
    ("two", "onecycle", "its learning-rate schedule is another recipe's"),
    ("two", "wide", "its model, optimizer or random state does not fit this run's"),
])
def test_a_last_pt_of_another_run_is_refused(tmp_path, capsys, runs, into, source, problem):
    copy = unfinished_copy(runs[into], tmp_path)
    shutil.copy(runs[source] / LAST, copy / LAST)
    extra = ["optim.epochs=1"] if into == "one" else []
    message = refused(capsys, "train", *tiny(tmp_path, f"name={into}", *extra))
    assert f"{copy / LAST} is not this run's resume state ({problem})" in message
    assert not finished_runs(tmp_path)


# ------------------------------------------------------------------------ NaN and finished runs
def test_a_loss_that_becomes_nan_stops_the_run_unfinished(tmp_path, capsys):
    with pytest.raises(RuntimeError, match=r"the loss term loss_ce became nan in epoch 1 "
                                           r"\(first at step \d+ of the epoch\)"):
        train.fit(None, tiny(tmp_path, "optim.lr=1.0e+10"), quiet=True)
    assert "loss_ce became nan in epoch 1" in refused(capsys, "train",
                                                      *tiny(tmp_path, "optim.lr=1.0e+10"))
    assert not finished_runs(tmp_path)
    assert all(not (run / LAST).exists() for run in tmp_path.iterdir() if run.is_dir())


@pytest.mark.parametrize("summary_change, problem", [
    ({"best_acc": None}, "has best_acc None, not a finite number"),
    ({"last_acc": math.nan}, "has last_acc nan, not a finite number"),
])
def test_a_summary_without_finite_accuracies_is_not_finished(tmp_path, capsys, runs,
                                                             summary_change, problem):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config.load_file(runs["two"] / "config.yaml")))
    sweep_file = tmp_path / "table.yaml"
    sweep_file.write_text("configs: [recipe.yaml]\nseeds: [0]\n")
    copy = tmp_path / "runs" / "two"
    shutil.copytree(runs["two"], copy)
    summary = json.loads((copy / SUMMARY).read_text())
    summary = {key: value for key, value in {**summary, **summary_change}.items()
               if value is not None}
    (copy / SUMMARY).write_text(json.dumps(summary))
    out = [f"out={tmp_path / 'runs'}"]
    code, listing, _ = cli(capsys, "sweep", sweep_file, "--list", *out)
    assert code == 0 and "\tfinished\t" not in listing and problem in listing
    code, table, _ = cli(capsys, "report", sweep_file, "--set", *out, "--out", tmp_path / "rep")
    assert code == 0 and "Skipped run folders" in table and problem in table
    assert "corrupt" in refused(capsys, "train", "--config", recipe, *out)


# -------------------------------------------------------------------------- read-only folders
def test_a_finished_run_is_read_without_writing(tmp_path, runs):
    shared = tmp_path / "shared"
    shutil.copytree(runs["two"], shared / "two")
    before = sorted(shared.rglob("*"))
    run = train.fit(None, tiny(shared, "name=two"), quiet=True)
    assert run.path == shared / "two" and sorted(shared.rglob("*")) == before  # no lock file


def test_writing_where_it_cannot_is_one_line(tmp_path, capsys, runs):
    # A file where a folder should be: the file system refuses, whoever runs the test (root
    # ignores permission bits).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    message = refused(capsys, "train", *tiny(blocker / "runs"))
    assert f"cannot write the run folder {blocker / 'runs'}" in message and "set out=" in message
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config.load_file(runs["two"] / "config.yaml")))
    (tmp_path / "table.yaml").write_text("configs: [recipe.yaml]\n")
    message = refused(capsys, "report", tmp_path / "table.yaml", "--out", blocker)
    assert f"cannot write the report into {blocker}" in message and "--out" in message
    run = tmp_path / "run"
    shutil.copytree(runs["two"], run)
    (run / "probe-digits").write_text("")
    assert f"{run / 'probe-digits'}: File exists" in refused(capsys, "probe", run, "--dataset",
                                                               "digits")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_runs_folder(tmp_path, capsys, runs):
    shared = tmp_path / "shared"
    shutil.copytree(runs["two"], shared / "two")
    for path in [shared, *shared.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        assert train.fit(None, tiny(shared, "name=two"), quiet=True).path == shared / "two"
        assert "cannot write the run folder" in refused(capsys, "train", *tiny(shared, "seed=1"))
    finally:
        for path in [shared, *shared.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


# ---------------------------------------------------------------------- property-based tests
KEYS = sorted(_leaves(config.DEFAULTS) | {"loss.beta", "loss.temperature", "loss.resolution",
                                          "optim", "data", "teacher", "epochs", "optim.lrr"})
# Text without line breaks: a message that names a path made of it shows them as they are.
VALUES = st.one_of(st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
                   st.booleans(), st.none(),
                   st.text(st.characters(exclude_characters="\n\r"), max_size=6),
                   st.lists(st.integers(-2, 300), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2))
# A value as YAML text, or any text at all (broken YAML included).
VALUE_TEXT = st.one_of(VALUES.map(lambda value: yaml.safe_dump(value, default_flow_style=True)
                                  .removesuffix("\n...\n").strip()),
                       st.text(alphabet="[]{}:,'\"!&*#|>%@ abc0123.-+e\n", max_size=10))
OVERRIDES = st.lists(st.builds(lambda key, value: f"{key}={value}", st.sampled_from(KEYS),
                               VALUE_TEXT), max_size=4)
DOCUMENTED = (ValueError, FileNotFoundError)


def test_random_overrides_resolve_or_are_one_documented_line(capsys):
    tried = []

    @MANY
    @given(overrides=OVERRIDES, distils=st.booleans())
    def check(overrides, distils):
        tried.append(overrides)
        base = ["method=catkd", "teacher.model=resnet14"] if distils else []
        try:
            resolved = config.resolve(None, [*base, *overrides])
        except DOCUMENTED as error:
            assert str(error) and "\n" not in str(error)
        else:
            assert set(resolved) == set(config.DEFAULTS)

    check()
    print_tried(capsys, "override lists", len(tried))


def _command_line_outcome(capsys, out: Path, *args) -> None:
    """A command either succeeds with a finished run, or refuses in one line (exit code 2)
    and leaves no finished run behind."""
    code, _, err = cli(capsys, *args)
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert not finished_runs(out)
    else:
        assert finished_runs(out)


# A random file may set anything the command line does not: not compiling for minutes, nor
# switching on deterministic algorithms (a setting of the whole process) or emulated bf16.
SAFE = ["runtime.compile=false", "runtime.deterministic=false", "runtime.bf16=false"]
SETTINGS = {**{name: [*section, "typo"] for name, section in config.DEFAULTS.items()
               if isinstance(section, dict) and section},
            "loss": ["beta", "temperature", "resolution", "typo"]}
MAPPINGS = st.fixed_dictionaries({}, optional={
    **{key: VALUES for key in [*config.DEFAULTS, "base", "typo"]},
    **{name: VALUES | st.dictionaries(st.sampled_from(keys), VALUES, max_size=3)
       for name, keys in SETTINGS.items()}})
FILE_TEXT = st.one_of(MAPPINGS.map(yaml.safe_dump),
                      st.text(alphabet="[]{}:,'\"!&*#|>%@ -\nabcdeflopstim0123.", max_size=40))


def test_random_config_files_through_the_command_line(tmp_path, capsys):
    tried = []

    @FEW
    @given(text=FILE_TEXT)
    def check(text):
        tried.append(text)
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            path = Path(folder) / "config.yaml"
            path.write_text(text)
            _command_line_outcome(capsys, Path(folder), "train", "--config", path,
                                  *tiny(Path(folder) / "runs", *SAFE))

    check()
    print_tried(capsys, "config files", len(tried))


def _damaged(good: bytes, overwritten: bool):
    """Checkpoint bytes: random, a truncation of ``good``, pickled Python objects, or (if
    ``overwritten``) ``good`` with bytes overwritten."""
    strategies = [
        st.binary(max_size=200),
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),
        st.recursive(st.none() | st.integers() | st.text(max_size=4),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                     max_leaves=6).map(pickle.dumps)]
    if overwritten:
        strategies.append(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)),
                                   min_size=1, max_size=4)
                          .map(lambda edits: _overwrite(good, edits)))
    return st.one_of(strategies)


def _overwrite(good: bytes, edits) -> bytes:
    damaged = bytearray(good)
    for position, value in edits:
        damaged[position] = value
    return bytes(damaged)


def test_random_teacher_checkpoints_through_the_command_line(tmp_path, capsys, teacher_bytes):
    tried = []

    @FEW
    @given(content=_damaged(teacher_bytes, overwritten=True))
    def check(content):
        tried.append(content)
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            checkpoint = Path(folder) / "teacher.pth"
            checkpoint.write_bytes(content)
            _command_line_outcome(capsys, Path(folder), "train", *tiny(
                Path(folder), "method=kd", "teacher.model=resnet14",
                f"teacher.checkpoint={checkpoint}", "optim.epochs=1"))

    check()
    print_tried(capsys, "teacher checkpoints", len(tried))


def test_random_last_pt_through_the_command_line(tmp_path, capsys, runs):
    tried = []
    good = (runs["two"] / LAST).read_bytes()

    # No bytes overwritten: torch does not check the zip's checksums, and a resume state altered
    # inside its record (an accuracy that is text) is not what a damaged file looks like.
    @FEW
    @given(content=_damaged(good, overwritten=False))
    def check(content):
        tried.append(content)
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            copy = unfinished_copy(runs["two"], Path(folder))
            (copy / LAST).write_bytes(content)
            _command_line_outcome(capsys, Path(folder), "train",
                                  *tiny(Path(folder), "name=two"))

    check()
    print_tried(capsys, "last.pt files", len(tried))


def test_a_cam_resolution_larger_than_the_maps_stops_before_the_teacher_trains(tmp_path, capsys):
    from catkd.__main__ import main

    assert main(["train", *tiny(tmp_path, "method=catkd", "teacher.model=resnet14",
                                "loss.resolution=9")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "resolution must be an int in 1..2" in error
    assert error.count("\n") == 1  # one line
    assert not [path for path in tmp_path.iterdir() if path.is_dir()], "nothing trained"


def test_a_teacher_whose_head_has_no_cams_is_one_line_before_it_trains(tmp_path, capsys):
    message = refused(capsys, "train", *tiny(tmp_path, "method=cat", "loss.resolution=1",
                                             "teacher.model=torchvision.mobilenet_v3_small"))
    assert "cannot use student resnet8 and teacher torchvision.mobilenet_v3_small" in message
    assert "global average pooling followed by exactly one nn.Linear" in message
    assert not [path for path in tmp_path.iterdir() if path.is_dir()], "a run folder was made"
