"""Every shipped accelerate config parses with accelerate's own loader, names only settings accelerate knows, and
its backend either imports here or fails with a message that says which extra to install (DeepSpeed is not installed
in CI: there the test checks that message, it does not skip)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

from emsweep.io import InputError
from emsweep.train import accelerate_check
from emsweep.train.accelerate_check import check_accelerate_config, load_accelerate_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
EXPECTED = {"zero3.yaml": "deepspeed", "fsdp2.yaml": "fsdp2", "multi_gpu.yaml": "ddp"}


def test_the_shipped_configs_are_the_ones_documented() -> None:
    assert {p.name for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_opens_with_the_command_that_runs_it(path: Path) -> None:
    cfg = load_config_from_file(str(path))  # accelerate's own loader: unknown top-level keys are errors
    assert isinstance(cfg, ClusterConfig) and cfg.mixed_precision == "bf16" and not cfg.use_cpu
    info = load_accelerate_config(path)
    assert info.backend == EXPECTED[path.name]
    # torchtune-style: the file says how to run it, with its own path
    assert f"accelerate launch --config_file recipes/accelerate/{path.name}" in path.read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_backend_imports_or_the_error_names_the_extra(path: Path) -> None:
    info = load_accelerate_config(path)
    installed = importlib.util.find_spec(info.module) is not None if info.module else True
    if installed:
        assert check_accelerate_config(path).backend == info.backend
        assert importlib.import_module(info.module or "accelerate")
    else:
        assert info.backend == "deepspeed", f"{info.module} missing: only DeepSpeed is optional in CI"
        with pytest.raises(InputError) as err:
            check_accelerate_config(path)
        msg = str(err.value)
        assert str(path) in msg and "DeepSpeed" in msg and "'.[train,deepspeed]'" in msg


def test_deepspeed_missing_message_even_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` now raises ImportError
    with pytest.raises(InputError, match=r"zero3\.yaml: distributed_type DEEPSPEED needs DeepSpeed.*\[train,deepspeed\]"):
        check_accelerate_config(REPO / "recipes/accelerate/zero3.yaml")


def test_fsdp2_on_old_torch_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch, "__version__", "2.4.1+cu121")
    with pytest.raises(InputError, match=r"FSDP2 \(fsdp_version: 2\) needs torch>=2\.6\.0, this is torch 2\.4\.1"):
        check_accelerate_config(REPO / "recipes/accelerate/fsdp2.yaml")


def test_fsdp2_with_a_state_dict_type_this_accelerate_lacks(tmp_path: Path) -> None:
    bad = tmp_path / "fsdp2-local.yaml"
    bad.write_text((REPO / "recipes/accelerate/fsdp2.yaml").read_text().replace("FULL_STATE_DICT", "LOCAL_STATE_DICT"))
    with pytest.raises(InputError, match=r"fsdp_state_dict_type LOCAL_STATE_DICT is not supported with FSDP2"):
        check_accelerate_config(bad)


def test_bad_configs_name_the_file_and_key(tmp_path: Path) -> None:
    text = (REPO / "recipes/accelerate/zero3.yaml").read_text()
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("zero3_save_16bit_model:", "zero3_save_16bit_modle:"))
    with pytest.raises(InputError, match=r"typo\.yaml: deepspeed_config\.zero3_save_16bit_modle is not a setting"):
        load_accelerate_config(typo)
    top = tmp_path / "top.yaml"
    top.write_text(text + "num_gpus: 4\n")
    with pytest.raises(InputError, match=r"top\.yaml: accelerate cannot load this config: .*num_gpus"):
        load_accelerate_config(top)
    with pytest.raises(InputError, match="no such accelerate config"):
        load_accelerate_config(tmp_path / "missing.yaml")


def test_cli_check_accelerate(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from emsweep.cli import main

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["emsweep", "check-accelerate", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        return int(exc.value.code or 0)

    monkeypatch.chdir(REPO)
    assert run("recipes/accelerate/fsdp2.yaml", "recipes/accelerate/multi_gpu.yaml") == 0
    out = capsys.readouterr().out
    assert re.search(r"fsdp2\.yaml\s+FSDP\s+fsdp2\s+ok", out) and re.search(r"multi_gpu\.yaml\s+MULTI_GPU\s+ddp", out)
    code = run("recipes/accelerate/zero3.yaml")
    if importlib.util.find_spec("deepspeed") is None:
        assert code == 2 and "[train,deepspeed]" in capsys.readouterr().err
    else:
        assert code == 0 and "DEEPSPEED" in capsys.readouterr().out


def test_fsdp2_floor_is_accelerates_own() -> None:
    from accelerate.utils.constants import FSDP2_PYTORCH_VERSION

    assert accelerate_check.FSDP2_MIN_TORCH == FSDP2_PYTORCH_VERSION
