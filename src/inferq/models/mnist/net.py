"""The network of the bundled MNIST model: the classic PyTorch tutorial CNN.

Imported only from ``MnistModel.setup()`` and the training script, never at package
import time, because it imports torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MnistNet(nn.Module):
    """conv(1→32) → conv(32→64) → max-pool → dropout → fc(9216→128) → dropout → fc(128→10).

    Takes a batch of shape (n, 1, 28, 28), normalised with MNIST's mean and std, and
    returns logits of shape (n, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised batch of shape (n, 1, 28, 28)."""
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        logits: torch.Tensor = self.fc2(x)
        return logits
