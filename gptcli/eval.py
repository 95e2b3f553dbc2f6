"""`gptcli eval`: lm-evaluation-harness tasks on any model gptcli reads, through our own `LM`.

The harness builds the requests (few-shot prompts, choices, metrics); GptcliLM answers them with
gptcli's model: loglikelihoods with each context run once for all its choices, in length-sorted
batches of packed rows that run the LM head only where a continuation is scored; rolling windows
for perplexity; and the sampler (KV cache, stop strings) for generation. Every request starts
with <|endoftext|>, as every training document did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptcli import __version__, console, hf_format, tokenizer
from gptcli.console import UserError
from gptcli.data import hub
from gptcli.device import dtype_name
from gptcli.engine import Engine, LoadedModel, Piece, Request, build, check_model
from gptcli.files import write_atomic
from gptcli.model import GPT
from gptcli.recipe import EOT, SampleConfig
from gptcli.tasks import sft
from gptcli.tasks.lm import bits_per_byte

try:  # the optional extra: run() names the install line when it is missing
    import lm_eval
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:
    lm_eval = None
    TemplateLM = object

INSTALL = "pip install 'gptcli[eval]'"
# gptcli's own task definitions (local files, no download): always on the include path
BUNDLED_TASKS = Path(__file__).resolve().parent / "recipes" / "eval"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "bf16")
# resamples behind the stderr of metrics without a closed form (perplexity, bits per byte):
# the harness's default (100000) takes minutes on a CPU for the same two significant digits
BOOTSTRAP_ITERS = 1000


class Tree:
    """A context and the continuations scored after it, laid out as one sequence: the context
    once, then each distinct continuation's inputs, which see the context and themselves only."""

    def __init__(self, prefix: tuple[int, ...]) -> None:
        self.prefix = prefix
        self.branches: dict[tuple[int, ...], int] = {}  # inputs after the prefix -> their offset
        self.asked: list[tuple[int, tuple[int, ...], list[int]]] = []  # request, inputs, targets
        self.length = len(prefix)

    def add(self, request: int, inputs: tuple[int, ...], targets: list[int]) -> None:
        if inputs and inputs not in self.branches:
            self.branches[inputs] = self.length
            self.length += len(inputs)
        self.asked.append((request, inputs, targets))


def pack(queue: list[Tree], batch_size: int) -> tuple[list[list[Tree]], list[Tree]]:
    """The next batch of trees (queue: longest first): batch_size rows as long as the longest,
    each tree in the first row with room; and the trees left for later batches."""
    width = queue[0].length
    rows: list[list[Tree]] = []
    room: list[int] = []
    for k, tree in enumerate(queue):
        r = next((r for r, free in enumerate(room) if tree.length <= free), None)
        if r is None:
            if len(rows) == batch_size:
                return rows, queue[k:]
            rows.append([])
            room.append(width)
            r = len(rows) - 1
        rows[r].append(tree)
        room[r] -= tree.length
    return rows, []


class Batch:
    """The tensors of one batch of packed trees, and where each request's tokens are scored:
    (rows_at, cols_at) the distinct positions, and per scored token its position (picked),
    target and request (owner, counted from 0 in this batch)."""

    def __init__(self, rows: list[list[Tree]]) -> None:
        width = max(sum(tree.length for tree in row) for row in rows)
        self.packed = any(len(row) > 1 or len(row[0].branches) > 1 for row in rows)
        tokens, positions = [[0] * width for _ in rows], [[0] * width for _ in rows]
        segment, branch = [[-1] * width for _ in rows], [[0] * width for _ in rows]
        self.rows_at: list[int] = []
        self.cols_at: list[int] = []
        self.picked: list[int] = []
        self.targets: list[int] = []
        self.owner: list[int] = []
        self.n_asked = 0
        distinct: dict[tuple[int, int], int] = {}
        trees = 0
        for r, row in enumerate(rows):
            start = 0
            for tree in row:
                p = len(tree.prefix)
                tokens[r][start : start + p] = tree.prefix
                positions[r][start : start + p] = range(p)
                segment[r][start : start + tree.length] = [trees] * tree.length
                trees += 1
                for b, (inputs, offset) in enumerate(tree.branches.items(), 1):
                    at = slice(start + offset, start + offset + len(inputs))
                    tokens[r][at], branch[r][at] = inputs, [b] * len(inputs)
                    positions[r][at] = range(p, p + len(inputs))
                for _, inputs, targets in tree.asked:
                    cols = [start + p - 1]
                    if inputs:
                        at = start + tree.branches[inputs]
                        cols += range(at, at + len(inputs))
                    for col, target in zip(cols, targets, strict=True):
                        at = distinct.setdefault((r, col), len(distinct))
                        if at == len(self.rows_at):
                            self.rows_at.append(r)
                            self.cols_at.append(col)
                        self.picked.append(at)
                        self.targets.append(target)
                        self.owner.append(self.n_asked)
                    self.n_asked += 1
                start += tree.length
        self.tokens, self.positions = torch.tensor(tokens), torch.tensor(positions)
        self.segment, self.branch = torch.tensor(segment), torch.tensor(branch)

    def mask(self) -> torch.Tensor:
        """(B, 1, T, T): a token sees the earlier tokens of its own tree, except the inputs of
        the other continuations."""
        T = self.tokens.shape[1]
        earlier = torch.ones(T, T, dtype=torch.bool).tril()
        same_tree = self.segment[:, :, None] == self.segment[:, None, :]
        key_branch = self.branch[:, None, :]
        visible = (key_branch == 0) | (key_branch == self.branch[:, :, None])
        return (earlier & same_tree & visible)[:, None]


class GptcliLM(TemplateLM):
    """The harness's view of a gptcli model: it asks for loglikelihoods and generations."""

    def __init__(
        self, model: GPT, tok, batch_size: int = 16, chat: bool = False, seed: int = 0
    ) -> None:
        super().__init__()
        self.model, self.tok, self.batch_size, self.chat, self.seed = (
            model,
            tok,
            batch_size,
            chat,
            seed,
        )
        self.eot = tokenizer.eot_id(tok)
        self.block = model.cfg.block_size
        self.device_ = model.wte.weight.device

    @property
    def eot_token_id(self) -> int:
        return self.eot

    @property
    def tokenizer_name(self) -> str:
        return "gptcli-" + (sft.CHAT_TEMPLATE if self.chat else "plain")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return sft.CHAT_TEMPLATE if self.chat else None

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt=True) -> str:
        """The SFT template as text (its special tokens are read back as tokens); a final
        assistant message without a generation prompt stays open, as the harness prefills it."""
        ids, _ = sft.chat_ids(self.tok, chat_history, add_generation_prompt)
        if not add_generation_prompt and chat_history and chat_history[-1]["role"] == "assistant":
            ids = ids[:-1]
        return self.tok.decode(ids, skip_special_tokens=False)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list:
        """Ids of string after <|endoftext|> (unless add_special_tokens is False or the string
        already starts with it)."""
        ids = self.tok.encode(string, add_special_tokens=False).ids
        if add_special_tokens is False or string.startswith(EOT):
            return ids
        return [self.eot, *ids]

    # ----------------------------------------------------------------- loglikelihoods

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, greedy: bool = True, **kwargs
    ) -> list:
        """(key, context ids, continuation ids) -> (sum of logprobs, all greedy) each (the
        second always True when greedy is not asked for: perplexity does not read it).

        Requests after the same context (the choices of a question) share one tree: the context
        runs once. Trees run longest first, packed into rows as long as each batch's longest,
        so a batch pads little."""
        trees: list[Tree] = []
        growing: dict[tuple, Tree] = {}  # the tree that takes the next continuation of a context
        results: list[Any] = [None] * len(requests)
        for i, (_, context, continuation) in enumerate(requests):
            # the context is cut from the left so that the inputs fit the block
            full = (context + continuation)[-(self.block + 1) :]
            n = min(len(continuation), len(full) - 1)
            if n == 0:  # nothing to score
                results[i] = (0.0, True)
                continue
            prefix, inputs = tuple(full[: len(full) - n]), tuple(full[-n:-1])
            # sharing pays when the context is longer than what a continuation adds; a tree
            # stays within the block, so its attention costs no more than one sequence's
            key = prefix if len(inputs) <= len(prefix) else (prefix, inputs)
            tree = growing.get(key)
            if tree is None or tree.length + len(inputs) > self.block:
                tree = growing[key] = Tree(prefix)
                trees.append(tree)
            tree.add(i, inputs, full[-n:])
        queue = sorted(trees, key=lambda t: t.length, reverse=True)
        with torch.inference_mode(), console.progress(enabled=not disable_tqdm) as bar:
            task = bar.add_task("loglikelihood", total=len(requests))
            bar.advance(task, sum(r is not None for r in results))
            while queue:
                rows, queue = pack(queue, self.batch_size)
                asked = [i for row in rows for tree in row for i, _, _ in tree.asked]
                for i, score in zip(asked, self._score(rows, greedy), strict=True):
                    results[i] = score
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
                bar.advance(task, len(asked))
        return results

    def _score(self, rows: list[list[Tree]], greedy: bool) -> list[tuple[float, bool]]:
        """One right-padded batch of packed trees; every request's continuation is scored at
        its own positions, and the LM head and softmax run on those positions only."""
        batch = Batch(rows)
        positions, mask = None, None
        if batch.packed:  # plain rows (one sequence each) keep the causal fast path
            positions, mask = batch.positions.to(self.device_), batch.mask().to(self.device_)
        hidden = self.model.hidden(batch.tokens.to(self.device_), positions=positions, mask=mask)
        rows_at = torch.tensor(batch.rows_at, device=self.device_)
        cols_at = torch.tensor(batch.cols_at, device=self.device_)
        logprobs = self.model.lm_head(hidden[rows_at, cols_at]).float().log_softmax(-1)
        target = torch.tensor(batch.targets, device=logprobs.device)
        picked = torch.tensor(batch.picked, device=logprobs.device)
        token_lp = logprobs[picked, target]
        missed = torch.zeros_like(token_lp)
        if greedy:
            missed = (logprobs.argmax(-1)[picked] != target).float()
        owner = torch.tensor(batch.owner, device=logprobs.device)
        sums = torch.zeros(batch.n_asked, device=logprobs.device).index_add_(0, owner, token_lp)
        misses = torch.zeros(batch.n_asked, device=logprobs.device).index_add_(0, owner, missed)
        return [(lp, miss == 0) for lp, miss in zip(sums.tolist(), misses.tolist(), strict=True)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Perplexity: each text after <|endoftext|>, cut into windows of the context size
        (every token scored once, with as much preceding text as fits)."""
        windows, owners = [], []
        for k, (string,) in enumerate(req.args for req in requests):
            ids = self.tok.encode(string, add_special_tokens=False).ids
            for window in get_rolling_token_windows(ids, self.eot, self.block, 1):
                windows.append((None, *make_disjoint_window(window)))
                owners.append(k)
        totals = [0.0] * len(requests)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm, greedy=False)
        for k, (logprob, _) in zip(owners, scores, strict=True):
            totals[k] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ----------------------------------------------------------------- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (unless the task samples) until a stop string, the end token or max_gen_toks;
        the requests run side by side in the engine, batch_size rows at a time."""
        end = self.tok.token_to_id(sft.END) if self.chat else self.eot
        engine = Engine(self.model, self.tok, max(1, min(self.batch_size, len(requests))))
        out = []
        try:
            handles = [engine.submit(self.request(*req.args, end)) for req in requests]
            with console.progress(enabled=not disable_tqdm) as bar:
                task = bar.add_task("generate", total=len(requests))
                for req, handle in zip(requests, handles, strict=True):
                    text = "".join(e.text for e in handle if isinstance(e, Piece))
                    self.cache_hook.add_partial("generate_until", req.args, text)
                    out.append(text)
                    bar.advance(task)
        finally:
            engine.close()
        return out

    def request(self, context: str, kwargs: dict, end: int) -> Request:
        """The harness's generation settings as an engine request."""
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        sampled = kwargs.get("do_sample", False)
        params = SampleConfig(
            max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
            temperature=float(kwargs.get("temperature", 1.0)) if sampled else 0.0,
            top_k=int(kwargs.get("top_k") or 0),
            top_p=float(kwargs.get("top_p") or 1.0),
            stop=until,
        )
        return Request(self.tok_encode(context), params, self.seed, 1, frozenset({end}))


# --------------------------------------------------------------------------- tasks


def task_manager(names: list[str], include: list[Path]):
    """The harness's task index: gptcli's own folder and --include-path first (fast), all of
    the harness's tasks only when a name is not there (indexing them takes many seconds)."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in (BUNDLED_TASKS, *include)]
    local = TaskManager(include_path=paths, include_defaults=False)
    if all(name in local.all_tasks for name in names):
        return local
    # the harness's own tasks read their data from the Hub: out of reach, say so before waiting
    hub.check_reachable("--tasks " + ",".join(n for n in names if n not in local.all_tasks))
    console.info("eval: indexing lm-evaluation-harness's tasks")
    full = TaskManager(include_path=paths)
    unknown = [name for name in names if name not in full.all_tasks]
    if unknown:
        raise UserError(
            f"--tasks: unknown task {unknown[0]!r} (see `lm-eval ls tasks`, or name a folder of "
            "task YAML files with --include-path)"
        )
    return full


def check_data(manager, names: list[str]) -> None:
    """Load each task's data before any model runs, so a missing download or file is one
    line naming the task."""
    for name in names:
        try:
            with quiet_harness():
                manager.load([name])
        except Exception as e:  # noqa: BLE001 - the harness and datasets raise many kinds
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise UserError(
                f"task {name}: its data could not be loaded ({reason}); without network, "
                "use a task whose data is local (gptcli's own: gptcli_sst2, "
                "gptcli_shakespeare, gptcli_story_cloze) or --include-path DIR with YAML "
                "definitions that read local files"
            ) from None


@contextlib.contextmanager
def quiet_harness():
    """The harness logs to stdout and prints: keep stdout for our product, its INFO lines out
    of the user's way (warnings still reach stderr), and its progress bars off where gptcli's
    own are (--quiet, or stderr not a terminal); its templates compiled once."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "evaluate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    from lm_eval import evaluator

    # the harness's environment report runs `git describe` in the working directory (outside
    # a repository git's "fatal: not a git repository" would reach the terminal) and
    # `pip list` (a second or so); gptcli's result records its own versions
    probes = {"get_git_commit_hash": lambda: None, "add_env_info": lambda storage: None}
    saved = {name: getattr(evaluator, name) for name in probes if hasattr(evaluator, name)}
    for name in saved:
        setattr(evaluator, name, probes[name])
    try:
        with (
            contextlib.redirect_stdout(sys.stderr),
            harness_bars(console.progress_enabled()),
            compiled_once(),
        ):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        for name, probe in saved.items():
            setattr(evaluator, name, probe)


@contextlib.contextmanager
def harness_bars(shown: bool):
    """tqdm's bars (the harness's and datasets') shown or not, whatever each caller asks."""
    if shown:
        yield
        return
    from tqdm import std

    init = std.tqdm.__init__

    def silent(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    std.tqdm.__init__ = silent
    try:
        yield
    finally:
        std.tqdm.__init__ = init


@contextlib.contextmanager
def compiled_once():
    """The harness compiles a task's Jinja templates (prompt, target, choices) again for every
    document; a compiled template renders the same text, so each is compiled once."""
    from lm_eval import utils

    env = getattr(utils, "env", None)
    if env is None:
        yield
        return
    compile_template = env.from_string
    compiled: dict[str, Any] = {}

    def from_string(source, *args, **kwargs):
        if args or kwargs or not isinstance(source, str):
            return compile_template(source, *args, **kwargs)
        if source not in compiled:
            compiled[source] = compile_template(source)
        return compiled[source]

    shadowed = vars(env).get("from_string")  # set by an enclosing call, if any
    env.from_string = from_string
    try:
        yield
    finally:
        if shadowed is None:
            del env.from_string  # the class's method again
        else:
            env.from_string = shadowed


# --------------------------------------------------------------------------- results


def rows_of(results: dict) -> list[dict]:
    """The harness's {task: {"acc,none": v, "acc_stderr,none": s}} as one row per metric."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "task": task,
                    "metric": metric if filt == "none" else f"{metric} ({filt})",
                    "value": _number(value),
                    "stderr": _number(stderr),
                    "n": results.get("n-samples", {}).get(task, {}).get("effective"),
                }
            )
    return rows


def _number(value: Any) -> float | None:
    """A JSON-safe float ("N/A" and NaN become None)."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return round(float(value), 6)
    return None


def render(result: dict) -> None:
    """The table people read: task, metric, value, stderr."""
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for name, justify in (("task", "left"), ("metric", "left"), ("value", "right")):
        t.add_column(name, justify=justify)
    t.add_column("stderr", justify="right")
    t.add_column("n", justify="right")
    for row in result["results"]:
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        stderr = "" if row["stderr"] is None else f"± {row['stderr']:.4f}"
        t.add_row(row["task"], row["metric"], value, stderr, str(row["n"] or ""))
    console.stdout.print(t)


def run_folder(ckpt: Path) -> Path | None:
    """The run a checkpoint belongs to (RUN/checkpoints/step-N), None for an HF folder."""
    if hf_format.is_hf_folder(ckpt) or ckpt.parent.name != "checkpoints":
        return None
    return ckpt.parent.parent


# --------------------------------------------------------------------------- gptcli eval


def check_options(
    tasks: str, limit: float | None, batch_size: int, device: str, dtype: str
) -> tuple[list[str], float | None]:
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--tasks needs at least one task name, e.g. --tasks gptcli_sst2")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be > 0 (examples per task, or a fraction < 1), got {limit}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if device not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be auto, fp32 or bf16, got {dtype!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available (use --device auto)")
    if limit is not None and limit >= 1:
        limit = int(limit)  # a count of examples, not a fraction
    return names, limit


def load_model(
    path: str | None, device_name: str, dtype: str, chat: bool, batch_size: int = 16
) -> LoadedModel:
    """The model (LoRA merged on load), in its dtype on its device, and its tokenizer. dtype auto
    is sampling's: bf16 where native unless forward passes of batch_size rows of this model's
    shape measure it slower (the same cached probe)."""
    checked = check_model(
        path,
        "eval",
        dtype=dtype,
        rows=batch_size,
        rows_flag="--batch-size",
        device=device_name,
        doing="evaluation",
    )
    lm = build(checked)
    if chat and lm.kind != "sft":
        raise UserError(
            f"--apply-chat-template: {lm.ckpt} has no chat template (it is not an SFT checkpoint)"
        )
    lm.model.prepack()
    return lm


@dataclass(frozen=True)
class EvalOptions:
    """What `gptcli eval` is asked to do, flag by flag (the model is evaluate's own argument)."""

    tasks: str  # comma-separated harness task names
    limit: float | None = None  # examples per task; a fraction < 1 is that share of each task
    num_fewshot: int | None = None  # examples in the prompt; None: the task's own number
    batch_size: int = 16  # rows per forward pass
    device: str = "auto"  # one of DEVICES
    dtype: str = "auto"  # one of DTYPES; auto is sampling's choice for this model's shape
    seed: int = 0  # few-shot choice and sampling
    include_path: tuple[str, ...] = ()  # folders of task YAML files
    log_samples: bool = False  # keep every request and answer in the result
    chat: bool = False  # wrap prompts in the SFT chat template
    out: str | None = None  # a file to write the JSON result to as well


def evaluate(path: str | None, options: EvalOptions) -> dict[str, Any]:
    """Run the tasks on the model at path (None: the newest checkpoint in ./runs); the result
    is saved in the run folder's eval/ (a gptcli checkpoint) and in options.out when given."""
    if lm_eval is None:
        raise UserError(f"gptcli eval needs lm-evaluation-harness: {INSTALL}")
    names, limit = check_options(
        options.tasks, options.limit, options.batch_size, options.device, options.dtype
    )
    include = [Path(p) for p in options.include_path]
    for folder in include:
        if not folder.is_dir():
            raise UserError(f"--include-path: {folder} is not a folder (of task YAML files)")
    if options.out is not None and Path(options.out).is_dir():
        raise UserError(
            f"--out: {options.out} is a folder; name a file to write the JSON result to"
        )
    lm = load_model(path, options.device, options.dtype, options.chat, options.batch_size)
    ckpt, model = lm.ckpt, lm.model
    with quiet_harness():
        manager = task_manager(names, include)
    check_data(manager, names)
    harness_lm = GptcliLM(model, lm.tok, options.batch_size, options.chat, options.seed)
    started = time.perf_counter()
    with quiet_harness():
        results = lm_eval.simple_evaluate(
            model=harness_lm,
            tasks=names,
            num_fewshot=options.num_fewshot,
            limit=limit,
            log_samples=options.log_samples,
            task_manager=manager,
            bootstrap_iters=BOOTSTRAP_ITERS,
            apply_chat_template=options.chat,
            random_seed=options.seed,
            numpy_random_seed=options.seed,
            torch_random_seed=options.seed,
            fewshot_random_seed=options.seed,
        )
    result = {
        "model": str(ckpt),
        "tasks": names,
        "results": rows_of(results),
        "settings": {
            "limit": limit,
            "num_fewshot": options.num_fewshot,
            "batch_size": options.batch_size,
            "device": str(model.wte.weight.device),
            "dtype": dtype_name(model.wte.weight.dtype),
            "seed": options.seed,
            "chat_template": options.chat,
        },
        "n_shot": results.get("n-shot", {}),
        "versions": {"gptcli": __version__, "lm_eval": lm_eval.__version__},
        "elapsed_s": round(time.perf_counter() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if options.log_samples:
        result["samples"] = results.get("samples", {})
    save(result, ckpt, options.out)
    return result


def save(result: dict, ckpt: Path, out: str | None) -> None:
    """Atomic writes: RUN/eval/<timestamp>.json for a run's checkpoint, and --out."""
    data = (json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n").encode()
    run = run_folder(ckpt)
    if run is not None:
        folder = run / "eval"
        folder.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        target = folder / f"{stamp}.json"
        n = 2
        while target.exists():  # two evals in the same second keep both
            target, n = folder / f"{stamp}-{n}.json", n + 1
        write_atomic(target, data)
        result["saved"] = str(target)
        console.info(f"eval: results in {target}")
    if out is not None:
        write_atomic(Path(out), data)


# --------------------------------------------------------------------------- a text file's score


def score(checkpoint_path: str, text_file: str, batch: int = 8) -> dict[str, Any]:
    """Loss, bits per byte and perplexity of a checkpoint on a text file.

    The text (after one <|endoftext|>, as documents follow it in training) is cut into
    non-overlapping windows of block_size predictions; every token but the first is scored once.
    """
    path = Path(text_file)
    if not path.is_file():
        raise UserError(f"--score: {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"--score: {path} is not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    if not text.strip():
        raise UserError(f"--score: {path} is empty")
    lm = build(check_model(checkpoint_path, "inspect --score", dtype="fp32", rows=batch))
    model, tok = lm.model, lm.tok
    ids = torch.tensor(tokenizer.document_ids(tok, text))
    T = model.cfg.block_size
    windows = [ids[s : s + T + 1] for s in range(0, len(ids) - 1, T)]
    full = [w for w in windows if len(w) == T + 1]
    groups = [full[i : i + batch] for i in range(0, len(full), batch)]
    groups += [[w] for w in windows if len(w) < T + 1]  # the shorter last window
    total, count = 0.0, 0
    with torch.inference_mode(), console.progress() as bar:
        task = bar.add_task("score", total=len(windows))
        for group in groups:
            x = torch.stack(group)
            logits, _ = model(x[:, :-1])
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum"
            ).item()
            count += x[:, 1:].numel()
            bar.advance(task, len(group))
    loss = total / count
    n_bytes = len(text.encode("utf-8"))
    return {
        "kind": "score",
        "path": str(lm.ckpt),
        "file": str(path),
        "tokens": count,
        "bytes": n_bytes,
        "loss": round(loss, 5),
        "bits_per_byte": round(bits_per_byte(loss, count, n_bytes), 5),
        "perplexity": round(math.exp(loss), 4),
    }
