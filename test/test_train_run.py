# SPDX-License-Identifier: Apache-2.0
"""End-to-end ``mtl-train`` on a tiny dataset: outputs, exact resume, bad datasets, learning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import make_processed_dataset, tiny_run_overrides

from mtl_perception.checkpoint import load_checkpoint
from mtl_perception.core.errors import UserError
from mtl_perception.train import cli
from mtl_perception.train.config import load_config
from mtl_perception.train.engine import train_step
from mtl_perception.train.trainer import Trainer


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_processed_dataset(tmp_path_factory.mktemp("ds"))


def _args(root: Path, out: Path, name: str, *extra: str) -> list[str]:
    return tiny_run_overrides(
        root,
        out,
        name,
        "logging.preview_images=1",
        "logging.log_every=1",
        "balancing.cosine_every=2",
        *extra,
    )


def test_run_writes_config_checkpoints_and_logs(dataset_root: Path, tmp_path: Path) -> None:
    assert (
        cli.run(_args(dataset_root, tmp_path, "one", "optim.epochs=1", "balancing.weighting=dwa"))
        == 0
    )
    run = tmp_path / "one"
    assert load_config(run / "config.yaml").data.root == str(dataset_root)
    best = load_checkpoint(run / "best.pt")
    last = load_checkpoint(run / "last.pt")
    assert best["detection_classes"] == ["box", "cone"] and best["model_kwargs"]["input_size"] == [
        48,
        48,
    ]
    assert last["epoch"] == 1 and last["global_step"] == 3 and last["step_in_epoch"] == 0
    assert set(last["metrics"]) >= {"detection", "segmentation", "score"}
    assert last["best_score"] == pytest.approx(last["metrics"]["score"])
    assert last["balancer"]["_extra_state"]["history"][0].keys() == {"detection", "segmentation"}
    assert any((run / "tb").iterdir())
    from mtl_perception.predictor import Predictor

    prediction = Predictor.from_checkpoint(run / "best.pt", device="cpu").predict(
        np.zeros((30, 40, 3), np.uint8)
    )
    assert prediction.mask is not None and prediction.mask.shape == (30, 40)


def test_killed_run_resumes_to_identical_parameters(dataset_root: Path, tmp_path: Path) -> None:
    common = ("optim.epochs=2", "balancing.weighting=uncertainty", "checkpoint_every_steps=1")
    cli.run(_args(dataset_root, tmp_path, "straight", *common))
    cli.run(_args(dataset_root, tmp_path, "resumed", *common, "max_steps=4"))  # stops mid epoch 2
    stopped = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert (stopped["epoch"], stopped["step_in_epoch"], stopped["global_step"]) == (1, 1, 4)
    # Resuming with the same step limit has nothing left to do (overrides after a flag work too).
    cli.run(_args(dataset_root, tmp_path, "resumed", "--resume", "max_steps=4"))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["global_step"] == 4
    cli.run(_args(dataset_root, tmp_path, "resumed", "max_steps=0", "--resume"))
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["global_step"] == straight["global_step"] == 6
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in straight["balancer"].items():
        assert torch.equal(value, resumed["balancer"][key]), key
    assert resumed["best_score"] == pytest.approx(straight["best_score"])
    # The curves survive the interruption: both epochs, as the straight run logged them.
    assert [e["epoch"] for e in resumed["history"]] == [1, 2]
    assert resumed["history"] == straight["history"]


def test_resume_from_a_checkpoint_without_training_state_names_the_fields(
    dataset_root: Path, tmp_path: Path
) -> None:
    cli.run(_args(dataset_root, tmp_path, "cut", "max_steps=1"))
    last = tmp_path / "cut" / "last.pt"
    payload = load_checkpoint(last)
    del payload["epoch_loss_counts"], payload["rng"]
    torch.save(payload, last)
    with pytest.raises(UserError, match=r"cannot resume.*epoch_loss_counts, rng"):
        cli.run(_args(dataset_root, tmp_path, "cut", "--resume"))


def test_empty_train_split_is_a_clear_error(dataset_root: Path, tmp_path: Path) -> None:
    root = make_processed_dataset(tmp_path / "ds")
    splits = json.loads((root / "splits.json").read_text())
    (root / "splits.json").write_text(json.dumps({**splits, "train": []}))
    with pytest.raises(UserError, match="train split has no images"):
        Trainer(load_config(None, _args(root, tmp_path, "empty")))
    (root / "annotations.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []})
    )
    (root / "splits.json").write_text(json.dumps({**splits, "train": [], "val": []}))
    with pytest.raises(UserError, match="train split has no images"):
        Trainer(load_config(None, _args(root, tmp_path, "empty")))


def test_unknown_model_kwarg_is_a_user_error(dataset_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model\.kwargs"):
        Trainer(load_config(None, _args(dataset_root, tmp_path, "kw", "model.kwargs={widht: 2}")))


def test_loss_falls_when_fitting_one_batch(dataset_root: Path, tmp_path: Path) -> None:
    trainer = Trainer(
        load_config(
            None,
            _args(
                dataset_root,
                tmp_path,
                "fit",
                "optim.warmup_steps=0",
                "optim.epochs=20",
                "augment.crop_prob=0",
                "augment.hflip_prob=0",
            ),
        )
    )
    batch = next(iter(trainer._loader(trainer.train_set, 2, trainer.sampler)))
    totals = [train_step(trainer.step_context, batch, step)["loss/total"] for step in range(12)]
    assert np.mean(totals[-3:]) < 0.7 * np.mean(totals[:3])
