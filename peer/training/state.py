"""The global training state every group member must hold identically: parameters, outer momentum,
round. The outer step runs here, always on the CPU in fp32, so that peers on different devices
compute bit-identical results from identical inputs.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
from dataclasses import dataclass, field

import torch
from torch import nn

from barnraise.coordinator.errors import IntegrityError

STATE_MAGIC = b"BRST1"


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p).to(p.device, p.dtype))
            offset += n


def all_finite(t: torch.Tensor) -> bool:
    """True if every value is finite; a finite sum proves it in one cheap pass."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def tensor_hash(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class GlobalState:
    params: torch.Tensor  # flat fp32 CPU: the swarm's parameters after `round`
    momentum: torch.Tensor  # flat fp32 CPU: Nesterov buffer of the outer optimizer
    round: int  # last round whose average produced these params; -1: initial
    _hash: str = field(default="", repr=False, compare=False)  # of ``params``; reset by ``outer_step``

    @classmethod
    def initial(cls, model: nn.Module) -> GlobalState:
        p = flat_params(model)
        return cls(params=p, momentum=torch.zeros_like(p), round=-1)

    def params_hash(self) -> str:
        """Hash of the params, computed once per state (the training thread asks for it often)."""
        if not self._hash:
            self._hash = tensor_hash(self.params)
        return self._hash

    def snapshot(self) -> GlobalState:
        """A copy that later outer steps leave alone (what the state server hands out)."""
        return GlobalState(
            params=self.params.clone(),
            momentum=self.momentum.clone(),
            round=self.round,
            _hash=self.params_hash(),
        )

    def outer_step(self, avg_delta: torch.Tensor, lr: float, momentum: float, round_no: int) -> None:
        """Nesterov SGD on the averaged pseudo-gradient (global - local), as in DiLoCo."""
        g = avg_delta.float()
        self.momentum.mul_(momentum).add_(g)
        self.params.sub_(lr * (g + momentum * self.momentum))
        self.round = round_no
        self._hash = ""

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        buf.write(STATE_MAGIC)
        buf.write(struct.pack(">qQ", self.round, self.params.numel()))
        buf.write(self.params.numpy().tobytes())
        buf.write(self.momentum.numpy().tobytes())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, numel: int) -> GlobalState:
        """Parse a state downloaded from an untrusted donor; checks size and finiteness."""
        head = len(STATE_MAGIC) + 16
        if len(data) != head + 8 * numel or not data.startswith(STATE_MAGIC):
            raise IntegrityError(f"state of {len(data)} bytes does not fit a model of {numel} parameters")
        round_no, n = struct.unpack(">qQ", data[len(STATE_MAGIC) : head])
        if n != numel or round_no < -1:
            raise IntegrityError("state header does not match this run's model")
        arr = torch.frombuffer(bytearray(data[head:]), dtype=torch.float32)
        params, mom = arr[:numel].clone(), arr[numel:].clone()
        if not (torch.isfinite(params).all() and torch.isfinite(mom).all()):
            raise IntegrityError("state holds non-finite values")
        return cls(params=params, momentum=mom, round=round_no)
