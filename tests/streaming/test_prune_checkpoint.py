"""Streamed checkpoint pruning equals in-memory pruning, bit for bit, within a stated memory bound.

Markers:
    zoo   real transformers architectures (tiny random configs, offline).
    slow  the other criteria and architectures of the equality test, the reload in a process
          without depgraph, and the resume/mode variants (each runs whole prunes).

Each checkpoint is written by the test with ``save_pretrained(max_shard_size=...)``
into many shards. The reference is the same model loaded whole with
``from_pretrained`` and pruned by a ``BasePruner`` step written out here, so a
mistake shared by the streamed path and its options object would still show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import depgraph as tp
from depgraph.streaming import CheckpointError, MemoryBudgetError, prune_checkpoint
from depgraph.streaming import api as stream_api

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.zoo

# hidden 96 / 8 query heads / 4 key-value heads (GQA): one KV head out of 4 leaves 6 query heads,
# and 96 % 6 == 0, which the configs check
_SIZES = dict(hidden_size=96, intermediate_size=128, num_attention_heads=8, num_key_value_heads=4,
              num_hidden_layers=3, vocab_size=100, max_position_embeddings=64)
CONFIGS = {
    "llama": lambda **kw: transformers.LlamaConfig(**_SIZES, **kw),
    "qwen2": lambda **kw: transformers.Qwen2Config(**_SIZES, **kw),  # q/k/v have biases
    "mistral": lambda **kw: transformers.MistralConfig(**_SIZES, **kw),
    "gemma": lambda **kw: transformers.GemmaConfig(**_SIZES, head_dim=12, **kw),  # (1 + w) norms
    "phi3": lambda **kw: transformers.Phi3Config(**_SIZES, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                                 **kw),  # fused qkv_proj and gate_up_proj
}
RATIO = 0.25


def _save(folder: Path, arch: str, shard: str = "60KB", **kw) -> Path:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[arch](**kw)).eval()
    model.save_pretrained(folder, max_shard_size=shard)
    return folder


@pytest.fixture(scope="module")
def llama_src(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("llama") / "src", "llama", tie_word_embeddings=False)


def _in_memory(src: Path, importance: tp.importance.Importance, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The reference: the whole model loaded and pruned by a plain BasePruner step."""
    model = model if model is not None else transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    inputs = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.BasePruner(
            model, inputs, importance, pruning_ratio=RATIO,
            ignored_layers=[model.get_input_embeddings(), model.get_output_embeddings()],
            prune_num_heads=True, head_pruning_ratio=RATIO, prune_head_dims=False,
        ).step()
    return model


def _load(folder: Path) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def _assert_same(ref: torch.nn.Module, got: torch.nn.Module) -> None:
    a, b = ref.state_dict(), got.state_dict()
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not differ, f"tensors differ: {differ[:5]}"
    for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "hidden_size"):
        assert getattr(ref.config, key) == getattr(got.config, key), key
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        t_ref = ref.generate(ids, max_new_tokens=8, do_sample=False)
        t_got = got.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(t_ref, t_got)


CRITERIA = {
    "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "lamp": lambda: tp.importance.LAMPImportance(),
    "random": lambda: tp.importance.RandomImportance(generator=torch.Generator().manual_seed(0)),
}


_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("arch", "criterion"),
    [("llama", "magnitude"), ("qwen2", "magnitude"), ("llama", "random"),
     pytest.param("llama", "lamp", marks=_SLOW), pytest.param("qwen2", "lamp", marks=_SLOW),
     pytest.param("qwen2", "random", marks=_SLOW)],
)
def test_streamed_equals_in_memory(arch, criterion, tmp_path) -> None:
    src = _save(tmp_path / "src", arch, tie_word_embeddings=False)
    assert len(list(src.glob("*.safetensors"))) >= 5  # really sharded
    report = prune_checkpoint(src, tmp_path / "out", ratio=RATIO, importance=criterion,
                              max_memory="1MB", progress=False)
    got = _load(tmp_path / "out")
    ref = _in_memory(src, CRITERIA[criterion]())
    _assert_same(ref, got)
    # it really pruned: 1 of 4 KV heads (and its 2 query heads) and 32 of 128 MLP channels per layer
    assert (got.config.num_key_value_heads, got.config.num_attention_heads, got.config.intermediate_size) == (3, 6, 96)
    assert report.mode == "stream" and report.groups_pruned == 6
    assert report.params_after == sum(p.numel() for p in got.parameters()) < report.params_before


@pytest.mark.parametrize(
    ("arch", "criterion"),
    [("llama", "activation_weight"), pytest.param("qwen2", "fluctuation", marks=_SLOW)],
)
def test_data_aware_streamed_equals_in_memory(arch, criterion, tmp_path) -> None:
    """Calibration runs through the meta model one layer's weights at a time, and changes nothing else."""
    src = _save(tmp_path / "src", arch, tie_word_embeddings=False)
    calib = [torch.randint(0, 100, (2, 16)), {"input_ids": torch.randint(0, 100, (1, 24))}]
    report = prune_checkpoint(src, tmp_path / "out", ratio=RATIO, importance=criterion, calib=calib,
                              max_memory="1MB", progress=False)
    ref_imp = tp.importance.create_importance(criterion)
    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    with torch.no_grad():
        ref_imp.calibrate(model, calib)
    ref = _in_memory(src, ref_imp, model)
    got = _load(tmp_path / "out")
    _assert_same(ref, got)
    assert report.seconds["calibrate"] > 0 and report.peak_materialized <= 1_000_000
    # the data decided: magnitude alone keeps other MLP channels
    by_magnitude = _in_memory(src, tp.importance.GroupMagnitudeImportance(p=2))
    assert not torch.equal(by_magnitude.model.layers[0].mlp.down_proj.weight, got.model.layers[0].mlp.down_proj.weight)


@_SLOW
@pytest.mark.parametrize("arch", ["mistral", "gemma", "phi3"])
def test_more_decoders_stream_like_in_memory(arch, tmp_path) -> None:
    """Gemma ties its embeddings; Phi-3 fuses q/k/v and gate/up into one Linear each."""
    src = _save(tmp_path / "src", arch)
    prune_checkpoint(src, tmp_path / "out", ratio=RATIO, max_memory="1MB", progress=False)
    got = _load(tmp_path / "out")
    _assert_same(_in_memory(src, tp.importance.GroupMagnitudeImportance(p=2)), got)
    assert (got.config.num_key_value_heads, got.config.intermediate_size) == (3, 96)


def test_a_failing_calibration_pass_leaves_the_meta_model_as_it_was(llama_src) -> None:
    from depgraph.streaming.calibrate import materialize_on_use
    from depgraph.streaming.plan import Materializer, PruneLog, build_meta_model
    from depgraph.streaming.shards import Checkpoint

    model = build_meta_model(transformers.AutoConfig.from_pretrained(llama_src))
    checkpoint = Checkpoint(llama_src)
    materializer = Materializer(checkpoint, model, PruneLog())

    def boom(module, args):
        raise RuntimeError("boom")

    handle = model.model.layers[1].mlp.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"), materialize_on_use(model, materializer), torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])  # RoPE's inv_freq too
    assert checkpoint.ledger.current == 0 and checkpoint.ledger.peak > 0
    with torch.no_grad():  # no hook is left behind: a plain meta forward works
        handle.remove()
        assert model(input_ids=torch.zeros(1, 3, dtype=torch.long, device="meta")).logits.is_meta


def test_scores_are_those_of_the_in_memory_criterion(llama_src, monkeypatch, tmp_path) -> None:
    """Not only the chosen channels: every score tensor the criterion returns is identical."""
    src = llama_src
    calls: list[torch.Tensor] = []
    original = tp.importance.GroupMagnitudeImportance.__call__

    def recording(self, group):
        s = original(self, group)
        calls.append(s.clone())
        return s

    monkeypatch.setattr(tp.importance.GroupMagnitudeImportance, "__call__", recording)
    prune_checkpoint(src, tmp_path / "out", ratio=RATIO, max_memory="1MB", progress=False)
    streamed, calls[:] = list(calls), []
    _in_memory(src, tp.importance.GroupMagnitudeImportance(p=2))
    assert len(streamed) == len(calls) == 6
    assert all(torch.equal(a, b) for a, b in zip(streamed, calls, strict=True))


def test_peak_materialised_bytes_stay_under_one_decoder_layer(llama_src, tmp_path) -> None:
    """The bound: at most the weights of one decoder layer are held at once (here, of 3 + embeddings)."""
    src = llama_src
    index = json.loads((src / "model.safetensors.index.json").read_text())
    total = index["metadata"]["total_size"]
    layer = _load(src).model.layers[0]
    layer_bytes = sum(p.numel() * p.element_size() for p in layer.parameters())
    report = prune_checkpoint(src, tmp_path / "out", ratio=RATIO, max_memory=layer_bytes, progress=False)
    assert 0 < report.peak_materialized <= layer_bytes < total / 3
    assert report.bytes_read >= total  # every tensor read at least once: copied or rebuilt
    assert report.bytes_written == sum(p.stat().st_size for p in (tmp_path / "out").glob("*.safetensors"))


def test_budget_below_one_decoder_layer_is_refused_before_anything(llama_src, tmp_path) -> None:
    src = llama_src
    with pytest.raises(MemoryBudgetError, match=r"cannot hold one decoder layer \(model\.layers\.\d"):
        prune_checkpoint(src, tmp_path / "out", ratio=RATIO, max_memory="20KB", progress=False)
    assert not (tmp_path / "out").exists()


def test_interrupted_run_resumes_to_the_same_files(llama_src, monkeypatch, tmp_path) -> None:
    src = llama_src
    clean = tmp_path / "clean"
    prune_checkpoint(src, clean, ratio=RATIO, max_memory="1MB", progress=False)

    real = stream_api.write_shard
    written: list[str] = []

    def failing(path, entries, metadata):
        if written:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the 2nd shard
        written.append(path.name)
        return real(path, entries, metadata)

    out = tmp_path / "out"
    monkeypatch.setattr(stream_api, "write_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(src, out, ratio=RATIO, max_memory="1MB", progress=False)
    assert sorted(p.name for p in out.glob("*.safetensors")) == written  # one shard, no partial file left
    assert not list(out.glob("*.partial"))
    monkeypatch.setattr(stream_api, "write_shard", real)

    report = prune_checkpoint(src, out, ratio=RATIO, max_memory="1MB", progress=False)
    assert report.shards_reused == written and written[0] not in report.shards_written
    _assert_same_files(clean, out)


@_SLOW
def test_resume_rewrites_a_damaged_shard_and_a_changed_plan(llama_src, tmp_path) -> None:
    src = llama_src
    out = tmp_path / "out"
    first = prune_checkpoint(src, out, ratio=RATIO, max_memory="1MB", progress=False)
    shard = out / first.shards_written[2]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    again = prune_checkpoint(src, out, ratio=RATIO, max_memory="1MB", progress=False)
    assert again.shards_written == [shard.name] and len(again.shards_reused) == len(first.shards_written) - 1
    other = prune_checkpoint(src, out, ratio=0.5, head_ratio=0.25, max_memory="1MB", progress=False)
    assert other.plan_hash != first.plan_hash and not other.shards_reused  # a different plan: all rewritten
    assert _load(out).config.intermediate_size == 64


def _assert_same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    differ = [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]
    assert not differ, differ


@_SLOW
def test_reloads_and_generates_without_depgraph(llama_src, tmp_path) -> None:
    """The output needs transformers only: loaded in a process where depgraph cannot be imported."""
    src = llama_src
    out = tmp_path / "out"
    prune_checkpoint(src, out, ratio=RATIO, max_memory="1MB", progress=False)
    code = (
        "import sys; sys.modules['depgraph'] = None\n"  # any import of depgraph now fails
        "import torch, transformers\n"
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
        "ids = torch.tensor([[3, 14, 15, 92, 65, 35]])\n"
        "print(m.generate(ids, max_new_tokens=8, do_sample=False)[0].tolist())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    tokens = json.loads(done.stdout.strip().splitlines()[-1])
    ref = _in_memory(src, tp.importance.GroupMagnitudeImportance(p=2))
    with torch.no_grad():
        expected = ref.generate(torch.tensor([[3, 14, 15, 92, 65, 35]]), max_new_tokens=8, do_sample=False)
    assert tokens == expected[0].tolist()


@_SLOW
def test_tied_embeddings_and_a_single_file_checkpoint(tmp_path) -> None:
    """lm_head.weight is not stored when tied; one model.safetensors and no index is a checkpoint too."""
    src = _save(tmp_path / "src", "llama", shard="50MB", tie_word_embeddings=True)
    assert not (src / "model.safetensors.index.json").exists()
    prune_checkpoint(src, tmp_path / "out", ratio=RATIO, max_memory="1MB", progress=False)
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()
    _assert_same(_in_memory(src, tp.importance.GroupMagnitudeImportance(p=2)), _load(tmp_path / "out"))


@_SLOW
def test_memory_mode_matches_the_streamed_one(llama_src, tmp_path) -> None:
    src = llama_src
    report = prune_checkpoint(src, tmp_path / "mem", ratio=RATIO, mode="memory", progress=False)
    assert report.mode == "memory"
    prune_checkpoint(src, tmp_path / "stream", ratio=RATIO, mode="stream", progress=False)
    _assert_same(_load(tmp_path / "mem"), _load(tmp_path / "stream"))


@_SLOW
def test_auto_mode_streams_only_without_room(llama_src, monkeypatch, tmp_path) -> None:
    src = llama_src
    monkeypatch.setattr(stream_api, "available_memory", lambda: 10_000)  # less than the checkpoint
    assert prune_checkpoint(src, tmp_path / "a", ratio=RATIO, progress=False).mode == "stream"
    monkeypatch.setattr(stream_api, "available_memory", lambda: 10**12)
    assert prune_checkpoint(src, tmp_path / "b", ratio=RATIO, progress=False).mode == "memory"


def test_cli_prunes_a_checkpoint_folder(llama_src, tmp_path, capsys) -> None:
    from depgraph.cli import main

    src = llama_src
    out = tmp_path / "out"
    argv = ["prune", str(src), "--ratio", "0.25", "--max-memory", "1MB", "--output", str(out), "--plain"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "(stream)" in text and "peak weights held" in text
    assert _load(out).config.intermediate_size == 96
    assert main(["prune", str(src), "--ratio", "0.25", "--max-memory", "lots", "--output", str(out)]) == 2
    assert "not a memory size" in capsys.readouterr().err
    assert main(["prune", str(src), "--ratio", "0.25", "--max-memory", "10KB", "--output", str(out)]) == 1
    assert "MemoryBudgetError" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(ratio=1.0), tp.errors.OptionError, r"ratio must be in \[0, 1\), got 1.0"),
        (dict(importance="taylor"), tp.errors.OptionError, "importance must be one of .*data-aware"),
        (dict(max_memory="12 parsecs"), tp.errors.OptionError, "not a memory size"),
        (dict(mode="fast"), tp.errors.OptionError, "mode must be"),
        (dict(calib=torch.zeros(1, 4, dtype=torch.long)), tp.errors.OptionError, "calib= is only read by"),
        (dict(importance="fluctuation"), tp.errors.OptionError, "calibrated on data: pass calib="),
        (dict(importance="fluctuation", calib=torch.full((1, 4), 100)), tp.errors.OptionError,
         r"token ids in \[100, 100\], outside the vocabulary .*0 to 99"),
        (dict(ignore=("model.layers.9",)), tp.errors.OptionError,
         r"ignore names no layer of the model \(LlamaForCausalLM\): 'model\.layers\.9' \(did you mean"),
    ],
)
def test_bad_input_is_refused_before_writing(llama_src, tmp_path, kwargs, error, match) -> None:
    src = llama_src
    with pytest.raises(error, match=match):
        prune_checkpoint(src, tmp_path / "out", **{"mode": "stream", **kwargs})
    assert not (tmp_path / "out").exists()


def test_not_a_checkpoint_is_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        prune_checkpoint(tmp_path, tmp_path / "out")
    transformers.LlamaConfig(**_SIZES).save_pretrained(tmp_path / "cfg_only")
    with pytest.raises(CheckpointError, match="neither model.safetensors.index.json nor model.safetensors"):
        prune_checkpoint(tmp_path / "cfg_only", tmp_path / "out")
    with pytest.raises(tp.errors.OptionError, match="out_dir must differ from src_dir"):
        prune_checkpoint(tmp_path / "cfg_only", tmp_path / "cfg_only")


@pytest.mark.parametrize("arch", ["llama", pytest.param("qwen2", marks=_SLOW), pytest.param("gemma", marks=_SLOW)])
def test_hidden_size_streams_one_member_at_a_time(arch, tmp_path) -> None:
    """The residual stream is one group across every layer: scored member by member within the budget."""
    src = _save(tmp_path / "src", arch)  # gemma ties the LM head to the embedding
    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    report = prune_checkpoint(src, tmp_path / "out", ratio=RATIO, prune_hidden=True, max_memory=layer_bytes,
                              progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.BasePruner(
            model, {"input_ids": torch.zeros(1, 8, dtype=torch.long)}, tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=RATIO, ignored_layers=[model.get_output_embeddings()],
            prune_num_heads=True, head_pruning_ratio=RATIO, prune_head_dims=False,
        ).step()
    got = _load(tmp_path / "out")
    _assert_same(model, got)
    assert got.config.hidden_size == 72 and got.model.embed_tokens.weight.shape == (100, 72)
    assert got.config.vocab_size == 100 and got.get_output_embeddings().weight.shape == (100, 72)
    # the whole group (embedding, 7 norms, 3 x 7 projections, LM head) was never held at once
    assert 0 < report.peak_materialized <= layer_bytes


def test_hidden_size_streams_with_attention_left_whole(llama_src, tmp_path) -> None:
    """head_ratio=0 leaves every head (no attention block is ignored, so the output projections stay in
    the hidden-size group): the hidden size still goes, as a BasePruner step without head pruning."""
    prune_checkpoint(llama_src, tmp_path / "out", ratio=RATIO, head_ratio=0.0, prune_hidden=True, max_memory="1MB",
                     progress=False)
    model = _load(llama_src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.BasePruner(
            model, {"input_ids": torch.zeros(1, 8, dtype=torch.long)}, tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=RATIO, ignored_layers=[model.get_output_embeddings()], prune_head_dims=False,
        ).step()
    got = _load(tmp_path / "out")
    _assert_same(model, got)
    assert (got.config.hidden_size, got.config.intermediate_size) == (72, 96)
    assert (got.config.num_attention_heads, got.config.num_key_value_heads, got.config.head_dim) == (8, 4, 12)


def test_hidden_size_needs_room_for_the_embedding(tmp_path) -> None:
    src = tmp_path / "src"
    config = transformers.LlamaConfig(**{**_SIZES, "vocab_size": 2000}, tie_word_embeddings=False)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(src, max_shard_size="300KB")
    budget = 500_000  # above a decoder layer (259 KB), below the embedding (2000 x 96 x 4 = 768 KB)
    prune_checkpoint(src, tmp_path / "ok", ratio=RATIO, max_memory=budget, progress=False)  # hidden kept: fits
    with pytest.raises(MemoryBudgetError, match=r"cannot hold the embedding or LM head it prunes "
                                                r"\((model\.embed_tokens|lm_head) is 768\.00 KB"):
        prune_checkpoint(src, tmp_path / "out", ratio=RATIO, prune_hidden=True, max_memory=budget, progress=False)
    assert not (tmp_path / "out").exists()
