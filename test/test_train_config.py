# SPDX-License-Identifier: Apache-2.0
"""Training config: validation, overrides, shipped YAML files, CLI error handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_perception.core.errors import UserError
from mtl_perception.train import cli
from mtl_perception.train.config import TrainConfig, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "train"


def test_misspelt_key_names_it_and_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lerning_rate: 0.1\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert "optim.lerning_rate" in message and str(path) in message
    assert "lr" in message and "warmup_steps" in message


def test_overrides_are_type_checked_and_nested() -> None:
    config = load_config(
        None,
        ["optim.lr=5e-4", "model.input_size=[64,96]", "balancing.task_weights={detection: 2}"],
    )
    assert config.optim.lr == pytest.approx(5e-4)
    assert config.model.input_size == (64, 96)
    assert config.balancing.task_weights == {"detection": 2.0}
    with pytest.raises(UserError, match=r"optim\.epochs"):
        load_config(None, ["optim.epochs=many"])
    with pytest.raises(UserError, match=r"unknown key 'balancing\.weigthing'"):
        load_config(None, ["balancing.weigthing=dwa"])
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(UserError, match="pcgard"):
        load_config(None, ["balancing.grad_method=pcgard"])
    with pytest.raises(UserError, match="'gpu' is not one of auto, cpu, cuda, cuda:N"):
        load_config(None, ["device=gpu"])
    with pytest.raises(UserError, match=r"model\.input_size"):
        load_config(None, ["model.input_size=[16,64]"])  # below the one minimum side


def test_every_shipped_config_is_valid_and_default_yaml_documents_every_key() -> None:
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert {"default.yaml", "demo_cpu.yaml"} <= {f.name for f in files}
    for file in files:
        assert isinstance(load_config(file), TrainConfig)
    default_text = (CONFIG_DIR / "default.yaml").read_text()
    for section, model in TrainConfig.model_fields.items():
        assert f"{section}:" in default_text
        annotation = model.annotation
        for key in getattr(annotation, "model_fields", {}):
            assert f"  {key}:" in default_text, f"default.yaml does not document {section}.{key}"
    assert load_config(CONFIG_DIR / "default.yaml").to_dict() == TrainConfig().to_dict()


def test_cli_reports_user_errors_in_one_line_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["optim.lrr=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtl-train: error:") and "optim.lrr" in err[0]
    with pytest.raises(SystemExit) as info:
        cli.main([f"output_dir={tmp_path}", "name=none", "--resume"])
    assert info.value.code == 2
    assert "last.pt" in capsys.readouterr().err
