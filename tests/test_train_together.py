"""``train_classifiers_together`` is ``train_classifier`` for many runs at once."""

import copy

import pytest
import torch

from minilora import add_lora
from minilora.lab.models import DigitsMLP
from minilora.lab.train import train_classifier, train_classifiers_together


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def _lora(base, seed):
    torch.manual_seed(seed)
    return add_lora(copy.deepcopy(base), ["fc1", "fc2", "head"], r=4, alpha=8)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_equals_one_run_at_a_time_up_to_rounding(one_thread, method):
    torch.manual_seed(0)
    base = DigitsMLP()
    X, y = _data()
    runs = [(1e-3, 0), (1e-2, 0), (1e-2, 1)]
    if method == "lora":
        make = lambda seed: _lora(base, seed)
    else:
        make = lambda seed: copy.deepcopy(base).requires_grad_(True)
    together = [make(seed) for _, seed in runs]
    train_classifiers_together(together, X, y, 20, [lr for lr, _ in runs], [s for _, s in runs])
    for (lr, seed), model in zip(runs, together, strict=True):
        alone = make(seed)
        train_classifier(alone, X, y, 20, lr, seed=seed, progress=False)
        start = dict(make(seed).named_parameters())
        trained = dict(model.named_parameters())
        for name, p in alone.named_parameters():
            moved = (p - start[name]).norm()
            if moved == 0:  # a frozen tensor: untouched by both
                assert torch.equal(trained[name], p)
                continue
            # 20 Adam steps move a tensor by up to 20·lr per entry; float32 rounding in the
            # gradient (another summation order) perturbs that by orders of magnitude less.
            gap = (trained[name] - p).norm()
            assert gap < 1e-3 * moved, (name, gap.item(), moved.item())
        assert not model.training


def test_runs_are_independent_and_use_their_own_rate(one_thread):
    torch.manual_seed(0)
    base = DigitsMLP()
    X, y = _data()
    pair = [_lora(base, 0), _lora(base, 0)]
    train_classifiers_together(pair, X, y, 10, [1e-3, 1e-2], [0, 0])
    single = [_lora(base, 0)]
    train_classifiers_together(single, X, y, 10, [1e-3], [0])
    a, b, s = (m.fc2.lora_B for m in (*pair, *single))
    assert torch.allclose(a, s, rtol=0, atol=1e-6)  # not affected by its batch-mate
    assert (b - a).abs().max() > 1e-3  # a 10× larger rate moved B further


def test_refuses_models_with_different_frozen_bases(one_thread):
    torch.manual_seed(0)
    X, y = _data()
    one, other = _lora(DigitsMLP(), 0), _lora(DigitsMLP(), 1)
    with pytest.raises(ValueError, match="share their frozen"):
        train_classifiers_together([one, other], X, y, 1, [1e-3, 1e-3], [0, 1])
    with pytest.raises(ValueError, match="one lr and one seed"):
        train_classifiers_together([one], X, y, 1, [1e-3, 1e-3], [0])
