"""`--out DIR`: write the plan and every export next to each other.

    plan.yaml                vramplan's own (plan --apply DIR/plan.yaml)
    llamafactory.yaml        llamafactory-cli train llamafactory.yaml
    dataset_info.json        when local data files are registered for LLaMA-Factory
    deepspeed.json           when a ZeRO stage is planned
    axolotl.yaml             axolotl train axolotl.yaml
    launch.sh                one GPU, torchrun, or per-node commands
    training_arguments.json, lora_config.json, bnb_config.json, model_kwargs.json   (plain transformers)

Existing files are never overwritten without force.

    >>> write_exports(plan, Path("out"), model_ref="Qwen/Qwen2.5-7B", data_ref={"data": ["my.json"]})
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.errors import UserError
from planner.exports.axolotl import axolotl_yaml
from planner.exports.deepspeed_json import deepspeed_config
from planner.exports.hf_json import bnb_config, lora_config, model_kwargs, training_arguments
from planner.exports.launch import launch_script
from planner.exports.llamafactory import llamafactory_yaml

# Every file a plan may write: one from an earlier plan that this one does not write (deepspeed.json of a
# ZeRO plan, bnb_config.json of a QLoRA plan) would contradict it, so it counts as a clash too.
EXPORT_FILES = frozenset({"plan.yaml", "llamafactory.yaml", "dataset_info.json", "deepspeed.json", "axolotl.yaml",
                          "launch.sh", "training_arguments.json", "lora_config.json", "bnb_config.json",
                          "model_kwargs.json"})


def _model_ref(plan, model_ref: str | None) -> str:
    if model_ref:
        return model_ref
    m = plan.model
    if m.source_dir is not None and m.source != "hub":
        return str(Path(m.source_dir).resolve())
    return m.hub_id or m.name


def _data_ref(data_ref: Any) -> dict[str, Any] | None:
    if data_ref is None or data_ref == {}:
        return None
    if isinstance(data_ref, str):
        return {"data": [data_ref]}
    if isinstance(data_ref, (list, tuple)):
        return {"data": list(data_ref)}
    out = dict(data_ref)
    for key, value in out.items():  # DataRequest tuples -> YAML lists
        if isinstance(value, tuple):
            out[key] = list(value)
    return out


def training_of(plan) -> dict[str, Any]:
    """The run settings the plan chose (plan.yaml's `training`): --apply trains what the plan shows."""
    return {"learning_rate": plan.hparams.learning_rate, "num_train_epochs": plan.hparams.num_train_epochs,
            "eval_ratio": plan.hparams.val_size}


def plan_file(plan, *, model_ref: str | None, data_ref: dict[str, Any] | None):
    """The PlanFile (plan.yaml) for this plan: what `plan --apply` reloads."""
    from planner.exports.plan_file import PlanFile, pin_data_paths

    # Absolute paths: `plan --apply DIR/plan.yaml` must read the same data from any folder.
    data = pin_data_paths({k: v for k, v in (data_ref or {}).items() if v not in (None, [], ())}, Path.cwd())
    training = training_of(plan)
    predicted = {"peak_bytes": int(plan.memory.peak_bytes), "limit_bytes": int(plan.limit_bytes),
                 "tokens_per_s": round(plan.throughput.tokens_per_s, 1)}
    pf = PlanFile.from_values(plan.model, plan.config, plan.setup, data=data, training=training,
                              predicted=predicted)
    if model_ref and Path(model_ref).expanduser().is_dir():
        pf = pf.with_(model={**pf.model, "path": str(Path(model_ref).expanduser().resolve())})
    return pf


def render_exports(plan, out_dir: Path, *, model_ref: str | None = None, data_ref: Any = None) -> dict[str, str]:
    """File name -> text, without touching the disk."""
    ref = _model_ref(plan, model_ref)
    data = _data_ref(data_ref)
    ds = deepspeed_config(plan.config)
    ds_file = "deepspeed.json" if ds else None
    files: dict[str, str] = {"plan.yaml": plan_file(plan, model_ref=model_ref, data_ref=data).to_yaml()}
    lf_text, info = llamafactory_yaml(plan, model_ref=ref, data_ref=data, out_dir=out_dir, deepspeed_file=ds_file)
    files["llamafactory.yaml"] = lf_text
    if info:
        files["dataset_info.json"] = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
    if ds:
        files["deepspeed.json"] = json.dumps(ds, indent=2) + "\n"
    files["axolotl.yaml"] = axolotl_yaml(plan, model_ref=ref, data_ref=data, deepspeed_file=ds_file)
    files["launch.sh"] = launch_script(plan)
    files["training_arguments.json"] = json.dumps(training_arguments(plan, deepspeed_file=ds_file), indent=2) + "\n"
    for name, obj in (("lora_config.json", lora_config(plan)), ("bnb_config.json", bnb_config(plan)),
                      ("model_kwargs.json", model_kwargs(plan))):
        if obj is not None:
            files[name] = json.dumps(obj, indent=2) + "\n"
    return files


def write_exports(plan, out_dir: str | Path, *, model_ref: str | None = None, data_ref: Any = None,
                  force: bool = False) -> list[Path]:
    """Write plan.yaml and the exports into out_dir; returns the paths written."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder.", "Choose another --out folder.")
    files = render_exports(plan, out, model_ref=model_ref, data_ref=data_ref)
    clash = sorted(name for name in EXPORT_FILES | set(files) if (out / name).exists())
    if clash and not force:
        raise UserError(f"--out {out}: {', '.join(clash)} already exist{'s' if len(clash) == 1 else ''}.",
                        "Pass --force to overwrite them, or choose another --out folder.")
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in clash:
            if name not in files:  # left by an earlier plan: it would contradict this one
                (out / name).unlink()
        for name, text in files.items():
            path = out / name
            path.write_text(text, encoding="utf-8")
            if name.endswith(".sh"):
                path.chmod(0o755)
            written.append(path)
    except OSError as exc:  # a full disk or a folder that changed since the check before the plan
        raise UserError(f"--out {out}: cannot write {exc.filename or out} ({exc.strerror or exc}).",
                        "Choose a folder you can write to with --out DIR.") from None
    return written
