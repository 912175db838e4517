"""DFANet network: shapes at any size, gradients, determinism, pinned counts."""
import pytest
import torch

from dfanet_model.info import count
from dfanet_model.network import VARIANTS, build_dfanet


@pytest.mark.parametrize("variant", ["A", "B"])
@pytest.mark.parametrize("size", [(360, 480), (128, 256), (97, 131), (33, 65), (1, 1)])
def test_logits_have_the_input_size(variant, size):
    torch.manual_seed(0)
    model = build_dfanet(variant, 11).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 11, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(720, 960), (1080, 1920)])
def test_large_sizes_that_public_ports_reject(size):
    model = build_dfanet("B", 3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize("variant", ["A", "B"])
def test_gradients_reach_every_parameter(variant):
    torch.manual_seed(0)
    model = build_dfanet(variant, 5).train()
    x = torch.randn(2, 3, 64, 96)
    target = torch.randint(0, 5, (2, 64, 96))
    # Residual branches start at zero (their last norm's weight), so the branch convs get
    # gradient from the second step on: take one step first.
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        opt.step()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def test_training_from_scratch_starts_stable():
    torch.manual_seed(0)
    model = build_dfanet("A", 11).train()
    x = torch.randn(4, 3, 96, 128)
    target = torch.randint(0, 11, (4, 96, 128))
    torch.nn.functional.cross_entropy(model(x), target).backward()
    grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert grad_norm < 100, f"gradient norm {grad_norm:.1f} at initialisation"


def test_eval_mode_is_deterministic():
    torch.manual_seed(0)
    model = build_dfanet("A", 11).eval()
    x = torch.randn(1, 3, 90, 120)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_unknown_variant_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown DFANet variant 'C'; valid: A, B"):
        build_dfanet("C", 11)
    with pytest.raises(ValueError, match="num_classes"):
        build_dfanet("A", 0)


def test_variants_are_table_rows():
    assert VARIANTS["A"].stage_channels == ((12, 12, 48), (24, 24, 96), (48, 48, 192))
    assert VARIANTS["B"].stage_channels == ((8, 8, 32), (16, 16, 64), (32, 32, 128))
    assert VARIANTS["A"].stage_blocks == VARIANTS["B"].stage_blocks == (4, 6, 4)
    model = build_dfanet("A", 11)
    assert [len(b.enc2) for b in model.backbones] == [4, 4, 4]
    assert [len(b.enc3) for b in model.backbones] == [6, 6, 6]
    assert [len(b.enc4) for b in model.backbones] == [4, 4, 4]


# Pinned so an accidental architecture change fails; `dfanet info` explains the paper gap.
@pytest.mark.parametrize("variant,size,params,macs", [
    ("A", (1024, 1024), 1_830_475, 2_884_383_744),
    ("A", (512, 1024), 1_830_475, 1_442_767_872),
    ("B", (1024, 1024), 1_099_499, 1_518_434_304),
])
def test_counts_are_pinned(variant, size, params, macs):
    c = count(variant, size, 19)
    assert (c.params, c.macs) == (params, macs)
    assert sum(c.params_by_part.values()) == c.params
    assert sum(c.macs_by_part.values()) == c.macs
