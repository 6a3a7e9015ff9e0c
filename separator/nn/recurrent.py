"""The band-split RNN's time-frequency model: residual RNNs over frames, then over bands, ...

Parameters are MSST's (`ResidualRNN`: `norm`, `rnn`, `fc`; MSST ccc011a
`models/bandit/core/model/bsrnn/tfmodel.py`, `models/bandit_v2/tfmodel.py`). Training and GPUs
run torch's own RNN (cuDNN there). CPU inference runs the same recurrence as a loop of fused
steps instead, because on the CPU torch's RNN spends much of its time on memory rather than
arithmetic: per layer it allocates afresh the input projections of every step (12 bytes per
row, step, hidden unit and direction for a GRU), a stack of the outputs per direction and their
concatenation, and page faults on those fresh large tensors cost about as much as the matmuls
that fill them (see benchmarks/README.md). Here
- the LayerNorm's gain and bias are folded into the input projection;
- the input projections are made a block of steps at a time, just before the steps use them,
  into one small buffer (torch's RNN makes them for the whole sequence at once: 0.3 GB per
  direction and layer for one 8 s stereo chunk of the v2 config);
- each step writes its output in place, and the few large buffers are allocated once per
  forward and reused by every layer (the time and band stages hold as many rows × steps).
The results equal torch's RNN to float32 rounding (tests/test_nn_bandit.py).

Axis legend: s sequence step, n rows (independent sequences), d embedding, h hidden units,
g gates (RNN 1, GRU 3, LSTM 4), z directions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from separator.nn.layers import WeightCache

RNN_TYPES = {"RNN": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
# Rows per block when normalising the RNN input: small enough to stay in reused heap memory.
_BLOCK = 4096


class ResidualRNN(nn.Module):
    """x + fc(RNN(LayerNorm(x))) along the first axis (MSST `ResidualRNN`).

    forward: (s, n, d) -> (s, n, d). The RNN runs sequence-first (MSST's is batch-first; the
    parameters are the same). `fused` is the CPU inference path (see the module docstring).
    """

    def __init__(self, emb_dim: int, rnn_dim: int, bidirectional: bool, rnn_type: str) -> None:
        super().__init__()
        self.rnn_type = rnn_type
        self.norm = nn.LayerNorm(emb_dim)
        self.rnn = RNN_TYPES[rnn_type](emb_dim, rnn_dim, num_layers=1, bidirectional=bidirectional)
        self.fc = nn.Linear(rnn_dim * (2 if bidirectional else 1), emb_dim)
        self._cache = WeightCache()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.rnn(self.norm(x))[0]) + x

    def _fused_weights(self) -> list[Tensor]:
        """[W_in (d, z·g·h) with the LayerNorm's gain folded in, fc weight^T, fc bias, then per
        direction: W_hh^T (h, g·h), the bias of every step's hidden matmul, the bias added to
        the input part (GRU: b_in; the LayerNorm's bias projected is in these biases)]."""
        rnn, ln = self.rnn, self.norm
        sfx = ["_l0", "_l0_reverse"][: 2 if rnn.bidirectional else 1]
        h = rnn.hidden_size
        # GRU: the candidate gate's pre-activation is doubled, so that tanh(a) = 2σ(2a) − 1 can
        # be taken with torch's sigmoid, three times cheaper than its tanh on this CPU.
        scale = torch.ones(_GATES[self.rnn_type] * h, device=ln.weight.device)
        if self.rnn_type == "GRU":
            scale[2 * h :] = 2.0
        w_ih = [getattr(rnn, f"weight_ih{s}") * scale[:, None] for s in sfx]
        out = [torch.cat([w * ln.weight for w in w_ih]).t().contiguous()]
        out += [self.fc.weight.t(), self.fc.bias]
        for s, w in zip(sfx, w_ih):
            b_x = getattr(rnn, f"bias_ih{s}") * scale + w @ ln.bias
            b_h = getattr(rnn, f"bias_hh{s}") * scale
            if self.rnn_type == "GRU":  # b_hn stays inside r ⊙ (W_hn h + b_hn); b_in outside
                step = torch.cat([b_x[: 2 * h] + b_h[: 2 * h], b_h[2 * h :]])
                extra = b_x[2 * h :]
            else:
                step, extra = b_x + b_h, b_x[:0]
            out += [(getattr(rnn, f"weight_hh{s}") * scale[:, None]).t(), step, extra]
        return out

    def fused(self, x: Tensor, ws: Workspace) -> Tensor:
        """forward for CPU inference: (s, n, d) -> (s, n, d) in the workspace's buffer "z"."""
        steps, rows, d = x.shape
        w_in, w_fc, b_fc, *per_dir = self._cache.get(list(self.parameters()), self._fused_weights)
        h, dirs = self.rnn.hidden_size, 1 + self.rnn.bidirectional
        width = w_in.shape[1] // dirs  # g·h
        x2 = x.reshape(steps * rows, d)
        xn = ws.take("norm", (steps * rows, d))
        for i in range(0, steps * rows, _BLOCK):  # small blocks stay in reused heap memory
            xn[i : i + _BLOCK] = F.layer_norm(x2[i : i + _BLOCK], (d,), eps=self.norm.eps)
        xn = xn.view(steps, rows, d)
        out = ws.take("out", (steps, rows, dirs * h))
        step_fn = {"GRU": _gru_steps, "LSTM": _lstm_steps, "RNN": _tanh_steps}[self.rnn_type]
        span = max(1, _BLOCK // rows)  # steps per block of input projections
        for z in range(dirs):
            w_z, out_z = w_in[:, z * width : (z + 1) * width], out[..., z * h : (z + 1) * h]
            starts = list(range(0, steps, span))
            state = None
            for s0 in starts if z == 0 else starts[::-1]:
                s1 = min(s0 + span, steps)
                gi = ws.take("gates", ((s1 - s0) * rows, width))
                torch.mm(xn[s0:s1].reshape(-1, d), w_z, out=gi)
                order = range(s1 - s0) if z == 0 else range(s1 - s0 - 1, -1, -1)
                gi = gi.view(s1 - s0, rows, width)
                state = step_fn(gi, out_z[s0:s1], order, *per_dir[3 * z : 3 * z + 3], state)
        y = ws.take("z", (steps * rows, d))
        torch.addmm(b_fc, out.view(steps * rows, -1), w_fc, out=y)
        return y.add_(x2).view(steps, rows, d)


def _gru_steps(gi, out, order, w_hh, b_step, b_in, h):
    """torch's GRU: r, z = σ(x·W_i + h·W_h + b), n = tanh(x·W_in + b_in + r ⊙ (h·W_hn + b_hn)),
    h' = (1 − z) ⊙ n + z ⊙ h = lerp(n, h, z). gi: (steps, n, 3h) -> out (steps, n, h).
    The n-gate inputs arrive doubled (see `_fused_weights`): n = 2σ(2a) − 1."""
    hid = out.shape[-1]
    h = out.new_zeros(out.shape[1:]) if h is None else h
    for i in order:
        g = gi[i]
        gh = torch.addmm(b_step, h, w_hh)
        rz = gh[:, : 2 * hid].add_(g[:, : 2 * hid]).sigmoid_()
        n = torch.addcmul(g[:, 2 * hid :], rz[:, :hid], gh[:, 2 * hid :]).add_(b_in).sigmoid_()
        h = torch.lerp(n.mul_(2.0).sub_(1.0), h, rz[:, hid:], out=out[i])
    return h


def _lstm_steps(gi, out, order, w_hh, b_step, _unused, state):
    """torch's LSTM: gates i, f, g, o; c' = σf ⊙ c + σi ⊙ tanh g, h' = σo ⊙ tanh c'."""
    hid = out.shape[-1]
    if state is None:
        state = out.new_zeros(out.shape[1:]), out.new_zeros(out.shape[1:])
    h, c = state
    for i in order:
        gates = torch.addmm(b_step, h, w_hh).add_(gi[i])
        gates[:, : 2 * hid].sigmoid_()
        gates[:, 3 * hid :].sigmoid_()
        cell = gates[:, 2 * hid : 3 * hid].tanh_()
        c = c.mul_(gates[:, hid : 2 * hid]).addcmul_(gates[:, :hid], cell)
        h = torch.mul(gates[:, 3 * hid :], torch.tanh(c), out=out[i])
    return h, c


def _tanh_steps(gi, out, order, w_hh, b_step, _unused, h):
    """torch's RNN (tanh): h' = tanh(x·W_i + h·W_h + b)."""
    h = out.new_zeros(out.shape[1:]) if h is None else h
    for i in order:
        h = torch.add(torch.addmm(b_step, h, w_hh), gi[i], out=out[i]).tanh_()
    return h


def fused_applies(x: Tensor) -> bool:
    """The fused loop serves CPU float32 inference; training and other devices use torch's RNN."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()


class Workspace:
    """Large scratch buffers reused by every RNN layer of one forward pass."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...]) -> Tensor:
        numel = 1
        for s in shape:
            numel *= s
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[name] = torch.empty(numel)
        return buf[:numel].view(shape)


class Transpose(nn.Module):
    """Parameter-free placeholder for MSST v2's `Transpose(1, 2)` between RNNs (it only shifts
    the state-dict indices: `seqband.0`, `.2`, `.4` …); `run_seqband` does the transposing."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)


def run_seqband(rnns: Sequence[ResidualRNN], z: Tensor) -> Tensor:
    """The time-frequency model: RNNs alternately across frames and across bands.

    z: (t, r, k, d) -> (k, r, t, d) (t frames, r rows, k bands). Each RNN sees its sequence axis
    first, so no RNN needs transposes; between RNNs one permuted copy of the (small) embedding
    changes axes. In CPU inference every layer's large tensors live in one reused workspace.
    """
    ws = Workspace() if fused_applies(z) else None
    for i, rnn in enumerate(rnns):
        if i:  # swap the frame and band axes
            a, r, b, d = z.shape
            dst = z.new_empty(0) if ws is None else ws.take("perm", (b, r, a, d))
            z = z.permute(2, 1, 0, 3).contiguous() if ws is None else dst.copy_(z.transpose(0, 2))
        a, r, b, d = z.shape
        flat = z.reshape(a, r * b, d)
        z = (rnn(flat) if ws is None else rnn.fused(flat, ws)).view(a, r, b, d)
    # MSST stacks 2·n_sqm_modules RNNs, so the last one ran across bands: z is (k, r, t, d).
    if not rnns:
        z = z.permute(2, 1, 0, 3).contiguous()
    return z
