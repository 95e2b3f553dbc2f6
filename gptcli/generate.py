"""`gptcli sample`: continuations of prompts, or a classifier's label distributions.

Prompts (one, a file's, or every line of stdin as it arrives) go to the inference engine, where
they run side by side in its slots; results come back in input order. One sample of one prompt
streams its text as it is generated. Under a constraint (structured output) every sample has
its own matcher, and one cut by --max-new-tokens is named on stderr.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from gptcli import checkpoint, console, constrain, load
from gptcli.console import UserError
from gptcli.constrain import Constraint
from gptcli.device import pick_device
from gptcli.engine import (
    Engine,
    Finish,
    Handle,
    LoadedModel,
    Piece,
    Request,
    build,
    check_model,
    default_slots,
    pick_dtype,
)
from gptcli.recipe import SampleConfig
from gptcli.tasks import classify


def prompt_request(
    lm: LoadedModel,
    prompt: str,
    params: SampleConfig,
    seed: int | None,
    n: int,
    chat: bool,
    matchers: list[constrain.Matcher] | None = None,
) -> Request:
    """A prompt as the model reads it: after <|endoftext|>, or (chat) in the chat template."""
    ids = lm.chat_ids([{"role": "user", "content": prompt}]) if chat else lm.text_ids(prompt)
    if len(ids) > lm.block:
        console.warn(
            f"the prompt has {len(ids)} tokens, more than the context ({lm.block}); "
            f"keeping the last {lm.block}"
        )
    return Request(ids, params, seed, n, lm.enders(chat), matchers=matchers)


def in_order(
    engine: Engine, prompts: Iterable[str], request_of: Callable[[str], Request], limit: int
) -> Iterator[tuple[str, Handle]]:
    """Submit prompts as they arrive (a thread reads them, so a slow stdin never holds back an
    answer), at most limit at a time, and yield each with its handle in input order."""
    submitted: queue.SimpleQueue = queue.SimpleQueue()
    room = threading.Semaphore(limit)
    end = object()

    def feed() -> None:
        try:
            for prompt in prompts:
                room.acquire()
                submitted.put((prompt, engine.submit(request_of(prompt))))
        except BaseException as e:  # noqa: BLE001 - raised again on the caller's side
            submitted.put(e)
        submitted.put(end)

    threading.Thread(target=feed, name="gptcli-prompts", daemon=True).start()
    while True:
        try:  # a timeout keeps signals deliverable while waiting
            item = submitted.get(timeout=0.25)
        except queue.Empty:
            continue
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
        room.release()


def collect(
    handle: Handle, prompt: str, chat: bool, live: Callable[[str], None] | None
) -> list[dict]:
    """One prompt's samples, as result dicts; live (one sample only) gets the prompt (unless
    the output is a chat reply or constrained: then it stands alone) and then each piece of
    text as it becomes final."""
    n = handle.request.n
    texts, reasons, counts = [""] * n, ["length"] * n, [0] * n
    seconds = [1e-9] * n
    if live is not None and not chat and handle.request.matchers is None:
        live(prompt)
    max_tokens = handle.request.params.max_new_tokens
    with console.progress(enabled=live is None) as bar:
        task = bar.add_task("sample", total=max_tokens * n)
        for event in handle:
            if isinstance(event, Piece):
                texts[event.row] += event.text
                bar.advance(task, len(event.ids))
                if live is not None and event.text:
                    live(event.text)
            elif isinstance(event, Finish):
                reasons[event.row], counts[event.row] = event.reason, event.tokens
                seconds[event.row] = max(event.elapsed_s - event.queued_s, 1e-9)
    return [
        {
            "prompt": prompt,
            "text": texts[row],
            "tokens": counts[row],
            "finish_reason": reasons[row],
            "tokens_per_s": round(counts[row] / seconds[row], 1),
            **({"chat": True} if chat else {}),
        }
        for row in range(n)
    ]


def check_classifier_use(ckpt: Path, picked: bool, flags: list[str]) -> None:
    """A classifier answers with label probabilities: it is never picked for sampling without
    being named, and sampling flags, which it would ignore, are refused."""
    if picked:
        raise UserError(
            f"the newest checkpoint under ./runs, {ckpt}, is a classifier, not a language "
            "model: pick a language model with -c PATH, or name the classifier with -c to "
            "classify text"
        )
    if flags:
        raise UserError(
            f"{flags[0]} does not apply to {ckpt}: it is a classifier (it prints label "
            "probabilities); drop the sampling flags, or pick a language model with -c PATH"
        )


def run(
    checkpoint_path: str | None,
    prompts: Iterable[str],
    overrides: dict[str, object],
    seed: int | None = None,
    num_samples: int = 1,
    dtype: str = "auto",
    on_text: Callable[[str], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
    chat: bool | None = None,
    parallel: int | None = None,
    constraint: Constraint | None = None,
) -> list[dict]:
    """`gptcli sample`: load a checkpoint once, then sample every prompt (lazily consumed, so
    stdin lines are answered as they arrive; up to `parallel` rows decode together, default:
    the device's). on_result receives each sample's result dict, in input order.

    A classifier checkpoint answers each input line with its label distribution instead; an
    SFT checkpoint applies its chat template unless chat is False. Under a constraint every
    sample is output it allows."""
    ckpt = load.resolve(checkpoint_path)
    constrain.check_stop(constraint, overrides.get("stop"), "--stop")
    if num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {num_samples}")
    if parallel is not None and parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {parallel}")
    if parallel is not None and num_samples > parallel:
        raise UserError(
            f"--num-samples {num_samples} needs {num_samples} rows at once but --parallel is "
            f"{parallel}: raise --parallel or lower --num-samples"
        )
    device = pick_device("auto")
    pick_dtype(dtype, device)  # a bad --dtype fails before anything loads
    kind = checkpoint.read_info(ckpt)["task"].get("kind", "lm")
    if kind == "classify":
        given = [f"--{key.replace('_', '-')}" for key, v in overrides.items() if v is not None]
        given += ["--num-samples"] * (num_samples != 1) + ["--seed"] * (seed is not None)
        given += [constraint.flag] if constraint is not None else []
        check_classifier_use(ckpt, checkpoint_path is None, given + ["--chat"] * bool(chat))
    elif chat and kind != "sft":
        raise UserError(f"--chat: {ckpt} has no chat template (it is not an SFT checkpoint)")
    one_prompt = isinstance(prompts, list) and len(prompts) <= 1
    slots = parallel or (num_samples if one_prompt else max(num_samples, default_slots(device)))
    flag = "--parallel" if parallel else "--num-samples"
    checked = check_model(checkpoint_path, "sample", overrides, dtype, slots, flag, classifier=True)
    lm = build(checked)
    if lm.kind == "classify":
        return classify.classify_run(lm.source, lm.tok, lm.model, prompts, on_result)
    chat = lm.kind == "sft" if chat is None else chat
    live = on_text if num_samples == 1 else None
    params = constrain.without_stops(lm.defaults, constraint)
    compilers = constrain.Compilers(lm.tok, lm.model.cfg.vocab_size)

    def request_of(prompt: str) -> Request:
        matchers = None
        if constraint is not None:
            matchers = compilers.matchers(constraint, num_samples, chat)
        return prompt_request(lm, prompt, params, seed, num_samples, chat, matchers)

    engine = Engine(lm.model, lm.tok, slots)
    results = []
    try:
        requests = in_order(engine, prompts, request_of, max(1, slots // num_samples) + 1)
        for prompt, handle in requests:
            for row, result in enumerate(collect(handle, prompt, chat, live)):
                result = {"checkpoint": str(lm.ckpt), "dtype": lm.dtype, **result}
                results.append(result)
                if on_result is not None:
                    on_result(result)
                if handle.request.matchers:
                    which = f"sample {row + 1} of {prompt[:40]!r}"
                    which = "the output" if one_prompt and num_samples == 1 else which
                    matcher, reason = handle.request.matchers[row], result["finish_reason"]
                    constrain.warn_if_cut(matcher, reason, which, params.max_new_tokens)
    finally:
        engine.close()
    return results
