"""Constrained decoding: whatever the model would say, the constraint makes the output parse.

The model here is a random tiny GPT over the shared trained run's tokenizer (its vocabulary
padded past the tokenizer's), so nothing but the constraint makes the samples valid; it samples
through the inference engine, each row with its own matcher, as every command does.
"""

import json
import re

import jsonschema
import pytest
import torch
from conftest import BOUNDED_SCHEMA as SCHEMA
from conftest import SCHEMA_BUDGET as BUDGET
from conftest import assert_one_line_error, gptcli_without

from gptcli import constrain, tokenizer
from gptcli.console import UserError
from gptcli.engine import Engine, Finish, Piece, Request
from gptcli.model import GPT
from gptcli.recipe import ModelConfig, SampleConfig
from gptcli.tasks import base, sft

pytest.importorskip("llguidance")

PAD = 48  # model ids past the tokenizer's: padding, never allowed


@pytest.fixture(scope="module")
def tok(trained):
    return tokenizer.load(trained / "runs" / "mini" / tokenizer.TOKENIZER_FILE)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    vocab = tok.get_vocab_size() + PAD
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=BUDGET + 8, vocab_size=vocab)
    return GPT(cfg).eval()


@pytest.fixture(scope="module")
def compiler(tok, model):
    return constrain.Compiler(tok, model.cfg.vocab_size, constrain.end_ids(tok, chat=False))


def sample(model, compiler, tok, constraint, rows=50, params=None, budget=BUDGET):
    """rows samples of one request under the constraint, a matcher per row, through the engine
    (mask, then the sampling controls, then advance). Returns the texts and how many rows the
    budget cut ("length"); a row that ends otherwise ends "stop", its output complete."""
    params = params or SampleConfig(temperature=1.0, top_k=0)
    params = SampleConfig(**{**params.__dict__, "max_new_tokens": budget})
    matchers = compiler.matchers(constraint, rows)
    request = Request(
        [compiler.end_ids[0]], params, 0, rows, frozenset(compiler.end_ids), matchers=matchers
    )
    engine = Engine(model, tok, rows)
    try:
        evs = list(engine.submit(request))
    finally:
        engine.close()
    ids = [[] for _ in range(rows)]
    for e in evs:
        if isinstance(e, Piece):
            ids[e.row] += e.ids
    assert max(i for row in ids for i in row) < tok.get_vocab_size()  # never a padding id
    reasons = {e.row: e.reason for e in evs if isinstance(e, Finish)}
    assert set(reasons.values()) <= {"stop", "length"}  # an end token is a "stop" here
    for row, reason in reasons.items():
        assert (reason == "stop") == matchers[row].is_accepting(), (row, reason)
    return [tokenizer.decode(tok, row) for row in ids], sum(r == "length" for r in reasons.values())


def test_schema_samples_all_parse_and_validate(model, compiler, tok):
    texts, cut = sample(model, compiler, tok, constrain.json_schema(SCHEMA, "test"))
    assert cut == 0
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 40  # the model still chooses: 50 different answers
    assert texts[0].startswith('{"name": "')  # the layout json.dumps writes


def test_regex_and_choice_samples_all_match(model, compiler, tok):
    texts, cut = sample(model, compiler, tok, constrain.regex("[a-z]{1,8}", "--regex"))
    assert cut == 0 and all(re.fullmatch("[a-z]{1,8}", t) for t in texts), texts
    options = ["yes", "no", "maybe so", "café"]
    texts, cut = sample(model, compiler, tok, constrain.choice(options, "--choice"))
    assert cut == 0 and set(texts) <= set(options) and len(set(texts)) > 1, texts


@pytest.mark.parametrize(
    "params",
    [
        SampleConfig(temperature=0.0),
        SampleConfig(temperature=1.5, top_k=5, top_p=0.5, min_p=0.1, repetition_penalty=1.5),
    ],
    ids=["greedy", "every-control"],
)
def test_sampling_controls_act_within_the_allowed_set(model, compiler, tok, params):
    texts, cut = sample(model, compiler, tok, constrain.json_schema(SCHEMA, "t"), 8, params)
    assert cut == 0
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_a_cut_row_is_reported_unfinished(model, compiler, tok):
    texts, cut = sample(model, compiler, tok, constrain.json_schema(SCHEMA, "t"), 4, budget=5)
    assert cut == 4 and all(len(t) < 40 for t in texts)


def test_end_tokens_padding_and_completion(compiler, tok):
    vocab, end = tok.get_vocab_size(), compiler.end_ids[0]
    m = compiler.matcher(constrain.choice(["yes", "no"], "t"))
    assert not m.allowed()[vocab:].any()  # padding ids
    assert not m.allowed()[end]  # nothing is complete yet
    for t in tok.encode("yes").ids:
        assert not m.is_done()
        m.advance(t)
    assert m.is_done() and m.allowed().nonzero().view(-1).tolist() == [end]
    logits = m.apply(torch.zeros(compiler.vocab_size))
    assert logits[end] == 0 and torch.isinf(logits).sum() == compiler.vocab_size - 1

    m = compiler.matcher(constrain.regex("[a-z]{1,8}", "t"))
    m.advance(tok.encode("a").ids[0])
    assert m.is_accepting() and not m.is_done() and m.allowed()[end]  # may end, or go on
    with pytest.raises(RuntimeError, match="outside the constraint"):
        m.advance(tok.encode("7").ids[0])


def test_chat_replies_end_with_the_template_end_token(trained):
    tok = tokenizer.load(trained / "runs" / "mini" / tokenizer.TOKENIZER_FILE)
    base.add_special_tokens(tok, sft.CHAT_TOKENS)
    end = tok.token_to_id(sft.END)
    assert constrain.end_ids(tok, chat=True) == [end]
    compiler = constrain.Compiler(tok, tok.get_vocab_size(), [end])
    m = compiler.matcher(constrain.json_object("t"))
    for t in tok.encode("{}").ids:
        m.advance(t)
    assert m.allowed().nonzero().view(-1).tolist() == [end]  # not <|endoftext|>, no role token
    no_chat = tokenizer.load(trained / "runs" / "mini" / tokenizer.TOKENIZER_FILE)
    with pytest.raises(UserError, match="not a chat model"):
        constrain.end_ids(no_chat, chat=True)


@pytest.mark.parametrize("pool", [False, True], ids=["one-by-one", "llguidance-pool"])
def test_batched_masks_match_each_rows_own(compiler, tok, monkeypatch, pool):
    if pool:  # the pool serves machines with 4+ threads; force it here
        monkeypatch.setattr(constrain, "PARALLEL_MIN_THREADS", 1)
    rows = [
        compiler.matcher(constrain.regex("[0-9]+", "t")),
        None,
        compiler.matcher(constrain.json_object("t")),
    ]
    rows[2].advance(tok.encode("{").ids[0])
    both = constrain.allowed_masks(rows, compiler.vocab_size, torch.device("cpu"))
    assert torch.equal(both[0], rows[0].allowed()) and torch.equal(both[2], rows[2].allowed())
    assert both[1].all()  # an unconstrained row keeps every token
    assert not torch.equal(both[0], both[2])
    logits = torch.randn(3, compiler.vocab_size)
    assert constrain.mask_logits(logits, [None, None, None]) is logits
    masked = constrain.mask_logits(logits, rows)
    for row in (0, 2):  # one row's own mask (what the engine applies) is the batch's row
        assert torch.equal(rows[row].apply(logits[row]), masked[row])
    with pytest.raises(ValueError, match="another vocabulary size"):
        constrain.mask_logits(logits[:, :-1], rows)
    with pytest.raises(ValueError, match="logits for a vocabulary of"):
        rows[0].apply(logits[0, :-1])


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda: constrain.regex("(?=a)b", "--regex"), ["--regex", "look-around", "Rust regex"]),
        (lambda: constrain.regex("(a)\\1", "--regex"), ["backreferences are not supported"]),
        (lambda: constrain.regex("[a-", "--regex"), ["unclosed character class"]),
        (lambda: constrain.json_schema({"if": {}}, "s.json"), ["s.json", "keyword 'if' is not"]),
        (lambda: constrain.json_schema({"type": "string", "format": "x"}, "s"), ["format: x"]),
        (lambda: constrain.json_schema({"type": "frob"}, "s"), ["Invalid type: frob"]),
        (lambda: constrain.json_schema({"if": {}, "not": {}}, "s"), ["keywords 'if', 'not' are"]),
        (lambda: constrain.json_schema([1], "s"), ["must be a JSON object, got an array"]),
        (
            lambda: constrain.json_schema({"minimum": 3, "maximum": 1, "type": "integer"}, "s"),
            ["minimum"],
        ),
        (lambda: constrain.choice([], "--choice"), ["non-empty strings"]),
        (lambda: constrain.choice(["a", 1], "--choice"), ["non-empty strings"]),
    ],
)
def test_invalid_constraints_are_refused_in_one_line(make, needles):
    with pytest.raises(UserError) as e:
        make()
    message = str(e.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_from_cli(tmp_path):
    assert constrain.from_cli() is None
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    c = constrain.from_cli(json_schema_file=str(schema))
    assert c.kind == "json_schema" and c.value == SCHEMA and str(schema) in c.where
    assert constrain.from_cli(json_object_flag=True).kind == "json_object"
    assert constrain.from_cli(regex_pattern="[a-z]+").value == "[a-z]+"
    assert constrain.from_cli(choices=["a", "b"]).value == ("a", "b")
    with pytest.raises(UserError, match="--json-object and --regex do not go together"):
        constrain.from_cli(json_object_flag=True, regex_pattern="a")
    with pytest.raises(UserError, match="not found"):
        constrain.from_cli(json_schema_file=str(tmp_path / "none.json"))
    schema.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        constrain.from_cli(json_schema_file=str(schema))


def test_from_request_reads_openai_and_vllm_fields():
    assert constrain.from_request({}) is None
    assert constrain.from_request({"response_format": {"type": "text"}}) is None
    got = constrain.from_request({"response_format": {"type": "json_object"}})
    assert got.kind == "json_object"
    spec = {"name": "person", "schema": SCHEMA, "strict": True}
    got = constrain.from_request({"response_format": {"type": "json_schema", "json_schema": spec}})
    assert got.kind == "json_schema" and got.value == SCHEMA
    assert (
        constrain.from_request({"structured_outputs": {"json": json.dumps(SCHEMA)}}).value == SCHEMA
    )
    assert constrain.from_request({"structured_outputs": {"regex": "[0-9]+"}}).kind == "regex"
    assert constrain.from_request({"structured_outputs": {"choice": ["a", "b"]}}).kind == "choice"
    assert (
        constrain.from_request({"structured_outputs": {"json_object": True}}).kind == "json_object"
    )


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": "json"}, "expected an object, got a string"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"if": {}}}}},
            "response_format.json_schema.schema: the schema is not usable: JSON Schema keyword",
        ),
        ({"structured_outputs": {"grammar": "start: x"}}, "structured_outputs.grammar is not"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "give one of regex, choice"),
        ({"structured_outputs": {"json": "{bad"}}, "structured_outputs.json: not valid JSON"),
        ({"structured_outputs": {"regex": "(?<=a)"}}, "structured_outputs.regex"),
        ({"response_format": {"type": "json_object"}, "structured_outputs": {}}, "not both"),
    ],
)
def test_bad_request_fields_are_named(body, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        constrain.from_request(body)


def test_without_the_extra_a_constraint_exits_2_with_the_install_line(trained):
    """Without llguidance, sampling and chatting still work; asking for a constraint exits 2
    naming the extra, before the model loads."""
    args = ("-c", "runs/mini", "--max-new-tokens", "2", "--prompt", "x")
    proc = gptcli_without("llguidance", "sample", *args, "--regex", "[a-z]+", cwd=trained)
    assert_one_line_error(proc, "needs llguidance", "pip install 'gptcli[structured]'")
    proc = gptcli_without("llguidance", "sample", *args, cwd=trained)
    assert proc.returncode == 0, proc.stderr
