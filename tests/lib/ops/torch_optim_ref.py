#!/usr/bin/python3
"""Reference trajectories of torch.optim.SGD and torch.optim.Adam, and reference values of the
cross-entropy and mean-squared-error losses, for test_loss_optim.

Needs PyTorch (Debian: python3-torch under /usr/bin/python3). Writes to stdout, one record per
line, every float as %.9g (exact for float32):

  optim NAME sgd|adam N STEPS LR MOMENTUM WD BETA1 BETA2 EPS
  w0 N floats           the starting weights
  g N floats            then, for each step, the gradient
  w N floats            and the weights PyTorch has after the step
  ce C TARGET LOSS      cross-entropy over C logits
  x C floats            the logits
  d C floats            the gradient w.r.t. the logits
  mse N LOSS            mean squared error
  x N floats / t N floats / d N floats
  end

If torch cannot be imported it prints "skip REASON" and exits 0.
"""
import math
import sys

try:
    import torch
except Exception as e:  # noqa: BLE001 - any import failure means no reference
    print("skip torch not available: %s" % e)
    sys.exit(0)

torch.set_num_threads(1)


def fmt(t):
    return " ".join("%.9g" % v for v in t.detach().reshape(-1).tolist())


N = 11
STEPS = 5


def start_weights():
    # alternating signs, magnitudes 0.6 .. 1.9: every weight stays far from 0 over the run
    return torch.tensor([(-1) ** i * (0.6 + 0.13 * i) for i in range(N)], dtype=torch.float32)


def grad_at(step):
    return torch.tensor([math.sin(1.3 * i + 0.7 * step) * (1.0 + 0.2 * step) for i in range(N)],
                        dtype=torch.float32)


CASES = [
    # name, kind, lr, momentum, weight_decay, beta1, beta2, eps
    ("sgd", "sgd", 0.05, 0.0, 0.0, 0, 0, 0),
    ("sgd_wd", "sgd", 0.05, 0.0, 0.05, 0, 0, 0),
    ("sgd_momentum", "sgd", 0.02, 0.9, 0.0, 0, 0, 0),
    ("sgd_momentum_wd", "sgd", 0.02, 0.9, 0.01, 0, 0, 0),
    ("adam", "adam", 1e-3, 0, 0.0, 0.9, 0.999, 1e-8),
    ("adam_wd", "adam", 0.01, 0, 0.01, 0.9, 0.999, 1e-8),
    ("adam_betas_wd", "adam", 0.05, 0, 0.1, 0.8, 0.99, 1e-6),
]

for name, kind, lr, momentum, wd, b1, b2, eps in CASES:
    w = torch.nn.Parameter(start_weights())
    if kind == "sgd":
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum, weight_decay=wd)
    else:
        opt = torch.optim.Adam([w], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    print("optim %s %s %d %d %.9g %.9g %.9g %.9g %.9g %.9g" %
          (name, kind, N, STEPS, lr, momentum, wd, b1, b2, eps))
    print("w0 " + fmt(w))
    for step in range(1, STEPS + 1):
        g = grad_at(step)
        w.grad = g.clone()
        opt.step()
        if w.detach().abs().min().item() < 0.1:
            sys.exit("reference weights came close to 0: relative errors would mislead")
        print("g " + fmt(g))
        print("w " + fmt(w))

for C, target, scale in [(5, 2, 1.0), (10, 9, 4.0), (3, 0, 30.0)]:
    x = torch.tensor([math.cos(0.9 * i + C) * scale for i in range(C)], dtype=torch.float32,
                     requires_grad=True)
    loss = torch.nn.functional.cross_entropy(x.unsqueeze(0), torch.tensor([target]))
    loss.backward()
    print("ce %d %d %.9g" % (C, target, loss.item()))
    print("x " + fmt(x))
    print("d " + fmt(x.grad))

for n in (1, 7, 64):
    x = torch.tensor([math.sin(0.37 * i) for i in range(n)], dtype=torch.float32,
                     requires_grad=True)
    t = torch.tensor([math.cos(0.21 * i) * 0.5 for i in range(n)], dtype=torch.float32)
    loss = torch.nn.functional.mse_loss(x, t)
    loss.backward()
    print("mse %d %.9g" % (n, loss.item()))
    print("x " + fmt(x))
    print("t " + fmt(t))
    print("d " + fmt(x.grad))

print("end")
