"""CIFAR-style ResNet (He et al. 2016, section 4.2) for small grey-scale images.

Three stages of ``n`` basic blocks with 16, 32 and 64 channels; depth = 6n + 2
(n=3: ResNet-20). Shortcuts that change shape are a strided 1x1 convolution with
batch norm (option B), so every tensor a residual add joins is a plain conv output
that structural pruning can shrink together with the others of its stage.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CifarResNet depth must be 6n + 2 (20, 32, 44, 56 ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, 28, 28)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, 7, 7)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(num_classes: int = 10, in_channels: int = 1) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels)


class Normalized(nn.Module):
    """``model`` behind its input normalisation: takes images in [0, 1], as an image folder gives them.

    Saved whole, it is a model the ``depgraph`` commands can read image folders for, with no
    preprocessing option to get wrong.
    """

    def __init__(self, model: nn.Module, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)
