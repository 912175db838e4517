"""Inference copies (dfanet_model.fast) equal the eager model within the stated tolerance."""
from __future__ import annotations

import copy
import functools
import importlib.util
import os

import pytest
import torch
from torch import nn

from dfanet_model.fast import (
    BACKENDS,
    ImageToLabels,
    Normalise,
    ResizedTopClass,
    TopClass,
    capture_cuda_graph,
    fold_batch_norms,
    fold_conv_bn,
    inference_copy,
    prepare_for_inference,
    prepare_labels,
    prepare_top_class,
    upsample_by_phases,
)
from dfanet_model.network import ConvNormAct, ProjectionShortcut, build_dfanet, resize_to

# The tolerance every optimised fp32 path is held to, against the eager fp32 model: max
# |logit difference| below 1e-3 of the logit scale (1 + max |logit|), and the same class on
# more than 99.9% of pixels.  Relative, because for this deep residual network fp32 itself is
# that far off: with the weights below the eager fp32 model differs from an fp64 evaluation
# by ~2e-3 at logits of ~12 (test_folding_adds_no_error_beyond_fp32_rounding).
REL_TOLERANCE = 1e-3
MIN_ARGMAX_AGREEMENT = 0.999

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
# The fp32 exported backends installed here.
FP32_EXPORTED = [b for b, found in (("onnxruntime", HAS_ORT), ("openvino", HAS_OV)) if found]


def _trained_like(variant: str) -> nn.Module:
    """A model whose batch norms hold non-trivial affine weights and statistics measured on
    data, as after training (so that activations and logits have a trained model's scale)."""
    return copy.deepcopy(_calibrated(variant))


@functools.lru_cache(maxsize=None)
def _calibrated(variant: str, num_classes: int = 11) -> nn.Module:
    torch.manual_seed(0)
    model = build_dfanet(variant, num_classes)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.momentum = None  # running statistics: the plain average over the batches below
    model.train()
    with torch.no_grad():
        # Large enough that the deepest stage (1/64 of the input) still has 4x4 pixels.
        model(torch.randn(2, 3, 256, 256, generator=g))
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["A", "B"])
def model(request: pytest.FixtureRequest) -> nn.Module:
    return _trained_like(request.param)


def _assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    diff = (out.float() - ref).abs().max().item()
    agreement = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    bound = REL_TOLERANCE * (1 + ref.abs().max().item())
    assert diff < bound, f"max abs logit difference {diff:.2e} (bound {bound:.2e})"
    assert agreement > MIN_ARGMAX_AGREEMENT, f"argmax agrees on only {agreement:.4%} of pixels"


def test_fold_is_exact_per_layer() -> None:
    model = _trained_like("A")
    pairs = [(m.conv, m.bn) for m in model.modules() if isinstance(m, ConvNormAct)]
    assert len(pairs) > 100  # every ConvNormAct of the network
    torch.manual_seed(2)
    with torch.no_grad():
        for conv, bn in pairs:
            x = torch.randn(2, conv.in_channels, 7, 9)
            ref = bn(conv(x))
            out = fold_conv_bn(conv, bn)(x)
            assert (out - ref).abs().max().item() < 1e-5 * (1 + ref.abs().max().item())


@pytest.mark.slow
def test_folding_adds_no_error_beyond_fp32_rounding() -> None:
    model = _trained_like("B")
    x = torch.randn(1, 3, 53, 71, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        truth = copy.deepcopy(model).double()(x.double())
        eager_error = (model(x).double() - truth).abs().max().item()
        folded_error = (fold_batch_norms(model)(x).double() - truth).abs().max().item()
        folded64_error = (fold_batch_norms(model.double())(x.double()) - truth).abs().max().item()
    assert folded_error <= 2 * eager_error + 1e-6, (folded_error, eager_error)
    assert folded64_error < 1e-9  # in fp64 the fold is exact up to rounding


@pytest.mark.slow
def test_fold_removes_every_batch_norm_and_leaves_the_original(model: nn.Module) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    folded = fold_batch_norms(model)
    prepare_for_inference(model, backend="eager")
    assert model.training, "preparing must not switch the original model to eval mode"
    model.eval()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "original weights changed"
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 100
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training
    assert not any(p.requires_grad for p in folded.parameters())


def test_fold_reaches_every_conv_norm_act_and_keeps_the_output(model: nn.Module) -> None:
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    blocks = [name for name, m in model.named_modules() if isinstance(m, ConvNormAct)]
    assert norms == len(blocks) > 100  # every batch norm sits in a ConvNormAct
    folded = fold_batch_norms(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    for name in blocks:
        part = folded.get_submodule(name)
        assert isinstance(part.bn, nn.Identity) and part.conv.bias is not None, name
    x = torch.randn(2, 3, 61, 83, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _assert_close(folded(x), model.eval()(x))


@pytest.mark.parametrize(("size", "channels_last"), [
    ((64, 64), True), ((97, 131), True), ((45, 61), True), ((45, 61), False)])
def test_eager_backend_matches(model: nn.Module, size: tuple[int, int],
                               channels_last: bool) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 3, *size)
    prepared = prepare_for_inference(model, backend="eager", channels_last=channels_last)
    with torch.inference_mode():
        _assert_close(prepared(x), model(x))


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
@pytest.mark.slow
def test_onnxruntime_backend_matches_and_rebuilds_per_shape(model: nn.Module) -> None:
    prepared = prepare_for_inference(model, backend="onnxruntime")
    torch.manual_seed(4)
    # An odd size, then another: each shape gets its own session, and the first is reused.
    for size in [(45, 61), (64, 96), (45, 61)]:
        x = torch.randn(1, 3, *size)
        with torch.inference_mode():
            _assert_close(prepared(x), model(x))
    assert len(prepared.inner._cache) == 2


@pytest.mark.slow
def test_auto_backend_matches_on_cpu() -> None:
    model = _trained_like("B")
    prepared = prepare_for_inference(model)
    x = torch.randn(1, 3, 33, 47)
    with torch.inference_mode():
        _assert_close(prepared(x), model(x))
    # auto measures at the first input and names what it chose.
    assert prepared.backend in BACKENDS and prepared.backend != "auto"


def test_bad_arguments_are_named() -> None:
    model = build_dfanet("B", 3)
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        prepare_for_inference(model, backend="tensorrt")
    with pytest.raises(ValueError, match="half=True needs a CUDA device"):
        prepare_for_inference(model, half=True)
    prepared = prepare_for_inference(model, backend="eager")
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got \(3, 32, 32\)"):
        prepared(torch.zeros(3, 32, 32))


@pytest.mark.skipif(not os.environ.get("DFANET_SLOW_TESTS"),
                    reason="torch.compile takes 1-2 minutes on 2 shared cores; "
                           "set DFANET_SLOW_TESTS=1 to run it")
def test_compile_backend_matches() -> None:
    model = _trained_like("B")
    prepared = prepare_for_inference(model, backend="compile")
    x = torch.randn(1, 3, 45, 61)
    with torch.inference_mode():
        _assert_close(prepared(x), model(x))


@pytest.mark.slow
def test_image_to_labels_matches_normalise_then_argmax() -> None:
    model = _trained_like("B")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image = torch.randint(0, 256, (2, 37, 53, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(5))
    x = (image.permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).reshape(1, 3, 1, 1)) \
        / torch.tensor(std).reshape(1, 3, 1, 1)
    pipeline = ImageToLabels(prepare_for_inference(model), mean, std)
    with torch.inference_mode():
        ref = model(x.float()).argmax(1)
        labels = pipeline(image)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 37, 53)
    assert (labels.long() == ref).float().mean().item() > MIN_ARGMAX_AGREEMENT
    with pytest.raises(ValueError, match=r"uint8 RGB images of shape \(N, H, W, 3\), got "
                                         r"torch.float32 \(1, 3, 8, 8\)"):
        pipeline(torch.zeros(1, 3, 8, 8))


def test_normalise_is_the_card_formula_in_place_or_not() -> None:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(8)) * 255
    ref = (x.double() / 255 - torch.tensor(mean).reshape(1, 3, 1, 1)) \
        / torch.tensor(std).reshape(1, 3, 1, 1)
    norm = Normalise(mean, std)
    out = norm(x)
    assert out.dtype == torch.float32 and (out - ref).abs().max().item() < 1e-5
    buffer = torch.empty_like(x)
    assert norm(x, out=buffer) is buffer and torch.equal(buffer, out)
    assert norm(x, out=x) is x and torch.equal(x, out)  # in place: no new tensor
    assert not dict(norm.state_dict())  # constants follow the card, never a checkpoint


def test_cuda_graph_refuses_a_cpu_tensor() -> None:
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA tensor, got one on cpu"):
        capture_cuda_graph(nn.Identity(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, got cpu"):
        capture_cuda_graph(lambda: None, device="cpu")
    with pytest.raises(ValueError, match="needs example inputs or a device"):
        capture_cuda_graph(lambda: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_inputs_outputs_and_shared_pool() -> None:
    """One capture helper for both uses: a function of an input returning several outputs
    (labels and confidence, as the benchmarks' pipelines), and one without inputs writing into
    buffers of its own (as the engine's plans), sharing a memory pool."""
    model = prepare_for_inference(_trained_like("B"), "cuda", backend="eager")

    def labels_and_confidence(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = model(x).softmax(1).max(1)
        return top.indices.to(torch.uint8), top.values

    torch.manual_seed(9)
    x = torch.randn(1, 3, 64, 96, device="cuda")
    graph = capture_cuda_graph(labels_and_confidence, x)
    for _ in range(2):
        y = torch.randn(1, 3, 64, 96, device="cuda")
        labels, confidence = graph(y)
        with torch.no_grad():
            ref_labels, ref_confidence = labels_and_confidence(y)
        assert (labels == ref_labels).float().mean().item() > MIN_ARGMAX_AGREEMENT
        assert (confidence - ref_confidence).abs().max().item() < 1e-3
    with pytest.raises(ValueError, match="captured for"):
        graph(torch.zeros(1, 3, 32, 32, device="cuda"))
    with pytest.raises(ValueError, match="takes 1 input"):
        graph()

    source = torch.zeros(1, 3, 64, 96, device="cuda")
    buffer = torch.empty(1, 11, 64, 96, device="cuda")
    own = capture_cuda_graph(lambda: buffer.copy_(model(source)), device="cuda",
                             pool=graph.pool)
    source.copy_(y)
    assert own() is buffer and own.inputs == ()
    torch.cuda.synchronize()
    with torch.no_grad():
        _assert_close(buffer, model(y).float())


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "openvino"])
@pytest.mark.slow
def test_prepare_labels_matches_eager_labels(backend: str) -> None:
    if backend != "eager" and backend not in FP32_EXPORTED:
        pytest.skip(f"{backend} is not installed")
    model = _trained_like("A")
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    image = torch.randint(0, 256, (1, 45, 61, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(6))
    labels = prepare_labels(model, mean, std, backend=backend)
    assert labels.backend == backend
    with torch.inference_mode():
        ref = model(ImageToLabels(nn.Identity(), mean, std).normalise(image)).argmax(1)
        out = labels(image)
    assert out.dtype == torch.uint8 and out.shape == (1, 45, 61)
    assert (out.long() == ref).float().mean().item() > MIN_ARGMAX_AGREEMENT


def test_inference_copy_strides_the_shortcut_with_the_same_output() -> None:
    model = _trained_like("A")
    copy_ = inference_copy(model)
    shortcuts = [m for m in copy_.modules() if isinstance(m, ProjectionShortcut)]
    assert shortcuts and all(m.stride == 1 for m in shortcuts)
    assert {m.conv.stride for m in shortcuts} == {(2, 2)}  # every projection strides
    # The original keeps its slices (training needs them).
    assert {m.stride for m in model.modules() if isinstance(m, ProjectionShortcut)} == {2}
    x = torch.randn(1, 3, 61, 83, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        strided, sliced = copy_(x), fold_batch_norms(model)(x)
    # The same products and sums on the same pixels: only the kernels' summation order may
    # differ, far inside the tolerance.
    assert (strided - sliced).abs().max().item() < 1e-5 * (1 + sliced.abs().max().item())
    assert torch.equal(strided.argmax(1), sliced.argmax(1))


def _top_class_reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.argmax(1), logits.double().softmax(1).amax(1)


def test_top_class_on_the_cpu_and_traced_is_argmax_and_softmax() -> None:
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 5, 17, 23, generator=g) * 4
    logits[0, 3, 0, 0] = logits[0, 1, 0, 0] = 99.0  # a tie: the first maximum wins
    head = TopClass(5).eval()
    traced = torch.jit.trace(head, (logits,))  # the graph form the exported backends run
    for labels, probability in (head(logits), traced(logits)):
        ref_labels, ref_probability = _top_class_reference(logits)
        assert labels.dtype == torch.uint8 and probability.dtype == torch.float32
        assert torch.equal(labels.long(), ref_labels)
        assert int(labels[0, 0, 0]) == 1
        assert (probability.double() - ref_probability).abs().max() < 1e-6
    with pytest.raises(ValueError, match="256 classes do not fit a uint8 label map"):
        TopClass(256)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "onnxruntime-logits"])
def test_exported_top_class_matches_eager_at_several_sizes(backend: str) -> None:
    """One export serves every size (height and width are free in the graph)."""
    if backend.split("-")[0] not in FP32_EXPORTED:
        pytest.skip(f"{backend} is not installed")
    model = _trained_like("A")
    prepared = prepare_top_class(model, backend=backend)
    assert prepared.backend == backend
    for i, size in enumerate([(45, 61), (64, 96), (45, 61)]):
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(10 + i))
        with torch.inference_mode():
            labels, probability = prepared(x)
            ref_labels, ref_probability = _top_class_reference(model(x))
        assert labels.shape == probability.shape == (1, *size)
        assert (labels.long() == ref_labels).float().mean().item() > MIN_ARGMAX_AGREEMENT
        assert (probability.double() - ref_probability).abs().max() < 1e-3


def test_upsampling_by_phases_is_the_networks_resize() -> None:
    """The exported head's upsampling by whole factors equals the bilinear resize it stands
    for, edges included, traced with free height and width."""
    x = torch.randn(2, 5, 7, 9, generator=torch.Generator().manual_seed(13)) * 8
    for scale in [(4, 4), (2, 3), (1, 4), (3, 1)]:
        size = (7 * scale[0], 9 * scale[1])
        ref = resize_to(x, size)
        assert (upsample_by_phases(x, scale) - ref).abs().max() < 1e-5 * (1 + ref.abs().max())
    head = ResizedTopClass(5, scale=(4, 4)).eval()
    traced = torch.jit.trace(head, (x,))
    y = torch.randn(1, 5, 6, 11, generator=torch.Generator().manual_seed(14))
    labels, probability = traced(y)
    ref_labels, ref_probability = _top_class_reference(resize_to(y, (24, 44)))
    assert torch.equal(labels.long(), ref_labels)
    assert (probability.double() - ref_probability).abs().max() < 1e-6
    with pytest.raises(ValueError, match="a size or a scale, one of them"):
        ResizedTopClass(5)
    with pytest.raises(ValueError, match="whole numbers >= 1"):
        upsample_by_phases(x, (0, 2))


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "openvino"])
def test_top_class_with_the_normalisation_takes_images_as_they_are(backend: str) -> None:
    """Given the card's normalisation, the prepared model takes RGB in 0..255, as the engine
    holds it (a channels-last view of an (N, H, W, 3) buffer), and normalises first: in the
    exported graph for the exported backends.  OpenVINO's graph stops at the coarse logits,
    so a size that is not a multiple of 4 checks its resize too."""
    if backend != "eager" and backend not in FP32_EXPORTED:
        pytest.skip(f"{backend} is not installed")
    model = _trained_like("A")
    mean, std = (0.4, 0.45, 0.5), (0.22, 0.23, 0.24)
    norm = Normalise(mean, std)
    prepared = prepare_top_class(model, backend=backend, normalise=norm)
    assert prepared.normalises and prepared.backend == backend
    g = torch.Generator().manual_seed(12)
    for size in [(45, 61), (64, 96)]:
        rgb = torch.randint(0, 256, (1, *size, 3), generator=g).float()
        image = rgb.permute(0, 3, 1, 2)  # (1, 3, H, W) view, channels-last strides
        with torch.inference_mode():
            labels, probability = prepared(image)
            ref_labels, ref_probability = _top_class_reference(model(norm(image)))
        assert labels.shape == probability.shape == (1, *size)
        assert (labels.long() == ref_labels).float().mean().item() > MIN_ARGMAX_AGREEMENT
        assert (probability.double() - ref_probability).abs().max() < 1e-3
    assert not prepare_top_class(model, backend=backend).normalises


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed")
def test_openvino_top_class_of_a_model_without_coarse_logits() -> None:
    """A model whose logits are already full size (no ``coarse_logits``) gets a head that
    only takes the top class."""
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1)).eval()
    model.num_classes = 5  # type: ignore[assignment]  # what prepare_top_class reads
    prepared = prepare_top_class(model, backend="openvino")
    x = torch.randn(1, 3, 21, 34, generator=torch.Generator().manual_seed(15))
    with torch.inference_mode():
        labels, probability = prepared(x)
        ref_labels, ref_probability = _top_class_reference(model(x))
    assert torch.equal(labels.long(), ref_labels)
    assert (probability.double() - ref_probability).abs().max() < 1e-5


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed")
@pytest.mark.slow
def test_openvino_backend_matches_and_compiles_per_shape(model: nn.Module) -> None:
    prepared = prepare_for_inference(model, backend="openvino")
    for size in [(45, 61), (64, 96), (45, 61)]:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(size[0]))
        with torch.inference_mode():
            _assert_close(prepared(x), model(x))
    assert len(prepared.inner._cache) == 2


@pytest.mark.skipif(not FP32_EXPORTED, reason="neither onnxruntime nor openvino is installed")
@pytest.mark.slow
def test_auto_measures_the_fp32_candidates_and_keeps_the_fastest() -> None:
    """Weights not checked in bf16 never get it, whatever the CPU."""
    prepared = prepare_top_class(_trained_like("B"), backend="auto")
    assert prepared.backend == "auto"  # measured at the first input
    x = torch.randn(1, 3, 33, 47, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        labels, _ = prepared(x)
    timings = prepared.inner.timings_ms
    assert sorted(timings) == sorted(FP32_EXPORTED)
    assert prepared.backend == min(timings, key=timings.__getitem__)
    assert labels.shape == (1, 33, 47)
