#!/usr/bin/python3
"""PyTorch reference dumps for libpartime (DESIGN §8).

Builds small networks from the ops libpartime supports, exports each to ONNX (opset 13) and dumps,
for a stream of 5 frames at batch size 1:

  NET.onnx                      the model
  NET/frames.npy                (5, *input_shape[1:]) float32
  NET/targets.npy               int64 (5,) for cross-entropy, float32 (5, *output[1:]) for mse
  NET/grad/NAME.npy             d loss / d parameter on frame 0 with the initial weights
  NET/OPT/outputs.npy           each frame's output before that frame's update (online learning:
                                frame t sees the weights after t updates)
  NET/OPT/losses.npy            each frame's loss
  NET/OPT/weights/NAME.npy      every parameter after the 5 updates
  NET/meta.json                 loss, parameter names, optimizer settings

for OPT in sgd (lr 0.01, momentum 0.9) and adam (lr 1e-3). NAME is the ONNX initializer name of
the parameter (torch keeps "conv1.weight" and the like). Usage: make_reference.py OUTDIR
"""
import json
import os
import sys
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

N_FRAMES = 5
OPTIMIZERS = {
    "sgd": {"lr": 0.01, "momentum": 0.9},
    "adam": {"lr": 1e-3},
}
# Ops every exported graph may use: the list libpartime implements.
SUPPORTED = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu", "LeakyRelu", "Sigmoid", "Tanh",
    "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization", "Flatten", "Reshape",
    "Softmax", "Concat", "Resize", "Upsample", "Identity", "Dropout",
}


class ConvNet(nn.Module):
    """conv + relu + maxpool, twice, then linear: a classifier."""
    input_shape = (1, 3, 8, 8)
    loss = "cross-entropy"

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=1, padding=1)
        self.fc = nn.Linear(6 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class ResNet(nn.Module):
    """A stem conv, a residual block conv-bn-relu-conv-bn + skip add, global pooling, linear."""
    input_shape = (1, 3, 8, 8)
    loss = "mse"

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = F.relu(x + y)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


class Decoder(nn.Module):
    """A strided conv encoder and a conv-transpose decoder: reconstruction of its input."""
    input_shape = (1, 3, 8, 8)
    loss = "reconstruction"

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dec = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        x = F.leaky_relu(self.enc(x), 0.1)
        x = torch.tanh(self.dec(x))
        return torch.sigmoid(self.out(x))


class Mixed(nn.Module):
    """A grouped conv, average pooling, nearest upsampling, concat with the input, a per-channel
    scale (Mul) and shift (Add) that learn, a strided dilated conv and a linear head."""
    input_shape = (1, 3, 8, 8)
    loss = "mse"

    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(3, 6, 3, padding=1, groups=3)
        self.scale = nn.Parameter(torch.randn(1, 9, 1, 1) * 0.5 + 1.0)
        self.shift = nn.Parameter(torch.randn(1, 9, 1, 1) * 0.1)
        self.conv = nn.Conv2d(9, 4, 3, stride=2, padding=2, dilation=2)
        self.fc = nn.Linear(4 * 4 * 4, 6)

    def forward(self, x):
        y = torch.sigmoid(self.dw(x))
        y = F.avg_pool2d(y, 2, count_include_pad=False)
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        y = torch.cat([y, x], dim=1) * self.scale + self.shift
        y = torch.tanh(self.conv(y))
        return self.fc(torch.flatten(y, 1))


NETS = {"convnet": ConvNet, "resnet": ResNet, "decoder": Decoder, "mixed": Mixed}


def make_net(cls, seed):
    torch.manual_seed(seed)
    net = cls()
    # Batch-norm in its inference form: running statistics are constants, scale and bias learn.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features) + 0.5)
                m.weight.copy_(torch.rand(m.num_features) + 0.5)
                m.bias.copy_(torch.randn(m.num_features) * 0.1)
    net.eval()
    return net


def loss_fn(net, out, x, target):
    if net.loss == "cross-entropy":
        return F.cross_entropy(out, target.view(1))
    if net.loss == "reconstruction":
        return F.mse_loss(out, x)
    return F.mse_loss(out, target)


def export(net, path):
    x = torch.zeros(net.input_shape)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.onnx.export(net, x, path, opset_version=13, do_constant_folding=True,
                      keep_initializers_as_inputs=False, input_names=["input"],
                      output_names=["output"], training=torch.onnx.TrainingMode.PRESERVE)
    model = onnx.load(path)
    # Constant nodes (Resize's scales) become initializers: the reference checks layer arithmetic
    # and the learning rule, the conformance tests check the importer's coverage of Constant.
    for node in [n for n in model.graph.node if n.op_type == "Constant"]:
        value = next(a.t for a in node.attribute if a.name == "value")
        value.name = node.output[0]
        model.graph.initializer.append(value)
        model.graph.node.remove(node)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    ops = {n.op_type for n in model.graph.node}
    unsupported = ops - SUPPORTED
    if unsupported:
        raise SystemExit(f"{path}: exported ops outside the supported list: {sorted(unsupported)}")
    inits = {i.name for i in model.graph.initializer}
    names = {}
    for pname, _ in net.named_parameters():
        if pname not in inits:
            raise SystemExit(f"{path}: parameter {pname} is not an initializer of that name "
                             f"(initializers: {sorted(inits)})")
        names[pname] = pname
    return names


def save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.ascontiguousarray(arr))


def make(outdir, name, cls, seed):
    net = make_net(cls, seed)
    onnx_path = os.path.join(outdir, name + ".onnx")
    names = export(net, onnx_path)
    init_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    d = os.path.join(outdir, name)

    g = torch.Generator().manual_seed(seed + 100)
    frames = torch.rand((N_FRAMES,) + net.input_shape[1:], generator=g) * 2 - 1
    with torch.no_grad():
        out_shape = net(frames[:1]).shape
    if net.loss == "cross-entropy":
        targets = torch.randint(0, out_shape[1], (N_FRAMES,), generator=g)
    elif net.loss == "mse":
        targets = torch.randn((N_FRAMES,) + tuple(out_shape[1:]), generator=g)
    else:
        targets = None
    save(os.path.join(d, "frames.npy"), frames.numpy().astype(np.float32))
    if targets is not None:
        save(os.path.join(d, "targets.npy"),
             targets.numpy().astype(np.int64 if net.loss == "cross-entropy" else np.float32))

    def frame_target(t):
        x = frames[t:t + 1]
        tgt = None if targets is None else targets[t:t + 1]
        if tgt is not None and net.loss == "cross-entropy":
            tgt = tgt[0]
        return x, tgt

    # Gradients of the first frame's loss with the initial weights.
    net.zero_grad()
    x, tgt = frame_target(0)
    loss_fn(net, net(x), x, tgt).backward()
    for pname, p in net.named_parameters():
        save(os.path.join(d, "grad", names[pname] + ".npy"), p.grad.numpy())

    for opt_name, kw in OPTIMIZERS.items():
        net.load_state_dict(init_state)
        opt = (torch.optim.SGD if opt_name == "sgd" else torch.optim.Adam)(net.parameters(), **kw)
        outputs, losses = [], []
        for t in range(N_FRAMES):
            x, tgt = frame_target(t)
            opt.zero_grad()
            out = net(x)
            loss = loss_fn(net, out, x, tgt)
            loss.backward()
            opt.step()
            outputs.append(out.detach()[0].numpy().copy())
            losses.append(float(loss))
        save(os.path.join(d, opt_name, "outputs.npy"), np.stack(outputs).astype(np.float32))
        save(os.path.join(d, opt_name, "losses.npy"), np.array(losses, dtype=np.float32))
        for pname, p in net.named_parameters():
            save(os.path.join(d, opt_name, "weights", names[pname] + ".npy"), p.detach().numpy())

    meta = {"loss": net.loss, "params": sorted(names.values()), "optimizers": OPTIMIZERS,
            "frames": N_FRAMES, "input_shape": list(net.input_shape),
            "output_shape": list(out_shape)}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.set_default_dtype(torch.float32)
    for seed, (name, cls) in enumerate(NETS.items()):
        make(outdir, name, cls, seed + 1)
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
