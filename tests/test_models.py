"""Tests for the tiny bases (models), their data (data) and the training loops (train)."""

import numpy as np
import pytest
import torch

from minilora.lab.data import (
    VOCAB,
    VOCAB_SIZE,
    decode,
    digits_dataset,
    encode,
    fixed_lm_batches,
    load_digits,
    load_text,
    read_corpus,
    sample_lm_batch,
    unigram_cross_entropy,
)
from minilora.lab.models import CharGPT, DigitsMLP, GPTConfig, MLPConfig
from minilora.lab.train import (
    accuracy,
    classification_loss,
    evaluate,
    l2_toward,
    lm_loss,
    lm_loss_on,
    train,
    train_classifier,
    train_lm,
)
from minilora.lora import LoRALinear, add_lora

TINY_GPT = GPTConfig(block_size=16, n_layer=2, n_head=2, d_model=16, d_ff=32)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead (and nondeterminism)
    yield
    torch.set_num_threads(before)


# --- models ------------------------------------------------------------------------------------


def test_digits_mlp_shapes_and_layer_names():
    model = DigitsMLP(MLPConfig(n_hidden=32))
    assert model(torch.randn(5, 64)).shape == (5, 10)
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == {"fc1", "fc2", "head"}


def test_gpt_shapes_and_separately_named_projections():
    torch.manual_seed(0)
    model = CharGPT(TINY_GPT)
    idx = torch.randint(VOCAB_SIZE, (3, 16))
    assert model(idx).shape == (3, 16, VOCAB_SIZE)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for layer in range(2):
        for proj in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj"):
            assert f"blocks.{layer}.{proj}" in linear
        assert f"blocks.{layer}.mlp.fc1" in linear and f"blocks.{layer}.mlp.fc2" in linear
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


def test_gpt_is_causal():
    """Changing a future character must not change the logits at earlier positions."""
    torch.manual_seed(0)
    model = CharGPT(TINY_GPT).eval()
    idx = torch.randint(VOCAB_SIZE, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % VOCAB_SIZE
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_gpt_rejects_bad_sizes():
    with pytest.raises(ValueError, match="block_size"):
        CharGPT(TINY_GPT)(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        CharGPT(GPTConfig(d_model=30, n_head=4))


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


@pytest.mark.parametrize(
    "targets, per_block", [(["q_proj", "v_proj"], 2), (["fc1", "fc2"], 2), (ALL_LINEAR, 6)]
)
def test_lora_targets_attention_mlp_or_all(targets, per_block):
    torch.manual_seed(0)
    model = CharGPT(TINY_GPT).eval()
    idx = torch.randint(VOCAB_SIZE, (2, 16))
    before = model(idx)
    add_lora(model, targets, r=2, alpha=4)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == per_block * TINY_GPT.n_layer
    torch.testing.assert_close(model(idx), before)  # B = 0: same function at the start


def test_generate_appends_characters():
    torch.manual_seed(0)
    model = CharGPT(TINY_GPT).eval()
    out = model.generate(encode("def ")[None], 20, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 24) and decode(out[0, :4]) == "def "


# --- data --------------------------------------------------------------------------------------


def test_vocab_and_encode_decode_round_trip():
    assert VOCAB_SIZE == len(VOCAB) == 97 and len(set(VOCAB)) == VOCAB_SIZE
    text = "def f(x):\n    return {'a': x ** 2}  # ok ~"
    assert decode(encode(text)) == text
    assert decode(encode("it’s “quoted” — ok")) == 'it\'s "quoted" - ok'
    assert encode("é").tolist() == [0] and decode([0]) == "�"


def test_digits_splits_are_fixed_disjoint_and_rotated():
    up, rot = digits_dataset("upright"), digits_dataset("rotated")
    assert (len(up["train"]), len(up["val"])) == (1397, 400)
    X, y = load_digits("upright", "val")
    Xr, yr = load_digits("rotated", "val")
    assert X.shape == (400, 64) and X.dtype == torch.float32 and 0 <= X.min() and X.max() <= 1
    assert torch.equal(y, yr)  # same images, same labels
    first = X[0].reshape(8, 8).numpy()
    np.testing.assert_array_equal(Xr[0].reshape(8, 8).numpy(), np.rot90(first, k=-1))
    Xt, _ = load_digits("upright", "train")
    train_rows = {tuple(r) for r in Xt.tolist()}
    assert sum(tuple(r) in train_rows for r in X.tolist()) < 10  # only sklearn's duplicate images
    Xs, ys = load_digits("rotated", "train", n=50)
    assert Xs.shape == (50, 64) and len(ys) == 50
    assert len(rot["train"]) == 1397


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        load_digits("flipped")
    with pytest.raises(ValueError, match="split"):
        load_digits("upright", "test")
    with pytest.raises(ValueError, match="n=0"):
        load_digits("upright", "train", n=0)


DOMAINS, SPLITS = ("prose", "code"), ("train", "val")
CODE_TRAIN_MODULES = [
    "textwrap", "string", "random", "fractions", "heapq", "functools", "json/encoder",
    "json/decoder", "dataclasses", "statistics", "csv", "pprint", "shlex", "queue",
    "contextlib", "copy", "calendar", "glob", "fnmatch", "graphlib",
]  # fmt: skip
CODE_VAL_MODULES = ["bisect", "colorsys", "numbers", "operator", "abc", "keyword", "tokenize"]


def test_text_domains_are_nonempty_deterministic_and_split_by_document():
    names = {(d, s): [doc["name"] for doc in read_corpus(d, s)] for d in DOMAINS for s in SPLITS}
    assert set(names["prose", "train"]).isdisjoint(names["prose", "val"])
    assert names["code", "train"] == CODE_TRAIN_MODULES  # the list data/README.md documents
    assert names["code", "val"] == CODE_VAL_MODULES
    prose_names = sorted(names["prose", "train"] + names["prose", "val"])
    assert names["prose", "val"] == prose_names[::10]  # every 10th topic in sorted order
    assert all(len(doc["text"]) <= 16_000 for doc in read_corpus("code", "train"))
    for domain in ("prose", "code"):
        tr, va = load_text(domain, "train"), load_text(domain, "val")
        assert len(tr) > 100_000 and len(va) > 10_000
        assert (tr == 0).float().mean() < 0.01  # almost no unknown characters
    assert "def " in decode(load_text("code", "train")[:20_000])
    with pytest.raises(ValueError, match="domain"):
        load_text("poetry")
    with pytest.raises(ValueError, match="split"):
        read_corpus("prose", "test")


def test_lm_batches_are_shifted_windows():
    ids = torch.arange(1000)
    x, y = sample_lm_batch(ids, 4, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)
    a = fixed_lm_batches(ids, 8, n_batches=3, batch_size=2)
    b = fixed_lm_batches(ids, 8, n_batches=3, batch_size=2)
    assert len(a) == 3 and all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))


def test_unigram_cross_entropy_of_uniform_text_is_log_vocab():
    ids = torch.arange(VOCAB_SIZE).repeat(10)
    assert unigram_cross_entropy(ids, ids) == pytest.approx(np.log(VOCAB_SIZE))
    skewed = torch.tensor([5] * 900 + [6] * 100)
    assert unigram_cross_entropy(skewed, skewed) < 0.5


# --- training ----------------------------------------------------------------------------------


def _toy_problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 64, generator=g)
    y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()  # 4 classes from two pixels
    return X, y


def test_train_classifier_learns_and_is_seeded():
    X, y = _toy_problem()
    histories, models = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = DigitsMLP(MLPConfig(n_hidden=32))
        h = train_classifier(model, X, y, 150, 1e-2, val=(X, y), eval_every=50, progress=False)
        histories.append(h)
        models.append(model)
    h = histories[0]
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    assert h["eval_step"] == [50, 100, 150] and len(h["val_acc"]) == 3
    assert accuracy(models[0], X, y) > 0.9
    assert histories[0]["loss"] == histories[1]["loss"]  # same seed, same numbers


def test_train_updates_only_trainable_parameters():
    X, y = _toy_problem()
    torch.manual_seed(0)
    model = DigitsMLP(MLPConfig(n_hidden=32))
    W0 = model.fc1.weight.detach().clone()
    head = model.head.weight.detach().clone()
    add_lora(model, ["fc1", "fc2"], r=2, alpha=4)
    train_classifier(model, X, y, 30, 1e-2, progress=False)
    assert torch.equal(model.fc1.base.weight, W0) and torch.equal(model.head.weight, head)
    assert model.fc1.lora_B.abs().sum() > 0


def test_train_rejects_bad_input():
    model = DigitsMLP()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        train(model, classification_loss, lambda g: None, 10, 1e-3, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train(DigitsMLP(), classification_loss, lambda g: None, 0, 1e-3, progress=False)
    with pytest.raises(ValueError, match="schedule"):
        train(DigitsMLP(), classification_loss, lambda g: None, 1, 1e-3, schedule="step")
    with pytest.raises(ValueError, match="rows"):
        train_classifier(DigitsMLP(), torch.zeros(3, 64), torch.zeros(2).long(), 1, 1e-3)


def test_penalty_and_cosine_schedule_are_applied():
    X, y = _toy_problem()
    torch.manual_seed(0)
    model = DigitsMLP(MLPConfig(n_hidden=32))
    start = {k: v.detach().clone() for k, v in model.named_parameters()}

    pull = l2_toward(model, 100.0)  # weight decay toward the starting point
    assert pull(model).item() == 0.0
    train_classifier(model, X, y, 50, 1e-2, penalty=pull, schedule="cosine", progress=False)
    moved = sum((p - start[k]).abs().max() for k, p in model.named_parameters())
    torch.manual_seed(0)
    free = DigitsMLP(MLPConfig(n_hidden=32))
    train_classifier(free, X, y, 50, 1e-2, schedule="cosine", progress=False)
    moved_free = sum((p - start[k]).abs().max() for k, p in free.named_parameters())
    assert moved < 0.5 * moved_free


def test_train_lm_and_evaluate():
    torch.manual_seed(0)
    model = CharGPT(TINY_GPT)
    ids = encode("abcabcabc " * 300)
    h = train_lm(model, ids, 60, 1e-2, batch_size=8, val={"toy": ids}, progress=False)
    assert h["toy_loss"][-1] < 1.0 < np.log(VOCAB_SIZE)
    model.train()
    loss = evaluate(model, lm_loss, fixed_lm_batches(ids, 16, 2, 4))
    assert model.training  # evaluate restores the mode it found
    assert loss == pytest.approx(lm_loss_on(model, ids, 2, 4))
