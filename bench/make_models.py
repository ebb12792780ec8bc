#!/usr/bin/python3
"""Writes the benchmark networks as ONNX (exported from PyTorch, so every contender runs the same
weights and shapes).

small     12 x Conv3x3 (16 channels) + ReLU on 1x3x32x32, a 10-channel 1x1 head
large     8 x Conv5x5 (32 channels) + ReLU on 1x3x64x64, a 10-channel 1x1 head
residual  a ResNet-style stack (conv-relu-conv + skip, 6 blocks, 32 channels) on 1x3x64x64,
          whose skips cross any stage boundary placed inside a block

usage: make_models.py OUT_DIR
"""
import sys
import torch
import torch.nn as nn


def plain(n, ch, k, size):
    layers, c = [], 3
    for _ in range(n):
        layers += [nn.Conv2d(c, ch, k, padding=k // 2), nn.ReLU()]
        c = ch
    layers += [nn.Conv2d(ch, 10, 1)]
    return nn.Sequential(*layers), (1, 3, size, size)


class Block(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.c2(torch.relu(self.c1(x))))


def residual(blocks=6, ch=32, size=64):
    return nn.Sequential(nn.Conv2d(3, ch, 3, padding=1), nn.ReLU(),
                         *[Block(ch) for _ in range(blocks)], nn.Conv2d(ch, 10, 1)), (1, 3, size, size)


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    nets = {"small": plain(12, 16, 3, 32), "large": plain(8, 32, 5, 64), "residual": residual()}
    for name, (net, shape) in nets.items():
        net.eval()
        torch.onnx.export(net, torch.randn(*shape), f"{out}/{name}.onnx", opset_version=13,
                          input_names=["x"], output_names=["y"], do_constant_folding=False)


if __name__ == "__main__":
    main()
