"""One family of image operations, registered once by name and shared by EOT inside PGD
(`hf_unlearnable.mem.eot`) and by the image defenses a victim's trainer applies
(`hf_unlearnable.defenses`).

    from hf_unlearnable.imageops import image_op
    jpeg_75 = image_op("jpeg", quality=75, quantize=True)     # the "jpeg-75" defense
    eot_jpeg = image_op("jpeg", quality=(30.0, 95.0))         # the "jpeg" EOT transformation
    out = jpeg_75(pixels, generator)                           # float (B, 3, H, W) in [0, 1]

A parameter given as a ``(low, high)`` tuple is drawn per image from the generator, so one operation
serves both: EOT binds ranges and keeps the gradient, a defense binds fixed values and usually
``quantize=True`` (the output as 8-bit levels, as a file written back would be). The operations:

=====================  ============================================================  ===========================
``jpeg``               JPEG round trip at ``quality`` (75)                          kornia.enhance
``grayscale``          toward the luma by ``amount`` (1: all the way)                kornia.color
``blur``               Gaussian blur, ``sigma`` (1 px), ``kernel_size`` (+-2 sigma)   kornia.filters
``crop-flip``          sub-pixel random resized crop (``scale`` 0.5-1) + flip         kornia.geometry
``resized-crop-flip``  kornia's RandomResizedCrop (``scale`` 0.9-1, bicubic) + flip  kornia.augmentation
``bit-depth``          ``bits`` (2) bits per channel                                  by hand
``gaussian-noise``     additive Gaussian noise, ``std`` (8/255)                       kornia.augmentation
``cutout``             zero a square of ``area`` (1/4)                                kornia.augmentation
``mixup``              blend with another image, its weight <= 0.5                    kornia.augmentation
``cutmix``             paste a box of another image                                   kornia.augmentation
``ueraser-lite``       UEraser-Lite: plasma, channel shuffle, TrivialAugment, JPEG    kornia.augmentation
=====================  ============================================================  ===========================

A new operation is a function ``op(pixels, generator, *, parameters with defaults) -> pixels``
decorated with ``@register(name, summary=..., source=..., differentiable=...)``; EOT and the
defenses then name it with its parameters (`hf_unlearnable.mem.eot.EOT_TRANSFORMS`,
``hf_unlearnable.defenses``' registry).
"""

from __future__ import annotations

from .base import (
    OPERATIONS,
    ImageOp,
    Operation,
    available_image_ops,
    draw_seed,
    image_op,
    quantize_8bit,
    register,
    seeded_global_rng,
)
from .operations import (
    blur_kernel_size,
    cutmix_with_partners,
    jpeg_compress,
    mixup_with_partners,
)

__all__ = [
    "OPERATIONS",
    "ImageOp",
    "Operation",
    "available_image_ops",
    "blur_kernel_size",
    "cutmix_with_partners",
    "draw_seed",
    "image_op",
    "jpeg_compress",
    "mixup_with_partners",
    "quantize_8bit",
    "register",
    "seeded_global_rng",
]
