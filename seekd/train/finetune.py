"""`seekd finetune`: LoRA supervised fine-tuning with PEFT and transformers' Trainer, writing a PEFT
adapter that `seekd serve --lora-modules name=DIR` loads.

The Trainer does the training, checkpointing and evaluation (no hand-written loop): a run that was
stopped resumes from the newest checkpoint in DIR/checkpoints. Beside the adapter the output folder
holds loss_log.csv (step, train loss, eval loss) and, where matplotlib is installed, loss.png.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seekd.train.data import collate, read_conversations, split, tokenize

logger = logging.getLogger(__name__)

# the projections seekd serves adapters on (PEFT matches module-name suffixes); routed experts excluded
DENSE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MLA_TARGETS = (
    r".*\.layers\.\d+\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(shared_experts\.)?(gate_proj|up_proj|down_proj))"
)


@dataclass
class FinetuneOptions:
    base: Path  # the base model folder (Hugging Face layout, loadable by transformers)
    data: Path  # chat JSONL
    output: Path  # where the adapter, logs and checkpoints go
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 1024
    eval_fraction: float = 0.1
    save_steps: int = 50
    seed: int = 0
    target_modules: list[str] | str | None = None  # None: every projection seekd serves adapters on
    extra: dict[str, Any] = field(default_factory=dict)  # more TrainingArguments, by name


@dataclass
class FinetuneResult:
    adapter: Path
    train_loss: float  # mean loss of the last logged steps
    eval_loss: float | None
    steps: int
    plot: Path | None  # loss.png, or None without matplotlib (loss_log.csv is always written)


def default_targets(model_type: str) -> list[str] | str:
    return MLA_TARGETS if model_type.startswith("deepseek") else DENSE_TARGETS


def finetune(options: FinetuneOptions, show_progress: bool = True) -> FinetuneResult:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers.trainer_utils import get_last_checkpoint

    from seekd.train.progress import LossRecorder

    tokenizer = transformers.AutoTokenizer.from_pretrained(options.base)
    if tokenizer.chat_template is None:
        raise ValueError(f"{options.base} has no chat template (tokenizer_config.json chat_template)")
    conversations = read_conversations(options.data)
    examples = [dataclasses.asdict(tokenize(tokenizer, c, options.max_seq_len)) for c in conversations]
    train_set, eval_set = split(examples, options.eval_fraction, options.seed)
    cuda = torch.cuda.is_available()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        options.base, dtype=torch.bfloat16 if cuda else torch.float32
    )
    lora = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules or default_targets(model.config.model_type),
        task_type="CAUSAL_LM",
        bias="none",
    )
    model = get_peft_model(model, lora)
    checkpoints = options.output / "checkpoints"
    args = transformers.TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        learning_rate=options.learning_rate,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        logging_steps=1,
        eval_strategy="steps" if eval_set else "no",
        eval_steps=options.save_steps,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=2,
        seed=options.seed,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        use_cpu=not cuda,
        bf16=cuda,
        **options.extra,
    )
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    resume_step = int(Path(resume).name.rpartition("-")[2]) if resume else 0
    recorder = LossRecorder(options.output / "loss_log.csv", show_progress, resume_step)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set or None,
        data_collator=lambda batch: collate(batch, tokenizer.pad_token_id or 0),
        callbacks=[recorder],
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # the recorder reports progress
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    eval_loss = trainer.evaluate()["eval_loss"] if eval_set else None
    recorder.add_eval(trainer.state.global_step, eval_loss)
    model.save_pretrained(options.output)
    _write_summary(options, trainer.state.global_step, recorder, eval_loss)
    return FinetuneResult(
        options.output, recorder.recent_train_loss(), eval_loss, trainer.state.global_step, recorder.plot()
    )


def _write_summary(options: FinetuneOptions, steps: int, recorder: Any, eval_loss: float | None) -> None:
    summary = {
        "base": str(options.base),
        "data": str(options.data),
        "steps": steps,
        "train_loss": recorder.recent_train_loss(),
        "eval_loss": None if eval_loss is None or math.isnan(eval_loss) else eval_loss,
        "rank": options.rank,
        "alpha": options.alpha,
    }
    (options.output / "finetune.json").write_text(json.dumps(summary, indent=1))


def read_loss_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
