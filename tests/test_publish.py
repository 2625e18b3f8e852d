"""Publishing the book (``make publish``) and the book with another teacher (``make book
TEACHER=...``, ``python -m catkd sweep --teacher``).

``make publish`` runs for real, with ghp-import, against a bare repository in tmp_path and a
small fake built book laid out as ``book/_build/html`` is: the real book takes most of an hour to
build. Make runs in a scratch git repository of its own (``make -C``), so that ghp-import's local
gh-pages branch is made there and neither the project's git nor its book/ folder is written to.
``make book`` is only read as a dry run (``make -n``), which runs nothing.
"""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

from catkd.__main__ import main

MAKEFILE = ROOT / "Makefile"
# The ghp-import of the environment that runs the tests (the notebooks extra): .venv's under make
# test, the conda environment's there.
GHP_IMPORT = Path(sys.executable).parent / "ghp-import"


def book_pages() -> list[str]:
    """The HTML pages of the real book, from its table of contents: the root page, then one per
    chapter (book/notebooks/<chapter>.ipynb becomes notebooks/<chapter>.html) and the appendix."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    return [f"{toc['root']}.html", *(f"{entry['file']}.html" for entry in toc["chapters"])]


def fake_book(folder: Path, title: str) -> Path:
    """A built book's HTML folder with index.html and every page of the real book, each naming
    ``title``, so that the test can tell which book a published page came from."""
    for page in ["index.html", *book_pages()]:
        path = folder / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><body>{title}: {page}</body></html>\n")
    return folder


def git(*arguments, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *map(str, arguments)], cwd=cwd, check=True, text=True,
                          capture_output=True).stdout


def author_repository(path: Path, remote: Path) -> Path:
    """An author's clone in miniature: a git repository whose origin is ``remote``."""
    path.mkdir()
    git("init", "-q", path)
    git("remote", "add", "origin", remote, cwd=path)
    return path


def make(directory: Path, *arguments: str) -> subprocess.CompletedProcess:
    """The project's Makefile run from ``directory``, with this environment's ghp-import."""
    environment = {**os.environ, "GIT_COMMITTER_NAME": "catkd test",
                   "GIT_COMMITTER_EMAIL": "test@example.org"}
    return subprocess.run(["make", "--no-print-directory", "-C", str(directory),
                           "-f", str(MAKEFILE), *arguments, f"GHP_IMPORT={GHP_IMPORT}"],
                          text=True, capture_output=True, env=environment, timeout=120)


def published(remote: Path, branch: str = "gh-pages") -> dict[str, str]:
    """{path: content} of every file on ``branch`` of the bare repository ``remote``."""
    names = git("--git-dir", remote, "ls-tree", "-r", "--name-only", branch).split()
    return {name: git("--git-dir", remote, "show", f"{branch}:{name}") for name in names}


def test_make_publish_pushes_the_book_then_a_variant_beside_it(tmp_path):
    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", remote)
    author = author_repository(tmp_path / "author", remote)
    book = fake_book(tmp_path / "book" / "_build" / "html", "default")

    result = make(author, "publish", f"PUBLISH_HTML={book}")
    assert result.returncode == 0, result.stdout + result.stderr
    files = published(remote)
    assert {"index.html", ".nojekyll", *book_pages()} <= set(files)
    assert all(files[page].startswith("<html><body>default: ") for page in book_pages())

    # A variant, from another clone that has no gh-pages branch of its own: it goes under its
    # folder name and keeps the default book at the root (make publish fetches the branch).
    other = author_repository(tmp_path / "other", remote)
    variant = fake_book(tmp_path / "variant" / "_build" / "html", "resnet56")
    result = make(other, "publish", "TEACHER=resnet56", f"PUBLISH_HTML={variant}")
    assert result.returncode == 0, result.stdout + result.stderr
    files = published(remote)
    assert all(files[page].startswith("<html><body>default: ") for page in book_pages())
    for page in ["index.html", *book_pages()]:
        assert files[f"teacher-resnet56/{page}"].startswith("<html><body>resnet56: ")


def test_make_publish_without_a_built_book_says_to_build_it(tmp_path):
    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", remote)
    author = author_repository(tmp_path / "author", remote)

    result = make(author, "publish", f"PUBLISH_HTML={tmp_path / 'missing'}")
    assert result.returncode != 0
    assert f"no built book in {tmp_path / 'missing'}; run make book first" in result.stderr
    result = make(author, "publish", "TEACHER=resnet56", f"PUBLISH_HTML={tmp_path / 'missing'}")
    assert "run make book TEACHER=resnet56 first" in result.stderr
    assert git("--git-dir", remote, "branch", "--list") == ""  # nothing was pushed


def dry_run(*arguments: str) -> subprocess.CompletedProcess:
    """``make -n book ...`` in the project: the commands, none of them run."""
    return subprocess.run(["make", "--no-print-directory", "-n", "book", *arguments], cwd=ROOT,
                          text=True, capture_output=True, timeout=60)


def recipe_commands(text: str) -> list[str]:
    """The printed recipe as commands, each with its continuation lines joined."""
    return text.replace("\\\n", " ").splitlines()


def test_make_book_with_a_teacher_passes_it_everywhere_and_builds_its_own_book():
    result = dry_run("TEACHER=resnet56")
    assert result.returncode == 0, result.stderr
    commands = recipe_commands(result.stdout)
    variant = "book/_variants/teacher-resnet56"
    papermill = [command for command in commands if "papermill" in command]
    assert papermill and all("-p teacher resnet56" in command for command in papermill)
    assert all(f"{variant}/notebooks/" in command and " book/notebooks" not in command
               for command in papermill)
    (sweep,) = [command for command in commands if "-m catkd sweep" in command]
    assert "--teacher resnet56" in sweep
    assert f"jupyter-book build {variant}" in result.stdout
    assert f"> {variant}/_config.yml" in result.stdout  # its own pages, its title naming resnet56
    assert "book/notebooks" not in result.stdout

    with_checkpoint = dry_run("TEACHER=resnet56", "TEACHER_CHECKPOINT=teachers/r56.pt").stdout
    assert "-p teacher resnet56 -p teacher_checkpoint teachers/r56.pt" in with_checkpoint
    assert "--teacher resnet56 --teacher-checkpoint teachers/r56.pt" in with_checkpoint

    refused = dry_run("TEACHER_CHECKPOINT=teachers/r56.pt")
    assert refused.returncode != 0 and "TEACHER_CHECKPOINT needs TEACHER" in refused.stderr


def test_make_book_without_a_teacher_is_the_default_book():
    result = dry_run()
    assert result.returncode == 0, result.stderr
    assert "-p teacher" not in result.stdout and "--teacher" not in result.stdout
    assert "_variants" not in result.stdout
    assert "book/notebooks/$(basename $notebook)" in result.stdout
    assert "jupyter-book build book\n" in result.stdout


def test_make_book_times_chapter_5_alone_then_starts_the_longest_chapters_first():
    commands = recipe_commands(dry_run().stdout)
    chapters = [command.split("|")[0].split("printf '%s\\n' ")[1].split()
                for command in commands if command.startswith("printf '%s\\n' ")]
    assert chapters[0] == ["notebooks/05_efficiency.ipynb"]
    assert chapters[1][:3] == ["notebooks/06_localisation.ipynb", "notebooks/07_beyond_gap.ipynb",
                               "notebooks/02_cat_properties.ipynb"]
    every = sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("notebooks/[0-9]*.ipynb"))
    assert sorted(chapters[0] + chapters[1]) == every  # each chapter once


def test_sweep_teacher_replaces_the_teacher_of_the_runs_that_distil(tmp_path, capsys):
    sweep_file = ROOT / "configs" / "quick" / "sweeps" / "methods.yaml"
    assert main(["sweep", str(sweep_file), "--teacher", "resnet56", "--list",
                 f"out={tmp_path}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    distilling = [line for line in lines if "/ce.yaml" not in line]
    assert distilling and len(distilling) < len(lines)
    assert all("teacher.model=resnet56 teacher.checkpoint=null" in line for line in distilling)
    assert not any("teacher.model" in line for line in lines if "/ce.yaml" in line)
    assert not any(tmp_path.iterdir())  # listed, nothing trained

    assert main(["sweep", str(sweep_file), "--teacher-checkpoint", "r56.pt", "--list"]) == 2
    assert "--teacher-checkpoint needs --teacher" in capsys.readouterr().err
