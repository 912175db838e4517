"""DFANet network: shapes at any size, gradients, determinism, pinned counts and layout."""
import hashlib
import math

import pytest
import torch

from dfanet_model.info import count
from dfanet_model.network import VARIANTS, build_dfanet, resize_like

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.mark.parametrize("variant", ["A", "B"])
@pytest.mark.parametrize("size", [(360, 480), (128, 256), (97, 131), (33, 65), (1, 1)])
def test_logits_have_the_input_size(variant, size):
    torch.manual_seed(0)
    model = build_dfanet(variant, 11).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 11, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(360, 480), (97, 131)])
def test_logits_are_the_coarse_logits_resized(size):
    """The exported backends stop at the coarse logits and resize them in a graph of their
    own: the two steps give the network's output."""
    torch.manual_seed(0)
    model = build_dfanet("A", 11).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        coarse = model.coarse_logits(x)
        assert coarse.shape[-2:] == tuple(math.ceil(math.ceil(n / 2) / 2) for n in size)
        assert torch.equal(resize_like(coarse, x), model(x))


@pytest.mark.parametrize("size", [(720, 960), (1080, 1920)])
@pytest.mark.slow
def test_large_sizes_that_public_ports_reject(size):
    model = build_dfanet("B", 3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize("variant", ["A", "B"])
@pytest.mark.slow
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


@pytest.mark.slow
def test_training_from_scratch_starts_stable():
    torch.manual_seed(0)
    model = build_dfanet("A", 11).train()
    x = torch.randn(4, 3, 96, 128)
    target = torch.randint(0, 11, (4, 96, 128))
    torch.nn.functional.cross_entropy(model(x), target).backward()
    grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert grad_norm < 100, f"gradient norm {grad_norm:.1f} at initialisation"


@pytest.mark.slow
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


def _shape_digest(tensors) -> str:
    shapes = ";".join("x".join(map(str, t.shape)) for t in tensors)
    return hashlib.sha256(shapes.encode()).hexdigest()[:16]


# The shape sequence of the parameters and of the whole state dict, in registration order, as
# the nn.Sequential layout (keys like conv1.0.weight) had it.  Optimizer states saved in
# training checkpoints refer to parameters by position, so renaming modules must not reorder.
@pytest.mark.parametrize("variant,params,state", [
    ("A", "3e404bb556af8eac", "24161384bc81f483"),
    ("B", "795664cca64d8e8b", "dda6140c1a2e8254"),
])
def test_parameter_order_is_pinned(variant, params, state):
    model = build_dfanet(variant, 11)
    assert len(list(model.parameters())) == 821
    assert _shape_digest(model.parameters()) == params
    assert _shape_digest(model.state_dict().values()) == state


def test_parts_are_named():
    model = build_dfanet("B", 11)
    names = [n for n, _ in model.named_parameters()]
    assert names[:6] == ["conv1.conv.weight", "conv1.bn.weight", "conv1.bn.bias",
                         "backbones.0.enc2.0.conv1.dw.conv.weight",
                         "backbones.0.enc2.0.conv1.dw.bn.weight",
                         "backbones.0.enc2.0.conv1.dw.bn.bias"]
    assert "backbones.0.enc2.0.shortcut.conv.weight" in names
    assert "decoder.low.0.conv.weight" in names and "decoder.fuse.bn.weight" in names
    assert "backbones.0.enc2.1.conv3.pw.bn.running_mean" in model.state_dict()
    # Each residual branch starts at zero: its last norm's scale is zero.
    block = model.backbones[1].enc3[2]
    assert not block.conv3.pw.bn.weight.any() and block.conv2.pw.bn.weight.all()


def test_backbone_features_are_named():
    model = build_dfanet("B", 11).eval()
    with torch.no_grad():
        feats = model.backbones[0](model.conv1(torch.randn(1, 3, 64, 64)))
    assert [f.shape[1] for f in feats] == [32, 64, 128, 128]
    assert feats.enc2.shape[-2:] == (16, 16) and feats.enc4.shape == feats.attention.shape


# Pinned so an accidental architecture change fails; `dfanet info` explains the paper gap.
@pytest.mark.parametrize("variant,size,params,macs", [
    ("A", (1024, 1024), 1_830_475, 2_884_383_744),
    ("A", (512, 1024), 1_830_475, 1_442_767_872),
    ("B", (1024, 1024), 1_099_499, 1_518_434_304),
])
@pytest.mark.slow
def test_counts_are_pinned(variant, size, params, macs):
    c = count(variant, size, 19)
    assert (c.params, c.macs) == (params, macs)
    assert sum(c.params_by_part.values()) == c.params
    assert sum(c.macs_by_part.values()) == c.macs


# A 1x1 stride-2 conv's weight gradient in channels-last with fewer than 16 input channels,
# at 8x8x120x160, corrupted the heap inside oneDNN on AVX-512 CPUs (torch 2.13/2.14).  The
# shortcut now subsamples and convolves at stride 1; this trains the block that crashed, at
# the sizes that crashed, in a child process so that a crash fails the test instead of the
# suite.
_CRASHED_BEFORE = """
import torch
from dfanet_model.network import XceptionBlock, build_dfanet
torch.set_num_threads(1)
torch.manual_seed(0)
block = XceptionBlock(8, (8, 8, 32), stride=2).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(block.parameters(), lr=0.01)
x = torch.randn(8, 8, 120, 160).contiguous(memory_format=torch.channels_last)
for _ in range(4):
    opt.zero_grad()
    block(x).square().mean().backward()
    opt.step()
model = build_dfanet("B", 11).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(8, 3, 240, 320).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 11, (8, 240, 320))
for _ in range(2):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
print("trained")
"""


@pytest.mark.slow
def test_channels_last_training_at_the_sizes_that_crashed_onednn():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _CRASHED_BEFORE], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "trained", out.stderr[-2000:]


@pytest.mark.parametrize("size", [(120, 160), (61, 83), (1, 1)])
def test_projection_shortcut_equals_a_strided_1x1_conv(size):
    from dfanet_model.network import ProjectionShortcut
    torch.manual_seed(0)
    shortcut = ProjectionShortcut(8, 32, stride=2).eval()
    conv = torch.nn.Conv2d(8, 32, 1, stride=2, bias=False)
    conv.weight.data.copy_(shortcut.conv.weight)
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        expected = shortcut.bn(conv(x))
        # Same products and sums; oneDNN may order the sums differently for another shape.
        torch.testing.assert_close(shortcut(x), expected, rtol=1e-6, atol=1e-6)
