"""The global training state every group member must hold identically: parameters, outer momentum,
round. The outer step runs here, always on the CPU in fp32, so that peers on different devices
compute bit-identical results from identical inputs.

A ``GlobalState`` is never changed once made: the outer step returns a new one (``OuterStep.apply``).
So a state can be handed to another thread (the state server on the P2P loop, a state download
comparing hashes) without a lock, and its params hash, computed once, stays true.
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
HASH_CHUNK_BYTES = 1 << 20  # bytes per hashed chunk: also the chunk of a multi-donor state download


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


def chunk_digests(t: torch.Tensor, chunk_bytes: int = HASH_CHUNK_BYTES) -> list[bytes]:
    """sha256 of each ``chunk_bytes`` slice of the tensor's bytes (the last one shorter)."""
    raw = memoryview(t.detach().contiguous().view(torch.uint8).numpy())
    return [hashlib.sha256(raw[i : i + chunk_bytes]).digest() for i in range(0, len(raw), chunk_bytes)]


def list_hash(digests: list[bytes]) -> str:
    """The hash a list of chunk digests stands for: what ``tensor_hash`` returns for those chunks."""
    return hashlib.sha256(b"".join(digests)).hexdigest()[:16]


def tensor_hash(*tensors: torch.Tensor) -> str:
    """A hash over the chunk digests of the tensors' bytes, so that a list of chunk hashes a donor
    announces can be checked against an agreed params hash before any chunk arrives (state sync
    from several donors, ``barnraise.peer.sync.chunks``)."""
    return list_hash([d for t in tensors for d in chunk_digests(t)])


@dataclass(frozen=True, kw_only=True)
class OuterStep:
    """The run's outer optimizer: Nesterov SGD on the averaged pseudo-gradient, as in DiLoCo."""

    lr: float  # outer learning rate (1.0 with momentum 0: plain averaging)
    momentum: float  # Nesterov momentum, 0 <= m < 1

    def apply(self, state: GlobalState, avg_delta: torch.Tensor, round_no: int) -> GlobalState:
        """The state after round ``round_no``'s average: a new state; ``state`` is left alone."""
        g = avg_delta.float()
        momentum = state.momentum.mul(self.momentum).add_(g)
        params = state.params.sub(self.lr * (g + self.momentum * momentum))
        return GlobalState(params=params, momentum=momentum, round=round_no)


@dataclass
class GlobalState:
    """Immutable once made (see the module docstring): nothing writes to its tensors."""

    params: torch.Tensor  # flat fp32 CPU: the swarm's parameters after `round`
    momentum: torch.Tensor  # flat fp32 CPU: Nesterov buffer of the outer optimizer
    round: int  # last round whose average produced these params; -1: initial
    _hash: str = field(default="", repr=False, compare=False)  # of ``params``, computed on first use
    _digests: list[bytes] | None = field(default=None, repr=False, compare=False)  # params' chunk digests

    @classmethod
    def initial(cls, model: nn.Module) -> GlobalState:
        p = flat_params(model)
        return cls(params=p, momentum=torch.zeros_like(p), round=-1)

    def params_hash(self) -> str:
        """Hash of the params, computed once per state (the training thread asks for it often)."""
        if not self._hash:
            self._hash = list_hash(self.param_digests())
        return self._hash

    def param_digests(self) -> list[bytes]:
        """The params' chunk digests behind ``params_hash``, kept for a donor's manifest."""
        if self._digests is None:
            self._digests = chunk_digests(self.params)
        return self._digests

    def perturbed(self, scale: float, seed: int = 0) -> GlobalState:
        """A copy with every parameter moved by Gaussian noise of ``scale`` (disagreement tests)."""
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.params.shape, generator=gen) * scale
        return GlobalState(params=self.params + noise, momentum=self.momentum.clone(), round=self.round)

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
        body = bytearray(data[head:])  # frombuffer refuses an empty buffer: a model of 0 parameters
        arr = torch.frombuffer(body, dtype=torch.float32) if body else torch.zeros(0)
        params, mom = arr[:numel].clone(), arr[numel:].clone()
        if not (torch.isfinite(params).all() and torch.isfinite(mom).all()):
            raise IntegrityError("state holds non-finite values")
        return cls(params=params, momentum=mom, round=round_no)
