"""The inference engine: exact decoding, each row's own settings and seed, and continuous
batching (requests join and leave a running batch without changing anyone's answer)."""

import threading
import time

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from gptcli.engine import Engine, Finish, Piece, Request
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, SampleConfig


def make(**kw) -> GPT:
    torch.manual_seed(0)
    shape = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 40}
    return GPT(ModelConfig(**shape | kw)).eval()


def word_tokenizer(size: int = 40) -> Tokenizer:
    """Token i is the word t<i>: every id decodes to its own text."""
    vocab = {f"t{i}": i for i in range(size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


TOK = word_tokenizer()


def events(model, *requests: Request, slots: int | None = None) -> list[list]:
    """Each request's events, the requests submitted together to one engine."""
    engine = Engine(model, TOK, slots or sum(r.n for r in requests))
    try:
        handles = [engine.submit(r) for r in requests]
        return [list(h) for h in handles]
    finally:
        engine.close()


def rows_of(evs: list, n: int = 1) -> list[list[int]]:
    """The tokens of each row, from its pieces."""
    rows = [[] for _ in range(n)]
    for e in evs:
        if isinstance(e, Piece):
            rows[e.row] += e.ids
    return rows


def tokens(model, prompt, params, seed=None, eos_id=None) -> list[int]:
    """The tokens of one row alone, eos not included."""
    enders = frozenset() if eos_id is None else frozenset({eos_id})
    (evs,) = events(model, Request(prompt, params, seed, 1, enders))
    return rows_of(evs)[0]


def test_greedy_equals_argmax_of_full_forward():
    model = make()
    prompt = [1, 2, 3]
    out = tokens(model, prompt, SampleConfig(max_new_tokens=8, temperature=0))
    seq = list(prompt)
    for _ in range(8):
        logits, _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    assert out == seq[3:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_linears_give_the_unpacked_logits(dtype, monkeypatch):
    """generate() prepacks CPU weights for oneDNN: same logits (up to summation order) at one
    row and at several, nothing added to the state dict, copies work, a stale pack is unused."""
    import copy

    from gptcli import kernels

    # the test model's fp32 matrices are below the size that prepacks by default
    monkeypatch.setattr(kernels, "FP32_PREPACK_MIN", 0)
    model = make().to(dtype)
    ids = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(1))
    keys = list(model.state_dict())
    reference, _ = model(ids)  # gradients on: the plain F.linear path
    model.prepack()
    # oneDNN packs bf16 only with AVX-512 or AVX-NE-CONVERT; elsewhere bf16 stays on F.linear
    can_pack = dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert (model.lm_head.packed is not None) == can_pack
    with torch.inference_mode():
        packed, _ = model(ids)
        one, _ = model(ids[:1, :1])
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(packed, reference, atol=tol, rtol=tol)
    torch.testing.assert_close(one[0, -1], reference[0, 0], atol=tol, rtol=tol)
    assert list(model.state_dict()) == keys
    assert copy.deepcopy(model).lm_head.packed is None
    with torch.inference_mode():
        other = torch.bfloat16 if dtype == torch.float32 else torch.float32
        model.to(other)  # new weights: the old pack must not be used
        moved, _ = model(ids)
    assert moved.dtype == other
    torch.testing.assert_close(moved.float(), reference.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_generation_past_the_context_is_exact_to_the_sliding_window(positions):
    model = make(positions=positions)
    out = tokens(model, [1, 2], SampleConfig(max_new_tokens=40, temperature=0))
    window, expected = [1, 2], []  # reference: a full forward over the current window
    for _ in range(40):
        logits, _ = model(torch.tensor([window]))
        expected.append(int(logits[0, -1].argmax()))
        window = window + expected[-1:]
        if len(window) > 16:  # full: keep the newest block_size/2
            window = window[-8:]
    assert out == expected


def test_same_seed_same_tokens_other_seed_differs():
    model = make()
    params = SampleConfig(max_new_tokens=12, temperature=1.0, top_k=0)
    a = tokens(model, [5], params, seed=7)
    b = tokens(model, [5], params, seed=7)
    c = tokens(model, [5], params, seed=8)
    assert a == b and a != c


def test_eos_stops_generation():
    model = make()
    greedy = SampleConfig(max_new_tokens=5, temperature=0)
    first = tokens(model, [1], greedy)[0]
    assert tokens(model, [1], greedy, eos_id=first) == []


def test_sampled_tokens_stay_inside_top_k():
    model = make()
    logits, _ = model(torch.tensor([[3]]))
    allowed = set(torch.topk(logits[0, -1], 3).indices.tolist())
    params = SampleConfig(max_new_tokens=1, temperature=2.0, top_k=3)
    seen = {tokens(model, [3], params, seed=s)[0] for s in range(40)}
    assert seen <= allowed and len(seen) > 1


def test_rows_of_a_request_finish_on_their_own():
    model = make()
    params = SampleConfig(max_new_tokens=30, temperature=1.5, top_k=0)
    (evs,) = events(model, Request([1], params, 3, 4, frozenset({7})))
    rows = rows_of(evs, 4)
    finishes = {e.row: e for e in evs if isinstance(e, Finish)}
    assert len({tuple(r) for r in rows}) > 1  # rows sample independently
    for row, ids in enumerate(rows):  # a row ends at its eos (not counted) or at the limit
        assert 7 not in ids
        assert finishes[row].reason == ("length" if len(ids) == 30 else "eos")
        assert finishes[row].tokens == len(ids)
    solo = tokens(model, [1], SampleConfig(max_new_tokens=30, temperature=0))
    (evs,) = events(model, Request([1], SampleConfig(30, 0), None, 3))
    assert rows_of(evs, 3)[1] == solo  # greedy rows of a request equal a request of one


# --------------------------------------------------------------------------- continuous batching


def mixed_requests(count: int) -> list[Request]:
    """Requests of different prompts, lengths and settings: greedy, seeded sampling, filters,
    a repetition penalty, logprobs (for the margin of each greedy token)."""
    kinds = [
        SampleConfig(max_new_tokens=20, temperature=0),
        SampleConfig(max_new_tokens=25, temperature=1.0, top_k=0),
        SampleConfig(max_new_tokens=15, temperature=0.8, top_k=5, top_p=0.9),
        SampleConfig(max_new_tokens=30, temperature=0, repetition_penalty=1.3),
    ]
    return [
        Request([(7 * i + j) % 40 for j in range(1 + i % 9)], kinds[i % 4], seed=i, logprobs=2)
        for i in range(count)
    ]


def agree(alone: list, batched: list, greedy: bool) -> None:
    """Batching never changes an answer, except where the two likeliest tokens were (almost)
    tied: one row and many rows sum in different orders, so such a tie may flip."""
    pairs = [(e, f) for e, f in zip(alone, batched, strict=False) if isinstance(e, Piece)]
    for e, f in pairs:
        if e.ids != f.ids:
            top = sorted(e.logprobs[0]["top"].values(), reverse=True)
            assert greedy and top[0] - top[1] < 1e-4, (e, f)
            return
    assert alone[-1].reason == batched[-1].reason and alone[-1].tokens == batched[-1].tokens


@pytest.mark.parametrize("slots", [16, 5])
def test_sixteen_requests_together_give_the_answers_they_get_alone(slots):
    """With 16 slots all run at once; with 5 they queue and join as rows finish."""
    model = make(positions="rope")
    requests = mixed_requests(16)
    together = events(model, *requests, slots=slots)
    for request, batched in zip(requests, together, strict=True):
        (alone,) = events(model, request, slots=1)
        agree(alone, batched, request.params.temperature == 0)


def test_a_request_that_joins_is_answered_before_the_running_ones_finish():
    model = make(block_size=64)
    engine = Engine(model, TOK, 4, worker=True)
    order: list[str] = []  # long requests, as they finish
    first_piece = threading.Event()

    def sink(name):
        def record(event):
            if isinstance(event, Piece):
                first_piece.set()
            elif isinstance(event, Finish):
                order.append(name)

        return record

    long = SampleConfig(max_new_tokens=400, temperature=1.0, top_k=0)
    try:
        for i in range(3):
            engine.submit(Request([1, 2, 3], long, seed=i, ignore_eos=True), sink(f"long{i}"))
        assert first_piece.wait(30)
        short = Request([4, 5], SampleConfig(max_new_tokens=3, temperature=0))
        (finish,) = [e for e in engine.submit(short) if isinstance(e, Finish)]
        assert finish.tokens == 3 and order == []  # the long ones still run
    finally:
        engine.close()


def test_prompts_that_arrive_together_are_prefilled_in_one_forward(monkeypatch):
    """Requests waiting at once read their prompts in one forward (right-padded), also into
    slots that are not side by side while others decode, and answer as they do alone."""
    model = make(block_size=64)
    prefills: list[int] = []  # rows of each forward that reads more than one token per row
    hidden = model.hidden

    def counted(idx, *args, **kwargs):
        if idx.size(1) > 1:
            prefills.append(idx.size(0))
        return hidden(idx, *args, **kwargs)

    greedy = SampleConfig(max_new_tokens=12, temperature=0)
    sampled = SampleConfig(max_new_tokens=12, temperature=1.0, top_k=0)
    first = [Request([1, 2, 3], greedy, logprobs=2), Request([4, 5, 6, 7, 8], sampled, seed=3)]
    later = [Request([9, 10, 11, 12], greedy, logprobs=2), Request([13, 14], sampled, seed=4)]
    alone = [events(model, r, slots=1)[0] for r in first + later]
    monkeypatch.setattr(model, "hidden", counted)
    engine = Engine(model, TOK, 4)
    try:
        handles = [engine.submit(first[0]), engine.submit(Request([20], SampleConfig(1, 0)))]
        handles.append(engine.submit(first[1]))
        while engine.rows[1] is not None or engine.rows[0] is None or not engine.rows[0].count:
            engine.pump()  # slot 1's one-token request is done; slots 0 and 2 decode
        assert prefills == [3]  # the prompts of 3, 1 and 5 tokens, in one forward
        handles += [engine.submit(r) for r in later]  # into slots 1 and 3
        together = [list(h) for h in handles]
    finally:
        engine.close()
    assert prefills == [3, 2]
    for request, one, batched in zip(
        first + later, alone, together[:1] + together[2:], strict=True
    ):
        agree(one, batched, request.params.temperature == 0)


def test_a_cancelled_request_frees_its_slot_for_the_next():
    """One slot: an endless request is abandoned; the next request is answered at once."""
    model = make(block_size=32)
    engine = Engine(model, TOK, 1)
    huge = Request([1], SampleConfig(max_new_tokens=10**9, temperature=1.0), ignore_eos=True)
    try:
        handle = engine.submit(huge)
        next(iter(handle))  # it runs
        handle.cancel()
        started = time.perf_counter()
        (evs,) = [list(engine.submit(Request([2], SampleConfig(5, 0))))]
        assert isinstance(evs[-1], Finish) and evs[-1].tokens == 5
        assert evs[-1].queued_s < time.perf_counter() - started + 1e-9
        assert engine.stats() == {"slots": 1, "running": 0, "waiting": 0}
    finally:
        engine.close()


def test_a_time_limit_ends_a_request_with_what_it_has():
    model = make(block_size=32)
    params = SampleConfig(max_new_tokens=10**9, temperature=1.0)
    (evs,) = events(model, Request([1], params, seed=0, ignore_eos=True, timeout_s=0.3))
    assert evs[-1].reason == "length" and evs[-1].tokens == len(rows_of(evs)[0]) > 0


def test_without_the_slide_a_row_ends_at_the_context():
    model = make()  # block_size 16
    params = SampleConfig(max_new_tokens=100, temperature=0)
    (evs,) = events(model, Request([1, 2, 3], params, ignore_eos=True, slide=False))
    assert evs[-1].reason == "length" and evs[-1].tokens == 16 - 3 + 1


def test_without_a_worker_the_readers_run_the_model_and_get_the_same_answers():
    """sample, chat and eval step the engine on the thread that reads the events; readers on
    two threads take turns, and each gets what a worker thread would have given it."""
    model = make(block_size=64)
    params = SampleConfig(max_new_tokens=40, temperature=1.0)
    requests = [Request([1 + i, 2], params, seed=i, n=2, ignore_eos=True) for i in range(3)]
    answers = {}
    for worker in (True, False):
        engine = Engine(model, TOK, 6, worker=worker)
        handles = [engine.submit(r) for r in requests]
        got = [None] * 3

        def read(i, handles=handles, got=got):
            got[i] = rows_of(list(handles[i]), 2)

        readers = [threading.Thread(target=read, args=(i,)) for i in (1, 2)]
        for t in readers:
            t.start()
        read(0)
        for t in readers:
            t.join(30)
        assert engine.thread is None if not worker else engine.thread.is_alive()
        engine.close()
        answers[worker] = got
    assert answers[False] == answers[True]
    assert all(len(row) == 40 for rows in answers[False] for row in rows)


def test_a_request_needs_its_rows_to_fit():
    engine = Engine(make(), TOK, 2)
    with pytest.raises(ValueError, match="slots"):
        engine.submit(Request([1], SampleConfig(), n=3))
    with pytest.raises(ValueError, match="1 matchers for n=2"):
        engine.submit(Request([1], SampleConfig(), n=2, matchers=[Only({5})]))
    engine.close()


# --------------------------------------------------------------------------- structured output


class Only:
    """A stand-in for constrain.Matcher: allows the tokens in `allowed`, only the end token
    once `end_at` are taken, is done after `done_after`, and fails at its `fail_at`th mask."""

    def __init__(self, allowed, end=None, end_at=10**9, done_after=10**9, fail_at=None):
        self.allowed, self.end, self.end_at = set(allowed), end, end_at
        self.done_after, self.fail_at = done_after, fail_at
        self.taken: list[int] = []

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.fail_at is not None and len(self.taken) == self.fail_at:
            raise RuntimeError("constraint matcher failed: too complex")
        ok = {self.end} if len(self.taken) >= self.end_at else self.allowed
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[list(ok)] = True
        return logits.masked_fill(~keep, float("-inf"))

    def advance(self, token: int) -> None:
        assert token in self.allowed, token  # the engine never advances by the end token
        self.taken.append(token)

    def is_done(self) -> bool:
        return len(self.taken) >= self.done_after


def test_a_constraint_acts_before_the_controls_and_ends_its_rows():
    """Every token of a constrained row is allowed (top-k and the penalty act within the set);
    the row stops when its matcher is done, or on an end token it allowed ("stop" either way,
    never "eos"), and a row cut by max_new_tokens first is "length"."""
    model = make()
    params = SampleConfig(max_new_tokens=12, temperature=1.0, top_k=2, repetition_penalty=1.5)
    done = [Only({5, 6, 7}, done_after=4) for _ in range(3)]
    ended = Only({8, 9}, end=3, end_at=2)
    cut = Only({10, 11}, done_after=50)
    (a, b, c) = events(
        model,
        Request([1], params, 0, 3, frozenset({3}), matchers=done),
        Request([2], params, 1, 1, frozenset({3}), matchers=[ended]),
        Request([2], params, 2, 1, frozenset({3}), matchers=[cut]),
    )
    for row, taken in enumerate(rows_of(a, 3)):
        assert len(taken) == 4 and set(taken) <= {5, 6, 7} and taken == done[row].taken
    assert [e.reason for e in a if isinstance(e, Finish)] == ["stop"] * 3
    assert set(rows_of(b)[0]) <= {8, 9} and b[-1].reason == "stop" and b[-1].tokens == 2
    assert set(rows_of(c)[0]) <= {10, 11} and c[-1].reason == "length" and c[-1].tokens == 12


def test_a_failing_constraint_ends_only_its_own_request():
    model = make()
    params = SampleConfig(max_new_tokens=10, temperature=0)
    plain = Request([1, 2], params)
    (alone,) = events(model, plain)
    engine = Engine(model, TOK, 3)
    try:
        matchers = [Only({5}, fail_at=3) for _ in range(2)]
        failing = engine.submit(Request([1], params, n=2, matchers=matchers))
        beside = engine.submit(plain)
        with pytest.raises(RuntimeError, match="too complex"):
            list(failing)
        assert rows_of(list(beside)) == rows_of(alone)
        assert engine.stats()["running"] == 0
    finally:
        engine.close()
