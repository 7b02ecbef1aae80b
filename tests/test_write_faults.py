"""A full disk and a read-only folder, for real: each stage's writes land on a small tmpfs mounted by the test
(or a read-only bind mount), fail with one line naming the file and the cause, leave what was saved
before as it was, and the stage goes on from its last checkpoint once there is room again.

Mounting needs root (CAP_SYS_ADMIN); elsewhere these tests skip and say why."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

from core.storage.artifacts import WriteError, read_history
from tests.conftest import TEST_ENV

CHECKPOINT = ("cma_state.npz", "params.npz", "state.json", "meta.json")  # an evolution's, beside its history
FREE_BYTES = 12 * 1024  # what a filled disk has left: less than any episode, checkpoint or weights file


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip() or result.returncode}): these tests need root")


@contextlib.contextmanager
def small_disk(folder: Path, megabytes: int = 8):
    """``folder`` on a tmpfs of its own, unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made read-only by a bind mount onto itself (chmod does not stop root)."""
    _mount("--bind", str(folder), str(folder))
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, timeout=30)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=30)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to within FREE_BYTES of full with one file; delete it to make room again."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - FREE_BYTES))
    return filler


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("filler", ".lock")}


def check_one_line(error: BaseException, folder: Path, cause: str) -> None:
    message = str(error)
    assert "\n" not in message and message.startswith(str(folder)) and cause in message, message


def test_collect_on_a_full_disk_keeps_its_episodes_and_goes_on_with_room(tmp_path, tiny_data):
    from core.config import CollectConfig
    from core.pipeline.collect import collect
    with small_disk(tmp_path / "disk") as disk:
        data = disk / "rollouts"
        shutil.copytree(tiny_data, data)  # two episodes already there
        before = snapshot(data)
        filler = fill(disk)
        config = CollectConfig(out_dir=str(data), episodes=3, max_steps=40, workers=1, env=TEST_ENV)
        with pytest.raises(WriteError) as caught:
            collect(config)
        check_one_line(caught.value, data, "the disk is full")
        episodes = {name: content for name, content in snapshot(data).items() if name.endswith(".npz")}
        assert episodes == {name: content for name, content in before.items() if name.endswith(".npz")}
        assert not list(data.glob(".*.tmp"))
        filler.unlink()
        collect(config)
        after = snapshot(data)
        assert len([name for name in after if name.endswith(".npz")]) == 3
        assert all(after[name] == content for name, content in before.items() if name.endswith(".npz"))


def _evolve_config(run: Path, generations: int):
    from core.config import EvolveConfig
    return EvolveConfig(run_dir=str(run), generations=generations, popsize=4, rollouts=1, max_steps=15,
                        eval_every=0, workers=1, env=TEST_ENV)


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_an_evolution_checkpoint_that_cannot_be_written_leaves_the_last_one(fault, tmp_path, tiny_world_model):
    from core.pipeline.evolve import evolve
    run = tmp_path / "run"
    for part in ("vae", "rnn"):
        shutil.copytree(tiny_world_model / part, run / part)
    with small_disk(run / "controller") as controller:
        evolve(_evolve_config(run, 1))
        before = snapshot(controller)
        with contextlib.ExitStack() as fault_here:
            if fault == "disk full":
                filler = fill(controller)
            else:
                fault_here.enter_context(read_only(controller))
            with pytest.raises(WriteError) as caught:
                evolve(_evolve_config(run, 2))
            check_one_line(caught.value, controller, "the disk is full" if fault == "disk full"
                           else "the folder is read-only")
            after = snapshot(controller)
            # The checkpoint is as it was (config.json says how the run was last started, latest.npz shows the
            # generation that could not be saved, and history.jsonl may have its line: the resume cuts it).
            assert {name: after[name] for name in CHECKPOINT} == {name: before[name] for name in CHECKPOINT}
            assert not list(controller.glob(".*.tmp"))
        if fault == "disk full":
            filler.unlink()
        result = evolve(_evolve_config(run, 2))
        assert (result["resumed_from"], result["generation"]) == (1, 2)
        assert [r["generation"] for r in read_history(controller / "history.jsonl")] == [1, 2]


def test_a_training_checkpoint_on_a_full_disk_leaves_the_last_one(tmp_path, tiny_data, tiny_world_model):
    """M's (the VAE's is the same code, core.storage.checkpoints, at 17 MB a weights file)."""
    from core.config import RNNConfig
    from core.pipeline.train_rnn import train_rnn
    run = tmp_path / "run"
    shutil.copytree(tiny_world_model / "vae", run / "vae")

    def config(epochs: int) -> RNNConfig:
        return RNNConfig(data_dir=str(tiny_data), run_dir=str(run), hidden=16, mixtures=3, seq_len=10, batch_size=4,
                         epochs=epochs, holdout=0.0)

    with small_disk(run / "rnn") as rnn:
        train_rnn(config(1))
        before = {k: v for k, v in snapshot(rnn).items() if k.startswith("checkpoint/")}
        assert "checkpoint/state.json" in before
        filler = fill(rnn)
        with pytest.raises(WriteError) as caught:
            train_rnn(config(2))
        check_one_line(caught.value, rnn, "the disk is full")
        assert {k: v for k, v in snapshot(rnn).items() if k.startswith("checkpoint/")} == before
        assert not (rnn / "checkpoint.tmp").exists() and not list(rnn.rglob(".*.tmp"))
        filler.unlink()
        assert train_rnn(config(2))["complete"]
