"""`gptcli eval`: lm-evaluation-harness tasks through gptcli's own LM, checked against the
harness's hf backend on the exported folder; run folders keep results; offline and missing-extra
errors are one line."""

import json

import pytest
from conftest import REPO, assert_one_line_error, gptcli, gptcli_without, write_recipe

pytest.importorskip("lm_eval")

BUNDLED = REPO / "gptcli" / "recipes" / "eval"
SST2_DEV = REPO.parent / "shared" / "data" / "classify" / "sst2_dev.jsonl"


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No network and an empty HF cache: the tasks must read local files."""
    home = tmp_path_factory.mktemp("hf-home")
    return {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}


def _eval(*args, env, cwd=REPO):
    """gptcli eval from the checkout (the bundled tasks read ../shared/data from there)."""
    return gptcli("eval", *args, "--dtype", "fp32", "--quiet", cwd=cwd, env=env)


def _loglikelihoods(samples: list[dict]) -> dict[int, list[float]]:
    return {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in samples}


def _hf_backend(folder, task, limit, add_bos_token, monkeypatch, offline):
    """The harness's own hf backend on an exported folder, fp32, same batch size."""
    for key, value in offline.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO)
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(
        pretrained=str(folder),
        dtype="float32",
        batch_size=8,
        device="cpu",
        add_bos_token=add_bos_token,
    )
    # the request tokens: <|endoftext|> first exactly when asked for, whatever the tokenizer
    # itself would add, so both sides score the same sequences
    eot = lm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert (lm.tok_encode("Review: fine")[0] == eot) is add_bos_token
    assert lm.prefix_token_id == eot
    manager = TaskManager(include_path=str(BUNDLED), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=lm, tasks=[task], limit=limit, log_samples=True, task_manager=manager
    )


def test_parity_with_the_harness_hf_backend(trained_copy, tmp_path, monkeypatch, offline):
    """Same checkpoint in fp32: the same accuracy and loglikelihoods within 1e-4 as lm-eval's
    hf backend on `gptcli export --format hf` (multiple choice with <|endoftext|> first,
    perplexity with the backend's own prefix token); an HF folder's result goes to --out only."""
    run = trained_copy / "runs" / "mini"  # eval writes its result into the run folder
    hf = tmp_path / "hf"
    proc = gptcli("export", str(run), "--format", "hf", "--out", str(hf), cwd=trained_copy)
    assert proc.returncode == 0, proc.stderr

    proc = _eval(str(run), "-t", "gptcli_sst2", "--limit", "24", "--batch-size", "8",
                 "--log-samples", "--json", env=offline)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)
    theirs = _hf_backend(hf, "gptcli_sst2", 24, True, monkeypatch, offline)
    acc = theirs["results"]["gptcli_sst2"]["acc,none"]
    assert ours["results"][0]["metric"] == "acc" and ours["results"][0]["value"] == round(acc, 6)
    a, b = (
        _loglikelihoods(ours["samples"]["gptcli_sst2"]),
        _loglikelihoods(theirs["samples"]["gptcli_sst2"]),
    )
    assert a.keys() == b.keys() and len(a) == 24
    assert max(abs(x - y) for k in a for x, y in zip(a[k], b[k], strict=True)) < 1e-4

    out = tmp_path / "shakespeare.json"
    proc = _eval(str(hf), "-t", "gptcli_shakespeare", "--limit", "3", "--batch-size", "8",
                 "--log-samples", "--out", str(out), env=offline)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "bits_per_byte" in proc.stdout  # the table
    assert not (hf / "eval").exists()  # an HF folder is not a run: nothing written into it
    ours = json.loads(out.read_text())
    theirs = _hf_backend(hf, "gptcli_shakespeare", 3, False, monkeypatch, offline)
    a = {s["doc_id"]: float(s["filtered_resps"][0]) for s in ours["samples"]["gptcli_shakespeare"]}
    b = {
        s["doc_id"]: float(s["filtered_resps"][0]) for s in theirs["samples"]["gptcli_shakespeare"]
    }
    assert a.keys() == b.keys() and len(a) == 3
    assert max(abs(a[k] - b[k]) for k in a) < 1e-4


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_choices_after_one_context_score_as_if_each_ran_alone(positions):
    """Requests are grouped (one run of a shared context, rows packed, contexts cut to the
    block): each one's loglikelihood and greediness are those of its own sequence run alone."""
    import random

    import torch

    from gptcli.eval import GptcliLM
    from gptcli.model import GPT
    from gptcli.recipe import ModelConfig

    class Tok:  # only the end token's id is read
        def token_to_id(self, token):
            return 0

    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50,
                      positions=positions)  # fmt: skip
    model = GPT(cfg).eval()
    lm = GptcliLM(model, Tok(), batch_size=3)
    rng = random.Random(0)
    requests = []
    for _ in range(12):
        context = [rng.randrange(50) for _ in range(rng.randint(1, 20))]
        for _ in range(rng.randint(1, 4)):  # choices, some longer than a token
            requests.append((None, context, [rng.randrange(50) for _ in range(rng.randint(1, 4))]))
    requests.append((None, [1, 2, 3], [4]))  # a greedy one: its token is the likeliest
    with torch.inference_mode():
        requests[-1] = (None, [1, 2, 3], [int(model(torch.tensor([[1, 2, 3]]))[0][0, -1].argmax())])
        scores = lm._loglikelihood_tokens(requests, disable_tqdm=True)
        for (_, context, continuation), (logprob, greedy) in zip(requests, scores, strict=True):
            full = (context + continuation)[-(cfg.block_size + 1) :]
            n = len(continuation)
            logits, _ = model(torch.tensor([full[:-1]]))
            alone = logits[0, -n:].log_softmax(-1)
            target = torch.tensor(full[-n:])
            assert logprob == pytest.approx(alone[range(n), target].sum().item(), abs=1e-4)
            assert greedy == bool((alone.argmax(-1) == target).all())
    assert scores[-1][1]


def test_lora_checkpoint_limit_json_and_the_run_folder(trained, offline):
    """A LoRA checkpoint (adapters merged on load): --limit caps the examples, --json prints
    the result the run folder keeps in eval/, and inspect RUN lists it."""
    lora_recipe = (
        "name: mini-lora\ninit: runs/mini\ntask: lm\n"
        "data: {source: 'builtin:stories', builtin_mb: 0.05}\n"
        "train: {batch_size: 2, max_steps: 2, warmup_steps: 1, eval_every: 2, eval_batches: 1,"
        " save_every: 2, log_every: 1}\n"
        "finetune:\n  lora: {rank: 2, alpha: 4, targets: [qkv]}\n"
    )
    recipe = write_recipe(trained, lora_recipe, "mini-lora.yaml")
    proc = gptcli("finetune", str(recipe), "--quiet", cwd=trained)
    assert proc.returncode == 0, proc.stderr
    run = trained / "runs" / "mini-lora"
    proc = _eval(str(run), "-t", "gptcli_sst2", "--limit", "5", "--json", env=offline)
    assert proc.returncode == 0, proc.stderr
    assert "it/s]" not in proc.stderr  # --quiet: no progress bars, the harness's included
    result = json.loads(proc.stdout)
    assert "mini-lora" in result["model"]
    (row,) = result["results"]
    assert row["task"] == "gptcli_sst2" and row["n"] == 5 and 0 <= row["value"] <= 1
    (saved,) = (run / "eval").glob("*.json")
    assert json.loads(saved.read_text())["results"] == result["results"]
    assert result["saved"] == str(saved)
    info = json.loads(gptcli("inspect", str(run), "--json", cwd=trained).stdout)
    listed = {k: row[k] for k in ("task", "metric", "value", "stderr")}
    assert info["evals"] == [{"file": saved.name, "model": result["model"], "results": [listed]}]


def test_generation_task_and_the_offline_error(trained_copy, tmp_path, offline):
    """generate_until runs the sampler (greedy, cut at the stop string); a task whose data is
    on the Hub, offline with nothing cached, exits 2 naming the task and --include-path."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "gen.yaml").write_text(
        "task: gen_local\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {SST2_DEV}}}}}\n"
        "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{text}}'\n"
        "doc_to_target: ' positive'\n"
        "generation_kwargs: {until: ['.'], max_gen_toks: 6}\n"
        "metric_list: [{metric: exact_match}]\n"
    )
    (tasks / "hub.yaml").write_text(
        "task: hub_only\ndataset_path: someone/not-cached-anywhere\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: ['a', 'b']\ndoc_to_target: 0\n"
    )
    run = str(trained_copy / "runs" / "mini")  # eval writes its result into the run folder
    args = ("--include-path", str(tasks), "--limit", "2", "--log-samples", "--json")
    proc = _eval(run, "-t", "gen_local", *args, env=offline)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [r["metric"] for r in result["results"]] == ["exact_match"]
    texts = [s["resps"][0][0] for s in result["samples"]["gen_local"]]
    assert len(texts) == 2 and all(isinstance(t, str) and "." not in t for t in texts)
    assert any(texts)  # the model said something before stopping
    proc = _eval(run, "-t", "hub_only", "--include-path", str(tasks), env=offline)
    assert_one_line_error(proc, "hub_only", "--include-path")


def test_a_hub_task_with_the_hub_out_of_reach_fails_at_once(
    trained, tmp_path, unreachable, monkeypatch
):
    """Before the harness indexes its tasks and huggingface_hub retries for half a minute."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    endpoint = unreachable["does not resolve"]
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": endpoint}
    proc = _eval(str(trained / "runs" / "mini"), "--tasks", "hellaswag", env=env)
    assert_one_line_error(proc, "--tasks hellaswag", endpoint, "HF_HUB_OFFLINE=1")


def test_missing_extra_names_the_install_line(trained):
    run = str(trained / "runs" / "mini")
    proc = gptcli_without("lm_eval", "eval", run, "-t", "gptcli_sst2", cwd=REPO)
    assert_one_line_error(proc, "pip install 'gptcli[eval]'")


def test_dtype_auto_follows_the_forward_probe_of_the_models_shape(trained, monkeypatch):
    """auto as in sampling: bf16 where native, unless the cached probe of this model's shape at
    the batch size measures it slower (then fp32)."""
    import torch

    from gptcli import device
    from gptcli import engine as gen
    from gptcli.eval import load_model

    run, rows = str(trained / "runs" / "mini"), []
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(gen, "bf16_sampling_speedup", lambda cfg, n: rows.append(n) or 0.6)
    assert load_model(run, "cpu", "auto", False, 8).model.wte.weight.dtype == torch.float32
    monkeypatch.setattr(gen, "bf16_sampling_speedup", lambda cfg, n: 1.3)
    assert load_model(run, "cpu", "auto", False, 8).model.wte.weight.dtype == torch.bfloat16
    assert rows == [8]


def test_apply_chat_template_on_an_sft_checkpoint(chat_trained, tmp_path, offline):
    """--apply-chat-template wraps the prompt, its few-shot turns and the task's gen_prefix
    (a final assistant turn, left open for the answer) in the SFT template, whose special
    tokens reach the model as tokens; a checkpoint without the template exits 2."""
    import torch

    from gptcli.eval import GptcliLM, load_model
    from gptcli.tasks import sft

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shots, test = tasks / "shots.jsonl", tasks / "test.jsonl"
    shots.write_text(json.dumps({"q": "Count to 1.", "choices": ["1 2", "5 5"], "label": 0}))
    docs = [{"q": f"Count to {i}.", "choices": [f"{i} {i + 1}", "9 9"], "label": 0} for i in (3, 4)]
    test.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "chat.yaml").write_text(
        "task: chat_local\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {test}, train: {shots}}}}}\n"
        "output_type: multiple_choice\ntest_split: test\nfewshot_split: train\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "gen_prefix: 'Answer:'\nmetric_list: [{metric: acc}]\n"
    )
    args = ("-t", "chat_local", "--include-path", str(tasks), "--num-fewshot", "1")
    proc = _eval(str(chat_trained), *args, "--apply-chat-template", "--log-samples", "--json",
                 env=offline)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["settings"]["chat_template"] is True
    samples = result["samples"]["chat_local"]
    assert len(samples) == 2

    loaded = load_model(str(chat_trained), "cpu", "fp32", True)
    model, tok = loaded.model, loaded.tok
    lm = GptcliLM(loaded.model, tok, chat=True)
    for sample in samples:
        q = sample["doc"]["q"]
        context = {arg[0] for arg in sample["arguments"]}
        assert context == {
            "<|endoftext|><|user|>Count to 1.<|end|><|assistant|>Answer: 1 2<|end|>"
            f"<|user|>{q}<|end|><|assistant|>Answer:"
        }, context
        (context,) = context
        turns = [
            {"role": "user", "content": "Count to 1."},
            {"role": "assistant", "content": "Answer: 1 2"},
            {"role": "user", "content": q},
            {"role": "assistant", "content": "Answer:"},
        ]
        ids = sft.chat_ids(tok, turns)[0][:-1]  # the last turn without its <|end|>
        assert lm.tok_encode(context) == ids  # each special token read back as one token
        for (ctx, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            whole = lm.tok_encode(ctx + continuation)
            n = len(whole) - len(ids)
            window = whole[-(model.cfg.block_size + 1) :]  # as the harness cuts a long context
            with torch.inference_mode():
                logits, _ = model(torch.tensor([window[:-1]]))
            logprobs = logits[0, -n:].log_softmax(-1)
            expected = logprobs[range(n), torch.tensor(window[-n:])].sum().item()
            assert float(resp[0][0]) == pytest.approx(expected, abs=1e-4)

    base = str(chat_trained.parent / "mini")
    proc = _eval(base, *args, "--apply-chat-template", env=offline)
    assert_one_line_error(proc, "--apply-chat-template", "no chat template")
