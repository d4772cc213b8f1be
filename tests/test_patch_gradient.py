"""The pixel gradient through a patchify convolution as one matmul (`ImageTextModel.patch_gradients_by_matmul`)."""

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from hf_unlearnable.images import prepare_image
from hf_unlearnable.imagetext import _patchify_gradient_hook
from hf_unlearnable.mem.pgd import PGD
from hf_unlearnable.siglip import SiglipTowers
from hf_unlearnable.surrogate import Surrogate, frozen
from hf_unlearnable.testing import synthetic_captions, tiny_clip, tiny_siglip


def graph_nodes(tensor: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``tensor``."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


def pixel_gradient(towers, pixels: torch.Tensor, context) -> tuple[torch.Tensor, torch.Tensor, set[str]]:
    """Features, d(sum of features * a fixed direction)/d pixels, and the graph's node names."""
    pixels = pixels.clone().requires_grad_(True)
    with frozen(towers), context:
        features = towers.image_features(pixels)
        direction = torch.linspace(-1, 1, features.shape[-1])
        (gradient,) = torch.autograd.grad((features * direction).sum(), pixels)
    return features.detach(), gradient, graph_nodes(features)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_matmul_patch_gradient_equals_the_convolutions(family):
    if family == "clip":
        towers = Surrogate(tiny_clip(32, seed=3)[0])
    else:
        towers = SiglipTowers(tiny_siglip(32, seed=3)[0])
    pixels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features, gradient, nodes = pixel_gradient(towers, pixels, contextlib.nullcontext())
    fast_features, fast_gradient, fast_nodes = pixel_gradient(towers, pixels, towers.patch_gradients_by_matmul())
    assert "ConvolutionBackward0" in nodes and "_PatchifyInputGradientBackward" not in nodes
    assert "_PatchifyInputGradientBackward" in fast_nodes and "ConvolutionBackward0" not in fast_nodes
    assert torch.equal(fast_features, features)  # the forward pass is the convolution's own
    scale = gradient.abs().max()
    assert scale > 0 and torch.allclose(fast_gradient, gradient, rtol=0, atol=1e-5 * float(scale))
    # the hook is gone after the block
    assert "ConvolutionBackward0" in pixel_gradient(towers, pixels, contextlib.nullcontext())[2]


def test_matmul_patch_gradient_stays_out_of_training():
    """With trainable weights the convolution's own backward runs: the weights need their gradient."""
    towers = Surrogate(tiny_clip(32, seed=3)[0])
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with towers.patch_gradients_by_matmul():
        features = towers.image_features(pixels)
        assert "ConvolutionBackward0" in graph_nodes(features)
        features.sum().backward()
    assert towers.model.vision_model.embeddings.patch_embedding.weight.grad is not None


def test_patch_gradient_hook_leaves_a_convolution_that_does_not_tile_its_input():
    """A 36-px input to an 8-px patchify convolution drops 4 px a side: the hook stands aside."""
    conv = nn.Conv2d(3, 16, 8, 8, bias=False).requires_grad_(False)
    pixels = torch.rand(2, 3, 36, 36, requires_grad=True)
    assert _patchify_gradient_hook(conv, (pixels,), conv(pixels)) is None
    tiled = torch.rand(2, 3, 32, 32, requires_grad=True)
    output = conv(tiled)
    replaced = _patchify_gradient_hook(conv, (tiled,), output)
    assert replaced is not None and torch.equal(replaced, output)
    (gradient,) = torch.autograd.grad(replaced.sum(), tiled)
    (reference,) = torch.autograd.grad(conv(tiled).sum(), tiled)
    assert torch.allclose(gradient, reference, atol=1e-6)


def test_pgd_noise_is_the_same_with_the_matmul_patch_gradient(monkeypatch):
    """At the benchmarks' scale the two gradients give the same sign steps, so PGD's noise is the
    convolution's, level for level (a wrongly placed patch gradient would move other pixels)."""
    model, _ = tiny_clip(32, seed=1)
    surrogate = Surrogate(model).eval()
    rows = synthetic_captions(8, seed=2)
    images = torch.from_numpy(np.stack([prepare_image(row["image"], 32) for row in rows]))
    text = torch.nn.functional.normalize(torch.randn(8, model.config.projection_dim), dim=-1)
    noise = torch.zeros_like(images, dtype=torch.int8)
    fast = PGD(surrogate, steps=4)(images, noise, text)
    monkeypatch.setattr(Surrogate, "patch_gradients_by_matmul", lambda self: contextlib.nullcontext())
    assert torch.equal(fast, PGD(surrogate, steps=4)(images, noise, text))
    assert int(fast.abs().max()) == 4
