"""Check an `accelerate` config before a multi-GPU launch: it parses with accelerate's own loader, every key is one
`accelerate launch` knows, and the backend it names (DeepSpeed, FSDP2, DDP) is installed here.

`accelerate launch` fails late and tersely when a backend is missing ("DeepSpeed is not installed"); this says which
extra to install, before a job waits in a queue. `emsweep check-accelerate CONFIG` runs it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emsweep.io import InputError

# accelerate refuses FSDP2 on older torch (accelerate.utils.constants.FSDP2_PYTORCH_VERSION)
FSDP2_MIN_TORCH = "2.6.0"
DEEPSPEED_INSTALL = "pip install -e '.[train,deepspeed]' (from a clone) or pip install 'emsweep[train,deepspeed]'"
TRAIN_INSTALL = "pip install -e '.[train]' (from a clone) or pip install 'emsweep[train]'"


@dataclass(frozen=True)
class AccelerateBackend:
    """What a config asks for: accelerate's distributed type, the backend's name, and the module it needs."""

    path: Path
    distributed_type: str
    backend: str  # "deepspeed" | "fsdp2" | "fsdp1" | "ddp" | "single"
    module: str | None  # imported to prove the backend is installed
    config: Any  # accelerate's ClusterConfig


def _import(module: str) -> Any:
    return importlib.import_module(module)


def load_accelerate_config(path: str | os.PathLike[str]) -> AccelerateBackend:
    """Parse `path` with accelerate's loader and check its nested keys against `accelerate launch`'s arguments
    (accelerate silently ignores an unknown nested key, e.g. a misspelt `zero3_save_16bit_model`)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such accelerate config (see recipes/accelerate/)")
    try:
        from accelerate.commands.config.config_args import load_config_from_file
        from accelerate.commands.launch import launch_command_parser
    except ImportError as exc:
        raise InputError(f"{p}: checking an accelerate config needs accelerate: {TRAIN_INSTALL} ({exc})") from exc
    try:
        cfg = load_config_from_file(str(p))
    except Exception as exc:  # accelerate raises ValueError/TypeError/yaml errors; all mean "bad config"
        raise InputError(f"{p}: accelerate cannot load this config: {exc}") from exc
    known = {a.dest for a in launch_command_parser()._actions}
    for section in ("deepspeed_config", "fsdp_config"):
        for key in getattr(cfg, section, None) or {}:
            arg = key if section != "fsdp_config" or key.startswith("fsdp") else f"fsdp_{key}"
            if arg not in known:
                raise InputError(
                    f"{p}: {section}.{key} is not a setting this accelerate knows (accelerate launch would ignore "
                    "it); check the spelling, or upgrade accelerate"
                )
    dtype = str(getattr(cfg.distributed_type, "value", cfg.distributed_type))
    if dtype == "DEEPSPEED":
        backend, module = "deepspeed", "deepspeed"
    elif dtype == "FSDP":
        version = int((cfg.fsdp_config or {}).get("fsdp_version", 1))
        backend, module = ("fsdp2", "torch.distributed.fsdp") if version == 2 else ("fsdp1", "torch.distributed.fsdp")
    elif dtype in ("MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_HPU"):
        backend, module = "ddp", "torch.distributed"
    else:
        backend, module = "single", None
    return AccelerateBackend(path=p, distributed_type=dtype, backend=backend, module=module, config=cfg)


def check_accelerate_config(path: str | os.PathLike[str]) -> AccelerateBackend:
    """`load_accelerate_config`, then import the backend; an InputError that says what to install if it is missing."""
    info = load_accelerate_config(path)
    p = info.path
    if info.backend == "deepspeed":
        try:
            _import("deepspeed")
        except ImportError as exc:
            raise InputError(
                f"{p}: distributed_type DEEPSPEED needs DeepSpeed, which is not installed here ({exc}). "
                f"Install the extra: {DEEPSPEED_INSTALL}; DeepSpeed builds its CUDA ops against the torch of the "
                "same environment"
            ) from exc
    elif info.backend in ("fsdp2", "fsdp1", "ddp"):
        try:
            torch = _import("torch")
            dist = _import("torch.distributed")
        except ImportError as exc:
            raise InputError(f"{p}: {info.backend} needs torch: {TRAIN_INSTALL} ({exc})") from exc
        if not dist.is_available():
            raise InputError(f"{p}: this torch build has no torch.distributed; {info.backend} needs it")
        if info.backend == "fsdp2":
            from packaging.version import Version

            have = Version(str(torch.__version__).split("+")[0])
            if have < Version(FSDP2_MIN_TORCH):
                raise InputError(
                    f"{p}: FSDP2 (fsdp_version: 2) needs torch>={FSDP2_MIN_TORCH}, this is torch {torch.__version__}; "
                    "upgrade torch (and accelerate), or use recipes/accelerate/zero3.yaml"
                )
            from accelerate.utils import constants

            sdt = (info.config.fsdp_config or {}).get("fsdp_state_dict_type")
            allowed = getattr(constants, "FSDP2_STATE_DICT_TYPE", ())
            if sdt and sdt not in allowed:
                raise InputError(
                    f"{p}: fsdp_state_dict_type {sdt} is not supported with FSDP2 by this accelerate "
                    f"(supports {list(allowed) or 'no FSDP2'}); upgrade accelerate"
                )
            fsdp = _import("torch.distributed.fsdp")
            if not hasattr(fsdp, "fully_shard"):
                raise InputError(f"{p}: torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2)")
    return info
