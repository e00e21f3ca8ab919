"""Chapter 06's worked solutions give the numbers their docstrings state."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the instructor/ folder

from instructor.ch06 import (  # noqa: E402
    activation_bytes,
    crossover_seq_len,
    head_bytes,
    nf4_model_bytes,
    qlora_7b_fixed_bytes,
    rank_gap,
    small_update_merge,
)


def test_a_small_learning_rate_puts_the_merge_in_the_crossover(one_thread):
    small = small_update_merge(lr=1e-4)
    large = small_update_merge(lr=1e-2)
    for name in small:
        assert 0.1 < small[name]["rho"] < 0.35 and 0.25 < small[name]["rel_fro_delta"] < 0.6
        assert large[name]["rho"] > 0.5 and large[name]["rel_fro_delta"] < 0.2
        assert small[name]["rel_fro_delta"] > 2 * large[name]["rel_fro_delta"]


def test_rank_one_qlora_and_lora_tie_inside_the_seed_noise(one_thread):
    out = rank_gap(1)
    # measured: gap +0.8 points (seeds −0.75..+2.0), LoRA's seed noise 4.5 points
    assert out["verdict"] == "tie" and abs(out["gap"]) < 0.03
    assert max(out["noise_lora"], out["noise_qlora"]) > 0.01  # r = 1 is noisier than one point


def test_block_size_bytes_by_hand_equal_the_model():
    import copy

    from minilora import model_nbytes, quantize_model
    from minilora.lab.pretrain import load_pretrained

    base = load_pretrained("digits_mlp")
    for bs in (16, 64, 256):
        assert nf4_model_bytes(bs) == model_nbytes(
            quantize_model(copy.deepcopy(base), blocksize=bs)
        )
    assert [nf4_model_bytes(bs) for bs in (16, 64, 256)] == [49_704, 45_684, 44_682]


def test_an_fp32_head_costs_the_stated_bytes():
    out = head_bytes()
    nf4, fp32 = out["nf4 head + LoRA"], out["fp32 head, trained"]
    assert fp32["base bytes"] - nf4["base bytes"] == 8_912
    # trains the head's 2,570 numbers instead of its adapter's 8·(256 + 10) = 2,128
    assert fp32["trainable"] - nf4["trainable"] == 2_570 - 8 * (256 + 10) == 442


def test_activations_outgrow_qlora_7b_at_the_stated_lengths():
    fixed = qlora_7b_fixed_bytes()
    for attention, s in (("sdpa", 1_265), ("eager", 922)):
        assert crossover_seq_len(attention) == s

        def act(n, attention=attention):
            return sum(
                activation_bytes(
                    4096, 11008, 32, 32, 32000, 1, n, lora_r=64, attention=attention
                ).values()
            )

        assert act(s) > fixed >= act(s - 1)
    assert round(fixed / 2**30, 2) == 5.98
