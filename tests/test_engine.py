"""Engine: overlap-add exactness (hypothesis), streaming == whole tensor, borders, window."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import ConvModel, GainModel, identity_model

from separator.errors import SeparatorError
from separator.inference.engine import (
    StreamingEngine,
    chunk_step,
    evaluations_per_sample,
    make_window,
    separate_tensor,
    window_norm,
)


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(1, 900),
    chunk=st.integers(1, 97),
    overlap=st.floats(1.0, 8.0),
    batch=st.integers(1, 5),
    channels=st.sampled_from([1, 2]),
)
def test_identity_returns_input(length, chunk, overlap, batch, channels):
    torch.manual_seed(length)
    x = torch.randn(channels, length)
    y = separate_tensor(identity_model(chunk, channels), x, overlap=overlap, batch_size=batch)
    assert y.shape == (2, channels, length)
    assert torch.allclose(y, x.expand_as(y), atol=1e-6, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 3000),
    blocks=st.lists(st.integers(1, 700), min_size=1, max_size=12),
    overlap=st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.0]),
    batch=st.integers(1, 4),
)
def test_streaming_equals_whole_bit_for_bit(length, blocks, overlap, batch):
    model = ConvModel(chunk_size=200)
    x = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    whole = separate_tensor(model, x, overlap=overlap, batch_size=batch)
    engine = StreamingEngine(model, overlap=overlap, batch_size=batch)
    outs, pos, i = [], 0, 0
    while pos < length:
        n = blocks[i % len(blocks)]
        outs.append(engine.push(x[:, pos : pos + n]))
        pos, i = pos + n, i + 1
    outs.append(engine.flush())
    streamed = torch.cat(outs, dim=-1)
    assert streamed.shape == whole.shape == (4, 2, length)
    assert torch.equal(streamed, whole)


def test_output_is_returned_as_soon_as_final():
    """Latency is bounded: after pushing many chunks, all but about one chunk has come out."""
    model = GainModel(chunk_size=100)
    engine = StreamingEngine(model, overlap=2, batch_size=1)
    got = sum(engine.push(torch.randn(2, 50)).shape[-1] for _ in range(40))
    assert 2000 - got <= 100
    assert engine._acc.shape[-1] == 100  # one chunk of accumulator, whatever the length


def test_gain_model_stems_and_sum():
    gain_model = GainModel()
    x = torch.randn(2, 4321)
    y = separate_tensor(gain_model, x, overlap=2.5, batch_size=3)
    for s, g in enumerate((0.5, 0.25, 0.125, 0.125)):
        assert torch.allclose(y[s], g * x, atol=1e-6)
    assert torch.allclose(y.sum(0), x, atol=1e-6)


def test_chunk_size_override_and_evaluation_count():
    model = GainModel(chunk_size=1000)
    engine = StreamingEngine(model, overlap=2, chunk_size=400)
    out = torch.cat([engine.push(torch.randn(2, 4000)), engine.flush()], -1)
    assert out.shape == (4, 2, 4000)
    # padded to 200 + 4000 samples; chunk starts every 200 up to the last real sample
    assert engine.evaluations == (200 + 4000 - 1) // 200 + 1
    assert evaluations_per_sample(400, 2) == 2.0


def test_window_is_positive_flat_with_short_linear_fades_and_not_mutated():
    w = make_window(1000, chunk_step(1000, 2))  # fades of FADE * 1000 = 50 samples
    assert w.min() > 0 and w.max() <= 1
    assert torch.all(w[50:950] == 1) and w[49] < 1 and w[950] < 1
    assert torch.allclose(w[:50], (torch.arange(50) + 0.5) / 50)
    assert torch.equal(w.flip(0), w)
    norm = window_norm(w, 500)  # a fade of one chunk meets the flat middle of the other
    assert torch.allclose(norm[:50], 1 + w[:50]) and torch.all(norm[50:450] == 2)
    w_short = make_window(900, chunk_step(900, 1.02))  # the overlap is shorter than the fade
    assert torch.all(w_short[18:882] == 1) and w_short[0] < 0.05
    assert torch.all(make_window(64, 64) == 1)

    model = GainModel(chunk_size=100)
    engine = StreamingEngine(model, overlap=3)
    before = engine.window.clone()
    separate_tensor(model, torch.randn(2, 777), overlap=3)
    engine.push(torch.randn(2, 500))
    engine.flush()
    assert torch.equal(engine.window, before)


def test_borders_have_no_error_with_context_model():
    """Each real sample sees the same window offsets: a long constant input gives a constant
    output with overlap > 1 on a model whose output only depends on the local sample."""
    model = GainModel(chunk_size=128)
    x = torch.full((2, 1000), 0.7)
    y = separate_tensor(model, x, overlap=4, batch_size=2)
    assert torch.allclose(y[0], torch.full((2, 1000), 0.35), atol=1e-7)


def test_bad_settings_and_models_raise():
    with pytest.raises(SeparatorError, match="overlap"):
        separate_tensor(GainModel(), torch.randn(2, 10), overlap=0.5)
    with pytest.raises(SeparatorError, match="batch_size"):
        separate_tensor(GainModel(), torch.randn(2, 10), batch_size=0)
    with pytest.raises(SeparatorError, match="lacks"):
        separate_tensor(torch.nn.Identity(), torch.randn(2, 10))

    class Short(GainModel):
        def forward(self, x):
            return super().forward(x)[..., :-1]

    with pytest.raises(SeparatorError, match="shape"):
        separate_tensor(Short(), torch.randn(2, 3000))


def test_empty_input_gives_empty_output():
    y = separate_tensor(GainModel(), torch.zeros(2, 0))
    assert y.shape == (4, 2, 0)


def test_runs_in_inference_mode_without_grad():
    seen = {}

    class Spy(GainModel):
        def forward(self, x):
            seen["inference"] = torch.is_inference_mode_enabled()
            return super().forward(x)

    separate_tensor(Spy(), torch.randn(2, 50))
    assert seen["inference"] is True


def test_tta_of_an_equivariant_model_is_the_model():
    from separator.inference.engine import TTAModel

    model = GainModel(chunk_size=100)
    x = torch.randn(2, 1234)
    plain = separate_tensor(model, x)
    tta = separate_tensor(TTAModel(model), x)
    assert torch.allclose(tta, plain, atol=1e-6)
    seen = []

    class Count(GainModel):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    separate_tensor(TTAModel(Count(chunk_size=100)), x, batch_size=2)
    assert seen[0] == 6  # batch of 2 chunks x 3 passes
