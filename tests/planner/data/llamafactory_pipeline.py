"""Run LLaMA-Factory's own data pipeline (data/loader.py get_dataset) on exported configs; a helper the tests
start in a subprocess, so LLaMA-Factory's imports never enter the test process.

    python llamafactory_pipeline.py jobs.json results.json
    python llamafactory_pipeline.py out/llamafactory.yaml results.json TOKENIZER_DIR [CUTOFF_LEN]
jobs.json: [{"config": {...llamafactory.yaml keys...}}, ...]; results.json: per job, [[length, trained], ...].
The second form runs one exported llamafactory.yaml as written, with the model path pointed at a folder holding
the tokenizer (and optionally another cutoff_len), e.g. to compare `plan --out out --data ...` with it.
LLaMA-Factory is imported from the environment, else from $VRAMPLAN_LF_SITE (appended to sys.path, so the
environment's torch/transformers stay first). Its multimodal module imports torchaudio, which its text
pipeline never uses: a placeholder module stands in when it is missing.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
import types


def _import_path() -> None:
    os.environ["DISABLE_VERSION_CHECK"] = "1"
    site = os.environ.get("VRAMPLAN_LF_SITE")
    if site and site not in sys.path:
        sys.path.append(site)
    if importlib.util.find_spec("torchaudio") is None:
        placeholder = types.ModuleType("torchaudio")
        placeholder.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = placeholder


def run(config: dict) -> list[list[int]]:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from transformers import AutoTokenizer

    model_args, data_args, training_args, finetuning_args, _ = get_train_args(dict(config))
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage=finetuning_args.stage,
                         tokenizer=tokenizer, processor=None)
    # pre-training rows carry no labels: the collator trains on every token
    return [[len(r["input_ids"]), sum(1 for x in r.get("labels", r["input_ids"]) if x != -100)]
            for r in module["train_dataset"]]


def main(jobs_path: str, out_path: str) -> None:
    _import_path()
    import contextlib

    if jobs_path.endswith((".yaml", ".yml")):
        import yaml

        config = yaml.safe_load(open(jobs_path, encoding="utf-8"))
        config["model_name_or_path"] = sys.argv[3]
        if len(sys.argv) > 4:
            config["cutoff_len"] = int(sys.argv[4])
        for key in ("quantization_bit", "quantization_method", "double_quantization", "deepspeed", "bf16", "fp16",
                    "pure_bf16", "enable_liger_kernel", "flash_attn", "optim"):  # training-only: no GPU needed here
            config.pop(key, None)
        config.update(report_to="none", preprocessing_num_workers=None)
        jobs = [{"config": config}]
    else:
        jobs = json.loads(open(jobs_path, encoding="utf-8").read())
    results = []
    for job in jobs:
        with contextlib.redirect_stdout(sys.stderr):  # it prints an example of each dataset
            results.append(run(job["config"]))
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
