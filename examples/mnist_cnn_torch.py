"""The reference PyTorch program: a CNN trained on MNIST with Adam.

This is the original program with one fix. As first written, both
convolutions use padding 1 and keep 28x28, and a single 2x2 max-pool left
64*14*14 = 12544 features for ``fc1``, which expects 64*7*7 = 3136: it crashed
on the first batch. Here a 2x2 max-pool follows each convolution
(28 -> 14 -> 7), as ``fc1``'s size intends.

Everything else is kept as it was, including the loss: ``forward`` returns
``log_softmax`` and ``nn.CrossEntropyLoss`` applies a second log-softmax on
top of it. That second pass is redundant rather than harmful: log-probabilities
already satisfy ``sum(exp(log p)) = 1``, so ``log_softmax(log p) = log p`` and
the loss equals ``nll_loss(log p, y)`` up to rounding, with the same gradients;
it only costs an extra pass and obscures which pairing is meant.
``examples/mnist_cnn.py`` pairs log_softmax with nll_loss (logits would pair
with cross_entropy).

The data root is ``FDL_DATA_DIR`` when set, else ``data`` (downloaded).

Run: ``python examples/mnist_cnn_torch.py`` (10 epochs, as written), or
``python examples/mnist_cnn_torch.py --epochs 1 --limit 2000`` for a quick look.
"""

import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2)  # the fix: pool after conv1 too (28 -> 14)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)  # 14 -> 7
        x = torch.flatten(x, 1)  # (N, 3136); a view when x is contiguous, a copy if channels-last
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    args = parser.parse_args(argv)
    root = os.environ.get("FDL_DATA_DIR", "data")
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean=(0.5,), std=(0.5,))]
    )
    train_dataset = datasets.MNIST(root=root, train=True, download=True, transform=transform)
    if args.limit is not None:
        train_dataset = Subset(train_dataset, range(args.limit))
    test_dataset = datasets.MNIST(root=root, train=False, download=True, transform=transform)
    train_loader = DataLoader(train_dataset, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_dataset, batch_size=64, shuffle=False)

    model = CNN()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=0.001)

    for epoch in range(args.epochs):
        model.train()
        running_loss = 0.0
        for images, labels in train_loader:
            optimizer.zero_grad()
            outputs = model(images)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        print(f"Epoch {epoch + 1}, Loss: {running_loss / len(train_loader)}")

    model.eval()
    correct = 0
    total = 0
    with torch.no_grad():
        for images, labels in test_loader:
            outputs = model(images)
            _, predicted = torch.max(outputs, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    print(f"Accuracy of the network on the 10000 test images: {100 * correct / total}%")


if __name__ == "__main__":
    main()
