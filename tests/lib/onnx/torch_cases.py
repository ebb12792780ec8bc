"""Models exported by PyTorch, run through the importer and executor, against PyTorch's outputs.

Usage: torch_cases.py TEST_CONFORMANCE_EXE

Exports a set of small modules with torch.onnx.export (the way users make their models) into
cases laid out like ONNX's conformance data (model.onnx, test_data_set_0/input_0.pb,
output_0.pb), then runs the conformance test on them. Every case here uses only supported ops,
so every one must load and match: --min-pass is the number of cases.
Exits 77 (skipped) when torch or onnx cannot be imported.
"""
import os
import subprocess
import sys
import tempfile
import warnings

try:
    import numpy as np
    import onnx
    from onnx import numpy_helper
    import torch
    import torch.nn as nn
except ImportError as e:  # pragma: no cover
    print("skipping:", e)
    sys.exit(77)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.bn(self.a(x)))))


class Skip(nn.Module):
    """A U-Net-like skip: concat of an upsampled path with the input."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.out = nn.Conv2d(9, 2, 1)

    def forward(self, x):
        return self.out(torch.cat([self.up(torch.tanh(self.down(x))), x], dim=1))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return torch.log_softmax(self.fc(torch.flatten(self.pool(self.conv(x)), 1)), dim=1)


class Scale(nn.Module):
    """Arithmetic with constants and a learned per-channel scale (Mul/Div/Sub by initializers)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, 3).reshape(1, 3, 1, 1))

    def forward(self, x):
        return (x - 0.25) * self.w / 2.0


class View(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(48, 6)

    def forward(self, x):
        return torch.sigmoid(self.fc(x.view(1, -1))).unsqueeze(2)


def cases():
    torch.manual_seed(0)
    return {
        # (PyTorch exports count_include_pad=True with padding as an explicit Pad: not here)
        "avgpool_ceil_exclude_pad": (nn.AvgPool2d(3, 2, padding=1, ceil_mode=True,
                                                  count_include_pad=False), [1, 2, 8, 8]),
        "maxpool_ceil": (nn.MaxPool2d(3, 2, ceil_mode=True), [1, 2, 8, 8]),
        "maxpool_pad_dilation": (nn.MaxPool2d(3, 2, padding=1, dilation=2), [1, 2, 9, 9]),
        "conv_groups_stride": (nn.Conv2d(4, 8, (3, 5), stride=(2, 1), padding=(1, 2),
                                         groups=2), [1, 4, 9, 7]),
        "conv1d": (nn.Conv1d(3, 5, 3, padding=1, dilation=1), [1, 3, 11]),
        "convtranspose_output_padding": (nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1,
                                                            output_padding=1), [1, 3, 5, 4]),
        "convtranspose_groups": (nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2),
                                 [1, 4, 5, 5]),
        "linear_relu": (nn.Sequential(nn.Linear(10, 7), nn.ReLU()), [1, 10]),
        "leaky_dropout": (nn.Sequential(nn.LeakyReLU(0.2), nn.Dropout(0.5)), [1, 3, 4, 4]),
        "softmax_channels": (nn.Softmax(dim=1), [1, 5, 3, 3]),
        "upsample_nearest": (nn.Upsample(scale_factor=2, mode="nearest"), [1, 2, 3, 4]),
        "residual_bn": (Residual(), [1, 4, 6, 6]),
        "skip_concat": (Skip(), [1, 3, 8, 8]),
        "head_gap_logsoftmax": (Head(), [1, 3, 7, 7]),
        "scale_arith": (Scale(), [1, 3, 4, 4]),
        "view_unsqueeze": (View(), [1, 3, 4, 4]),
    }


def write_tensor(path, array):
    with open(path, "wb") as f:
        f.write(numpy_helper.from_array(array).SerializeToString())


def main():
    exe = sys.argv[1]
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "torch-export")
        all_cases = cases()
        for name, (module, shape) in all_cases.items():
            module.eval()
            with torch.no_grad():
                for p in module.buffers():  # non-trivial batch-norm statistics
                    if p.dtype == torch.float32:
                        p.uniform_(0.5, 1.5)
            x = torch.randn(*shape)
            with torch.no_grad():
                y = module(x)
            case = os.path.join(root, "test_" + name)
            os.makedirs(os.path.join(case, "test_data_set_0"))
            torch.onnx.export(module, x, os.path.join(case, "model.onnx"), opset_version=13,
                              input_names=["input"], output_names=["output"])
            write_tensor(os.path.join(case, "test_data_set_0", "input_0.pb"), x.numpy())
            write_tensor(os.path.join(case, "test_data_set_0", "output_0.pb"), y.numpy())
        r = subprocess.run([exe, "-v", "--min-pass", str(len(all_cases)), root])
        sys.exit(r.returncode)


main()
