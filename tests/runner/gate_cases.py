"""The accuracy-gate matrix: tiny real models for the tensor-accounting oracle, full-size ones for the
fake-tensor oracle. Shared by tests/runner/test_gates.py and benchmarks/memory_error_table.py.

Tiny models keep the ratios of real checkpoints that decide where the peak lies (vocab / hidden = 32,
intermediate / hidden = 2.75, GQA 2:1) at a size the CPU runs in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig

TOLERANCE_TENSOR = 0.02  # analytic vs tensor accounting, per phase
TOLERANCE_FAKE = 0.03  # analytic vs fake-tensor simulation, per phase
TINY_KINDS = ("qwen2", "llama", "gemma2", "qwen3", "phi3", "mistral")


def tiny_spec(kind: str, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
              vocab: int = 2048, tie: bool = False) -> ModelSpec:
    config = {"model_type": kind, "hidden_size": hidden, "intermediate_size": hidden * 11 // 4,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "vocab_size": vocab, "tie_word_embeddings": tie, "max_position_embeddings": 4096}
    if kind == "gemma2":
        config.update(head_dim=hidden // heads, query_pre_attn_scalar=hidden // heads, sliding_window=4096,
                      hidden_activation="gelu_pytorch_tanh")
    if kind == "qwen2":
        config["use_sliding_window"] = False
    if kind == "qwen3":
        config["head_dim"] = hidden // heads
    if kind == "phi3":  # its config defaults point the special tokens past a tiny vocabulary
        config.update(pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return ModelSpec.from_config(config, name=f"tiny-{kind}-h{hidden}-l{layers}")


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # tiny kind (qwen2, llama, gemma2) or a catalog name for the fake-tensor oracle
    batch_size: int
    seq_len: int
    train: dict = field(default_factory=dict)  # TrainConfig fields
    layers: int = 2
    tie: bool = False

    def train_config(self) -> TrainConfig:
        base = {"gradient_accumulation_steps": 1, "gradient_checkpointing": False}
        base.update(self.train)
        return TrainConfig(**base).with_(per_device_train_batch_size=self.batch_size, cutoff_len=self.seq_len)

    def spec(self) -> ModelSpec:
        if self.model in TINY_KINDS:
            return tiny_spec(self.model, layers=self.layers, tie=self.tie)
        from planner.model.catalog import find_model

        return find_model(self.model).spec


# Oracle 1: a real CPU step under tensor accounting (~1-3 s each).
TENSOR_CASES = (
    Case("qwen2 lora r8 all bf16", "qwen2", 1, 256),
    Case("qwen2 lora r64 q,v bf16", "qwen2", 2, 128, {"lora_rank": 64, "lora_target": ("q_proj", "v_proj")}),
    Case("qwen2 lora r16 o,down dropout", "qwen2", 1, 256,
         {"lora_rank": 16, "lora_target": ("o_proj", "down_proj"), "lora_dropout": 0.1}),
    Case("qwen2 lora ckpt bs4", "qwen2", 4, 64, {"gradient_checkpointing": True}),
    Case("qwen2 lora fp32", "qwen2", 1, 256, {"dtype": "fp32"}),
    Case("qwen2 lora eager", "qwen2", 2, 256, {"attn_implementation": "eager"}),
    Case("qwen2 lora eager ckpt 512", "qwen2", 1, 512,
         {"attn_implementation": "eager", "gradient_checkpointing": True}),
    Case("qwen2 lora accum4", "qwen2", 2, 128, {"gradient_accumulation_steps": 4}),
    Case("qwen2 lora fused adamw", "qwen2", 1, 512, {"optim": "adamw_torch_fused"}),
    Case("qwen2 lora forloop adamw", "qwen2", 1, 128, {"optim": "adamw_torch_forloop"}),
    Case("qwen2 full bf16", "qwen2", 2, 128, {"finetuning_type": "full"}),
    Case("qwen2 full fp32 ckpt", "qwen2", 1, 256, {"finetuning_type": "full", "dtype": "fp32",
                                                  "gradient_checkpointing": True}),
    Case("qwen2 full bf16 6 layers", "qwen2", 1, 256, {"finetuning_type": "full"}, layers=6),
    Case("qwen2 full accum2 sgd", "qwen2", 1, 128, {"finetuning_type": "full", "optim": "sgd",
                                                   "gradient_accumulation_steps": 2}),
    Case("qwen2 freeze bf16", "qwen2", 1, 256, {"finetuning_type": "freeze", "freeze_trainable_layers": 1},
         layers=3),
    Case("qwen2 freeze ckpt", "qwen2", 2, 128, {"finetuning_type": "freeze", "freeze_trainable_layers": 1,
                                               "gradient_checkpointing": True}, layers=3),
    Case("llama lora bf16 1024", "llama", 1, 1024),
    Case("llama lora r32 ckpt 6 layers", "llama", 2, 256, {"lora_rank": 32, "gradient_checkpointing": True},
         layers=6),
    Case("llama lora fp32 eager", "llama", 1, 256, {"dtype": "fp32", "attn_implementation": "eager"}),
    Case("llama full fp32", "llama", 1, 256, {"finetuning_type": "full", "dtype": "fp32"}),
    Case("llama full bf16 tied", "llama", 1, 128, {"finetuning_type": "full"}, tie=True),
    Case("llama freeze fp32", "llama", 1, 128, {"finetuning_type": "freeze", "freeze_trainable_layers": 1,
                                               "dtype": "fp32"}),
    Case("gemma2 lora bf16", "gemma2", 1, 256),
    Case("gemma2 lora ckpt", "gemma2", 2, 256, {"gradient_checkpointing": True}),
    Case("gemma2 lora fp32 q,k,v", "gemma2", 1, 128, {"dtype": "fp32", "lora_target": ("q_proj", "k_proj", "v_proj")}),
    Case("gemma2 full bf16", "gemma2", 1, 128, {"finetuning_type": "full"}),
    Case("gemma2 full fp32 ckpt", "gemma2", 1, 64, {"finetuning_type": "full", "dtype": "fp32",
                                                   "gradient_checkpointing": True}),
    Case("gemma2 freeze bf16", "gemma2", 4, 64, {"finetuning_type": "freeze", "freeze_trainable_layers": 1}),
    Case("qwen2 dora bf16", "qwen2", 1, 256, {"use_dora": True}),
    Case("qwen2 lora fp32+amp bf16", "qwen2", 1, 256, {"dtype": "fp32", "amp": "bf16"}),
    Case("qwen2 full fp32+amp ckpt 5 layers", "qwen2", 1, 256, {"finetuning_type": "full", "dtype": "fp32",
                                                               "amp": "bf16", "gradient_checkpointing": True},
         layers=5),
    Case("qwen3 lora bf16 (q/k norm)", "qwen3", 2, 128),
    Case("phi3 lora ckpt (fused qkv, gate_up)", "phi3", 1, 256, {"gradient_checkpointing": True}),
    # QLoRA (bitsandbytes 4-bit NF4 on the CPU) under each trainer's recipe (profiles/trainers.yaml):
    # LLaMA-Factory keeps embeddings/norms/lm_head 16-bit, peft's prepare_model_for_kbit_training upcasts
    # them to fp32, TRL casts the adapters to bf16.
    Case("qwen2 qlora llamafactory", "qwen2", 1, 256, {"quantization_bit": 4}),
    Case("qwen2 qlora ckpt llamafactory", "qwen2", 2, 128, {"quantization_bit": 4, "gradient_checkpointing": True}),
    Case("qwen2 qlora peft (fp32 upcast)", "qwen2", 1, 256, {"quantization_bit": 4, "trainer": "peft"}),
    Case("qwen2 qlora ckpt peft (fp32 upcast)", "qwen2", 2, 128,
         {"quantization_bit": 4, "gradient_checkpointing": True, "trainer": "peft"}),
    Case("qwen2 qlora trl (bf16 adapters)", "qwen2", 1, 256, {"quantization_bit": 4, "trainer": "trl"}),
    Case("llama qlora dropout no double quant llamafactory", "llama", 1, 256,
         {"quantization_bit": 4, "double_quantization": False, "lora_dropout": 0.1}),
    Case("llama qlora r32 accum2 peft", "llama", 1, 128,
         {"quantization_bit": 4, "lora_rank": 32, "gradient_accumulation_steps": 2, "trainer": "peft"}),
)

# Oracle 2: the full-size model traced with fake tensors (~10-20 s each).
FAKE_CASES = (
    Case("Qwen2.5-7B full 512", "Qwen2.5-7B", 1, 512, {"finetuning_type": "full"}),
    Case("Qwen2.5-7B lora 8192 ckpt", "Qwen2.5-7B", 1, 8192, {"gradient_checkpointing": True}),
    Case("Llama-3.1-8B lora 512", "Llama-3.1-8B", 1, 512),
    Case("Llama-3.1-8B lora ckpt 4096", "Llama-3.1-8B", 1, 4096, {"gradient_checkpointing": True}),
)
