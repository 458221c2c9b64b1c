"""Train the bundled digits CNN and export it to models/digits_cnn.onnx (needs `slimcc[train]`).

    python -m slimcc.models.train_digits [--epochs 40] [--out models/digits_cnn.onnx]

The network has every structure the passes must handle: a residual Add, a depthwise
conv, a Concat of two branches and a Gemm head. BatchNorm stays in the export (the
canonicalize pass folds it). Deterministic for a seed on the CPU build of torch.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from slimcc.models.digits import INPUT_NAME, MODEL_PATH, SIZE, accuracy, split


def build_network():
    """The digits CNN as a torch.nn.Module."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, stride=1, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, 32, 3)
            self.down1 = conv_bn(32, 64, 3, stride=2)
            self.res_a = conv_bn(64, 64, 3)
            self.res_b = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
            self.depthwise = conv_bn(64, 64, 3, groups=64)
            self.pointwise = conv_bn(64, 64, 1)
            self.branch3 = conv_bn(64, 48, 3)
            self.branch1 = conv_bn(64, 48, 1)
            self.down2 = conv_bn(96, 128, 3, stride=2)
            self.down3 = conv_bn(128, 128, 3, stride=2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Linear(128, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            x = self.down1(self.stem(x))
            x = torch.relu(x + self.res_b(self.res_a(x)))
            x = self.pointwise(self.depthwise(x))
            x = torch.cat([self.branch3(x), self.branch1(x)], dim=1)
            x = self.down3(self.down2(x))
            x = torch.flatten(self.pool(x), 1)
            return self.fc2(torch.relu(self.fc1(x)))

    return DigitsCNN()


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random shifts of up to 2 pixels (background value -1)."""
    out = np.full_like(batch, -1.0)
    for i, image in enumerate(batch):
        dy, dx = rng.integers(-2, 3, size=2)
        src = image[:, max(0, -dy):SIZE - max(0, dy), max(0, -dx):SIZE - max(0, dx)]
        out[i, :, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
    return out


def train(epochs: int, seed: int = 0):
    """Train with Adam + cosine schedule; returns the trained module in eval mode."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train, y_train, _, _ = split()
    net = build_network()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = int(np.ceil(len(x_train) / 64))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), 64):
            index = order[start:start + 64]
            inputs = torch.from_numpy(augment(x_train[index], rng))
            loss = torch.nn.functional.cross_entropy(net(inputs), torch.from_numpy(y_train[index]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def export(net, path: Path) -> None:
    """Export to ONNX (opset 17, batch 1, BatchNorm kept) and write atomically."""
    import torch

    from slimcc.ir.model import load_model, read_onnx, save_model

    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 1, SIZE, SIZE),), buffer, input_names=[INPUT_NAME],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    save_model(load_model(read_onnx(buffer.getvalue())), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", default=str(MODEL_PATH))
    args = parser.parse_args()
    net = train(args.epochs)
    export(net, Path(args.out))
    print(f"wrote {args.out}; held-out accuracy {accuracy(args.out):.4f}")


if __name__ == "__main__":
    main()
