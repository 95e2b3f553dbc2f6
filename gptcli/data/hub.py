"""hf:OWNER/NAME sources: a Hugging Face Hub dataset streamed through the `datasets` library.

The rows are read as datasets.load_dataset(NAME, config, split=..., revision=...,
streaming=True) reads them (the builder, then its streaming dataset: the same two steps), so
nothing is downloaded whole and each pass over the corpus opens the stream again. As in
load_dataset, a folder named OWNER/NAME in the working directory is read instead of the Hub.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gptcli import console, tokenizer
from gptcli.console import UserError
from gptcli.data.streams import Reading
from gptcli.files import get_field
from gptcli.recipe import DataConfig, SourceConfig

PREFIX = "hf:"
DEFAULT_ENDPOINT = "https://huggingface.co"  # where huggingface_hub goes unless HF_ENDPOINT says
CONNECT_TIMEOUT_S = 5.0  # a Hub that answers no connection in this long counts as out of reach

# builders made by this process, by (name or local folder, config, revision): a corpus is read
# several times per command, and resolving a dataset asks the Hub each time
_builders: dict[tuple[str, str, str], Any] = {}


@dataclass(frozen=True)
class Dataset:
    """Which rows an hf: source reads: the dataset, its config, split and revision."""

    name: str
    config: str = ""
    split: str = "train"
    revision: str = ""

    @property
    def page(self) -> str:
        return f"https://huggingface.co/datasets/{self.name}"


class NotCached(UserError):
    """HF_HUB_OFFLINE is set and the dataset cannot be resolved from the local cache."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


# (host, port) pairs this process has connected to: the Hub is checked once per command
_reached: set[tuple[str, int]] = set()


def _resolved(host: str, port: int, timeout: float) -> list[tuple]:
    """getaddrinfo within timeout: it has no timeout of its own, and an unanswering resolver
    makes it wait many seconds. Raises TimeoutError, or what getaddrinfo raised."""
    answer: list = []

    def resolve() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            answer.append(e)

    worker = threading.Thread(target=resolve, daemon=True)  # left behind if it never answers
    worker.start()
    worker.join(timeout)
    if not answer:
        raise TimeoutError
    if isinstance(answer[0], OSError):
        raise answer[0]
    return answer[0]


def _connect(host: str, port: int, timeout: float) -> None:
    """Open and close one TCP connection to host:port, or raise why it could not be made."""
    deadline = time.monotonic() + timeout
    error: OSError = TimeoutError()
    for family, kind, proto, _, address in _resolved(host, port, timeout):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(left)
                sock.connect(address)
            return
        except OSError as e:
            error = e
    raise error


def _why(e: OSError, host: str) -> str:
    if isinstance(e, socket.gaierror):
        return f"the name {host} does not resolve"
    if isinstance(e, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(e, TimeoutError):
        return f"no connection within {CONNECT_TIMEOUT_S:g} s"
    return e.strerror or type(e).__name__


def check_reachable(what: str) -> None:
    """Exit 2 at once, in one line, when the Hugging Face Hub (HF_ENDPOINT, or the proxy that
    leads there) takes no connection: huggingface_hub would retry for half a minute before
    failing. Errors during a transfer stay the library's to retry. With HF_HUB_OFFLINE set
    (or the datasets library's HF_DATASETS_OFFLINE) nothing is asked of the network: the
    local cache answers."""
    datasets_offline = os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline() or datasets_offline:
        return
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    url = urllib.parse.urlsplit(endpoint)
    target = url
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    except ValueError:  # a port that is not a number
        host = None
    if not host:
        raise UserError(
            f"{what}: HF_ENDPOINT or the proxy is not a URL like {DEFAULT_ENDPOINT} ({endpoint})"
        )
    if (host, port) in _reached:
        return
    try:
        _connect(host, port, CONNECT_TIMEOUT_S)
    except OSError as e:
        via = f" through the proxy {host}:{port}" if target is not url else ""
        raise UserError(
            f"{what}: cannot reach the Hugging Face Hub at {endpoint}{via} ({_why(e, host)}); "
            "check the network, or set HF_HUB_OFFLINE=1 to use what the local Hugging Face "
            "cache holds"
        ) from None
    _reached.add((host, port))


def datasets_lib() -> Any:
    """The datasets library, quiet (gptcli shows its own progress), or exit 2 saying how to
    install it."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            "reading hf: datasets needs the datasets library: pip install 'gptcli[hf]'"
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def dataset_name(spec: str) -> str:
    """OWNER/NAME from hf:OWNER/NAME, checked for its form."""
    name = spec.removeprefix(PREFIX).strip()
    parts = name.split("/")
    if len(parts) > 2 or not all(parts) or any(c.isspace() for c in name):
        raise UserError(
            f"data.source {spec!r}: expected hf:OWNER/NAME, a dataset's name on the Hugging "
            "Face Hub (e.g. hf:HuggingFaceFW/fineweb-edu)"
        )
    return name


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _hub_error(e: BaseException, ds: Dataset) -> UserError | None:
    """The one-line message for a failure the user can fix (token, name, revision, network,
    config or split), or None for anything else."""
    from huggingface_hub import utils as errors  # older releases have no huggingface_hub.errors

    where = f"hf:{ds.name}"
    text = _one_line(e)
    chain = list(_chain(e))
    if any(isinstance(c, errors.GatedRepoError) for c in chain) or "is a gated dataset" in text:
        return UserError(
            f"{where}: the dataset is gated; set HF_TOKEN to a token of an account that accepted "
            f"its terms at {ds.page}"
        )
    revision_missing = any(isinstance(c, errors.RevisionNotFoundError) for c in chain)
    if revision_missing or text.startswith("Revision '"):
        return UserError(f"{where}: no revision {ds.revision!r} (check the source's revision)")
    names = ("DatasetNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError")
    repo_missing = any(isinstance(c, errors.RepositoryNotFoundError) for c in chain)
    if repo_missing or type(e).__name__ in names:
        return UserError(
            f"{where}: no such dataset on the Hugging Face Hub, or it holds no data files "
            "(check the name at https://huggingface.co/datasets; a private one needs HF_TOKEN)"
        )
    if offline() and isinstance(e, ConnectionError):
        return NotCached(
            f"{where}: not in the local cache and HF_HUB_OFFLINE is set (unset it to stream "
            "the dataset from the Hub)"
        )
    if isinstance(e, (ConnectionError, errors.HfHubHTTPError)):  # offline mode is one
        return UserError(
            f"{where}: could not reach the Hugging Face Hub ({text}); check the network, or "
            "set HF_HUB_OFFLINE=1 to use the local cache"
        )
    if isinstance(e, ValueError) and ("BuilderConfig" in text or "Config name" in text):
        what = f"no config {ds.config!r}" if ds.config else "a config must be named"
        return UserError(f"{where}: {what} ({text}); set config: in the source's {{path, config}}")
    if isinstance(e, ValueError) and "split" in text.lower():
        return UserError(
            f"{where}: no split {ds.split!r} ({text}); set split: in the source's {{path, split}}"
        )
    return None


def builder(ds: Dataset) -> Any:
    """The dataset's builder (its configs, split sizes and resolved commit), made once."""
    where = os.path.abspath(ds.name) if os.path.isdir(ds.name) else ds.name
    key = (where, ds.config, ds.revision)
    if key not in _builders:
        if not os.path.isdir(ds.name):  # the Hub, not a local folder
            check_reachable(f"hf:{ds.name}")
        lib = datasets_lib()
        try:
            _builders[key] = lib.load_dataset_builder(
                ds.name, ds.config or None, revision=ds.revision or None
            )
        except Exception as e:
            if (err := _hub_error(e, ds)) is None:
                raise
            raise err from None
    return _builders[key]


def rows(ds: Dataset) -> Iterator[dict]:
    """The split's rows, streamed (a new stream each call)."""
    try:
        stream = builder(ds).as_streaming_dataset(split=ds.split)
        yield from stream
    except UserError:
        raise
    except Exception as e:
        if (err := _hub_error(e, ds)) is None:
            raise
        raise err from None


def _check_field(ds: Dataset, row: dict, field: str) -> None:
    if get_field(row, field) is None and field.split(".")[0] not in row:
        raise UserError(
            f"hf:{ds.name} ({ds.split}): no field {field!r} (its rows have: "
            f"{', '.join(row) or 'none'}; set text_field in the source's {{path, text_field}} "
            "form, or data.text_field)"
        )


def documents(ds: Dataset, reading: Reading) -> Iterator[str]:
    """The non-empty strings of the text field; null and blank rows are counted as skipped."""
    field, where = reading.text_field, f"hf:{ds.name} ({ds.split})"
    hint = "set data.errors: replace"
    for n, row in enumerate(rows(ds), 1):
        if n == 1:
            _check_field(ds, row, field)
        value = get_field(row, field)
        if value is None:
            reading.skipped["null text"] += 1
            continue
        if not isinstance(value, str):
            raise UserError(f"{where}: row {n}: field {field!r} holds {type(value).__name__}")
        reading.on_bytes(len(value.encode("utf-8", "replace")))
        if not value.strip():
            reading.skipped["blank text"] += 1
            continue
        if reading.errors == "replace":
            value = value.encode("utf-8", "replace").decode("utf-8")
        yield tokenizer.check_text(value, f"{where}: row {n}", hint)


def records(ds: Dataset) -> Iterator[tuple[str, dict]]:
    """(where, row) for each row, all fields."""
    for n, row in enumerate(rows(ds), 1):
        yield f"hf:{ds.name} ({ds.split}): row {n}", row


def size(ds: Dataset) -> int | None:
    """The split's size in bytes as the dataset's info states it, or None when unknown."""
    splits = builder(ds).info.splits
    split = splits.get(ds.split) if splits else None
    return int(split.num_bytes) if split is not None and split.num_bytes else None


def identity(ds: Dataset, known: list[dict]) -> dict:
    """What identifies the rows read, without reading them: the name, config, split, the
    revision asked for and the one resolved (a Hub commit, or a hash of local files).

    Offline, a dataset that cannot be resolved keeps the revision `known` (the previous
    manifest's sources) resolved, so shards made from it stay usable without the network.
    """
    asked = {"dataset": ds.name, "config": ds.config, "split": ds.split, "revision": ds.revision}
    try:
        return {**asked, "resolved": builder(ds).hash}
    except NotCached:
        prior = next((k for k in known if {key: k.get(key) for key in asked} == asked), None)
        if prior is None or not prior.get("resolved"):
            raise
    console.warn(
        f"hf:{ds.name}: HF_HUB_OFFLINE is set, so it is taken as unchanged since it was tokenized"
    )
    return {**asked, "resolved": prior["resolved"]}


# --------------------------------------------------------------------------- as a source kind


def dataset_of(src: SourceConfig) -> Dataset:
    """The Hub dataset an hf: source names."""
    return Dataset(dataset_name(src.path), src.config, src.split, src.revision)


def read(src: SourceConfig, cfg: DataConfig, seed: int, reading: Reading) -> Iterator[str]:
    return documents(dataset_of(src), reading)


def examples(src: SourceConfig, cfg: DataConfig, seed: int) -> Iterator[tuple[str, dict]]:
    return records(dataset_of(src))


def stated_bytes(src: SourceConfig, cfg: DataConfig) -> int | None:
    return size(dataset_of(src))


def fingerprint(src: SourceConfig, cfg: DataConfig, known_sources: list[dict]) -> dict:
    return identity(dataset_of(src), known_sources)
