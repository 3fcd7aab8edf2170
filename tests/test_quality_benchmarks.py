"""The quality benchmarks' helpers, on data the tests make (the real data sets are not needed).

``benchmarks/quality/`` holds scripts, not a package: the fixture puts the folder on
``sys.path`` for one test and removes the modules it imported afterwards, so their
plain names (``data``, ``search``, ``report``) never shadow anything else.
"""

from __future__ import annotations

import gzip
import importlib
import json
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import depgraph as tp

QUALITY = Path(__file__).resolve().parent.parent / "benchmarks" / "quality"
MODULES = ("data", "search", "report", "resnet", "train_resnet", "vision", "llm", "recover_llm", "recover_resnet_cli",
           "blockwise_llm", "soup_llm", "sample_text")


@pytest.fixture
def qb():
    """The benchmark modules, imported by name from ``benchmarks/quality``."""
    saved = {m: sys.modules.pop(m) for m in MODULES if m in sys.modules}
    sys.path.insert(0, str(QUALITY))
    try:
        yield SimpleNamespace(**{m: importlib.import_module(m) for m in ("data", "search", "report", "resnet")})
    finally:
        sys.path.remove(str(QUALITY))
        for m in MODULES:
            sys.modules.pop(m, None)
        sys.modules.update(saved)


def idx_bytes(array: torch.Tensor, type_code: int, fmt: str) -> bytes:
    header = bytes([0, 0, type_code, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + struct.pack(f">{array.numel()}{fmt}", *array.flatten().tolist())


# ----------------------------------------------------------------------------- data
def test_read_idx_uint8_plain_and_gzip(qb) -> None:
    images = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    raw = idx_bytes(images, 0x08, "B")
    assert torch.equal(qb.data.read_idx(raw), images)
    assert torch.equal(qb.data.read_idx(gzip.compress(raw)), images)


def test_read_idx_big_endian_int32(qb) -> None:
    values = torch.tensor([1, -2, 70000, 2**30], dtype=torch.int32)
    assert torch.equal(qb.data.read_idx(idx_bytes(values, 0x0C, "i")), values)


@pytest.mark.parametrize(
    ("raw", "match"),
    [(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an idx file"), (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01", "payload")],
)
def test_read_idx_refuses_bad_files(qb, raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        qb.data.read_idx(raw)


def test_load_fashion_mnist_from_a_folder(qb, tmp_path: Path) -> None:
    images = torch.full((3, 28, 28), 255, dtype=torch.uint8)
    labels = torch.tensor([0, 9, 4], dtype=torch.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 0x08, "B")))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x08, "B")))
    x, y = qb.data.load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 9, 4]
    assert torch.allclose(x, torch.full_like(x, (1 - qb.data.FMNIST_MEAN) / qb.data.FMNIST_STD))


def test_wiki_to_text_keeps_prose_only(qb) -> None:
    markup = (
        "{{Infobox|name={{nested|x}}}}\n"
        "'''Foo''' is a [[bar (thing)|bar]] from [[Baz]] in the north.&lt;ref&gt;a source&lt;/ref&gt; "
        "It was [http://example.org named] early.<ref name=\"x\"/>\n"
        "== History ==\n"
        "[[File:Foo.jpg|thumb|a [[picture]] of foo]]\n"
        "{| class=\"wikitable\"\n| cell || cell\n|}\n"
        "* a short item\n"
        "[[Category:Things]]"
    )
    text = qb.data.wiki_to_text(markup)
    assert text.splitlines()[0] == "Foo is a bar from Baz in the north. It was named early."
    for gone in ("{{", "ref", "http", "File", "picture", "cell", "Category", "[[", "'''"):
        assert gone not in text


def test_wiki_articles_skips_redirects_and_other_namespaces(qb) -> None:
    ns = "http://www.mediawiki.org/xml/export-0.10/"

    def page(title: str, ns_id: int, text: str, redirect: bool = False) -> str:
        extra = f'<redirect title="{title}"/>' if redirect else ""
        return f"<page><title>{title}</title><ns>{ns_id}</ns>{extra}<revision><text>{text}</text></revision></page>"

    xml = (f'<mediawiki xmlns="{ns}">' + page("A", 0, "Alpha is the first letter here.")
           + page("B", 0, "#REDIRECT [[A]]", redirect=True) + page("Talk:A", 1, "Talk about the letter here.")
           + page("C", 0, "Gamma is the third letter here.") + "</mediawiki>").encode()
    assert qb.data.wiki_articles(xml) == ["Alpha is the first letter here.", "Gamma is the third letter here."]


def test_split_articles_is_disjoint_and_covers_all(qb) -> None:
    articles = [f"article {i} text" for i in range(10)]
    calib, evals = qb.data.split_articles(articles)
    calib_set, eval_set = set(calib.split("\n\n")), set(evals.split("\n\n"))
    assert not calib_set & eval_set and calib_set | eval_set == set(articles)
    assert len(eval_set) == 5


def test_dictd_to_text_keeps_each_definition_as_prose(qb, tmp_path: Path) -> None:
    source = (
        "00-database-short\n     The Free On-line Dictionary of Computing\n\n"
        "abstract data type\nADT\n\n"
        "   <programming> (ADT) A kind of {data abstraction} where a\n"
        "   type's internal form is hidden behind a set of {access\n   functions}.\n\n"
        "   {Cook paper (http://example.org/oop.pdf)}.\n\n"
        "   See also http://example.org/adt and the {stack} , a classic example of one.\n\n"
        "   (2003-07-03)\n\n"
        "Ada\n\n   <language> short\n\n"
    )
    text = qb.data.dictd_to_text(source)
    assert text == ("ADT\n"
                    "(ADT) A kind of data abstraction where a type's internal form is hidden behind a set of "
                    "access functions.\n"
                    "See also and the stack, a classic example of one.")
    (tmp_path / qb.data.FOLDOC_DICT).parent.mkdir(parents=True)
    (tmp_path / qb.data.FOLDOC_DICT).write_bytes(gzip.compress(source.encode()))
    assert qb.data.foldoc_text(tmp_path) == text
    with pytest.raises(FileNotFoundError, match="setup.sh"):
        qb.data.foldoc_text(tmp_path / "empty")


def test_chunk_tokens(qb) -> None:
    rows = qb.data.chunk_tokens(torch.arange(23)[None], seq_len=5, n_tokens=12)
    assert rows.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    with pytest.raises(ValueError, match="cannot fill one row"):
        qb.data.chunk_tokens(torch.arange(3), seq_len=5, n_tokens=100)


# ----------------------------------------------------------------------------- search
def test_search_ratio_finds_the_step_that_crosses_the_target(qb) -> None:
    calls = []

    def trial(r: float) -> tuple[str, float]:
        calls.append(r)
        return f"r={r}", int(r * 20) / 20  # a staircase, like whole channels

    found = qb.search.search_ratio(trial, target=0.31, lo=0.0, hi=0.9, steps=12, rel_tol=0.0)
    assert found.value == 0.35 and 0.35 <= found.ratio < 0.35 + 0.9 / 2**11
    assert found.result == f"r={found.ratio}" and found.trials == len(calls)


def test_search_ratio_refuses_an_unreachable_target(qb) -> None:
    with pytest.raises(ValueError, match="cannot reach 2"):
        qb.search.search_ratio(lambda r: (None, 1 + r), target=2.0, hi=0.5)


def test_vision_ratio_search_reaches_2x_macs(qb) -> None:
    vision = importlib.import_module("vision")
    base = qb.resnet.CifarResNet(depth=8).eval()
    example = torch.randn(1, 1, 28, 28)
    base_macs = vision.macs(base, example)
    crit = vision.criteria()["l2"]

    def trial(r: float):
        model = vision.pruned_copy(base, crit.make(), r, "local", example, crit)
        return model, base_macs / vision.macs(model, example)

    found = qb.search.search_ratio(trial, 2.0, hi=0.8, steps=6, rel_tol=0.05)
    assert 2.0 <= found.value < 2.3
    assert sum(p.numel() for p in base.parameters()) > sum(p.numel() for p in found.result.parameters())
    assert tp.verify(base, found.result, example), "the pruned copy must be a correct prune of the base"


def test_vision_taylor_copy_keeps_gradients(qb) -> None:
    vision = importlib.import_module("vision")
    base = qb.resnet.CifarResNet(depth=8).eval()
    calib = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))]
    crit = vision.criteria()["taylor"]
    imp = crit.make()
    crit.prepare(base, imp, calib)
    pruned = vision.pruned_copy(base, imp, 0.3, "global", calib[0][0][:1], crit)
    assert pruned.conv1.out_channels < 16 and base.conv1.out_channels == 16  # base untouched


# ----------------------------------------------------------------------------- report
def test_markdown_table_aligns_numbers_right(qb) -> None:
    table = qb.report.markdown_table(["name", "acc"], [["l2", "91.20"], ["random", "-1.5"]])
    assert table.splitlines()[1] == "| :--- | ---: |"
    assert table.splitlines()[3] == "| random | -1.5 |"


def test_bar_plot_writes_a_png(qb, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "plot.png"
    qb.report.bar_plot(["a", "b"], {"x": [1.0, 2.0], "y": [2.0, 3.0]}, "acc", "title", path, reference=(2.5, "base"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- llm
@pytest.fixture
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      tie_word_embeddings=True, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def test_llm_ratio_search_hits_the_parameter_target(qb, tiny_llama) -> None:
    llm = importlib.import_module("llm")
    example = torch.randint(0, 64, (1, 8))
    base_params = llm.n_params(tiny_llama)
    ratio = llm.find_ratio(tiny_llama, 0.2, 0.0, example, base_params, steps=8)
    crit = llm.criteria()["magnitude"]
    pruned = llm.pruned_copy(tiny_llama, crit.make(), ratio, 0.0, example, crit)
    removed = 1 - llm.n_params(pruned) / base_params
    assert 0.2 <= removed < 0.2 * 1.05
    widths = {layer.mlp.down_proj.in_features for layer in pruned.model.layers}
    assert len(widths) == 1 and widths.pop() < 64  # uniform, so the config can describe it
    assert all(layer.self_attn.q_proj.out_features == 32 for layer in pruned.model.layers)  # heads stay
    assert llm.check_reload(pruned, example) < 1e-5


class WordTokenizer:
    """Words of a 64-word vocabulary as tokens: enough of a tokenizer for the text samplers."""

    def __call__(self, text: str, return_tensors: str = "pt") -> SimpleNamespace:
        return SimpleNamespace(input_ids=torch.tensor([[int(w[1:]) for w in text.split()]]))

    def batch_decode(self, ids: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(f"w{i}" for i in row.tolist()) for row in ids]


def test_sample_text_continues_spread_prompts_and_resumes_to_the_same_text(qb, tiny_llama, tmp_path: Path) -> None:
    st = importlib.import_module("sample_text")
    tok = WordTokenizer()
    prompt_text = " ".join(f"w{i % 64}" for i in range(200))
    out = tmp_path / "sampled.txt"
    opts = dict(tokens=50, prompt_tokens=4, new_tokens=6, batch_size=3, log=lambda line: None)
    assert st.sample_text(tiny_llama, tok, prompt_text, out, **opts) == 3  # 50 tokens: 3 batches of 3 x 6
    docs = out.read_text().split(st.SEPARATOR)[:-1]
    assert len(docs) == 9 and all(len(d.split()) == 10 for d in docs)  # prompt + exactly 6 new tokens each
    # the prompts are spread evenly over the 197 possible starts: one at the head of each ninth
    assert [d.split()[:4] for d in docs] == [prompt_text.split()[s:s + 4] for s in
                                             (0, 21, 43, 65, 87, 109, 131, 153, 175)]
    whole = out.read_text()
    # stopped after one batch, while the second was being written: the rerun cuts that off, writes the
    # other two, and the file is the same text
    first = st.SEPARATOR.join(docs[:3]) + st.SEPARATOR
    out.write_text(first + "w1 w2 w3")
    progress = out.with_name(out.name + ".progress.json")
    state = json.loads(progress.read_text())
    progress.write_text(json.dumps({**state, "batches": 1, "bytes": len(first.encode())}))
    st.sample_text(tiny_llama, tok, prompt_text, out, **opts)
    assert out.read_text() == whole
    st.sample_text(tiny_llama, tok, prompt_text, out, **opts)  # finished: left as it is
    assert out.read_text() == whole
    with pytest.raises(ValueError, match="resume with the same settings"):  # other draws: refused, file kept
        st.sample_text(tiny_llama, tok, prompt_text, out, **{**opts, "seed": 1})
    assert out.read_text() == whole
    with pytest.raises(ValueError, match="cannot take"):
        st.prompt_starts(torch.arange(3), 4, 1)
    with pytest.raises(ValueError, match="cannot take 3 distinct"):  # two starts only: no prompt twice
        st.prompt_starts(torch.arange(5), 4, 3)


def test_llm_perplexity_of_a_perfect_model_is_one(qb) -> None:
    llm = importlib.import_module("llm")

    class Echo(torch.nn.Module):  # predicts token t+1 = token t + 1 with near certainty
        def forward(self, input_ids):
            return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids + 1, 16).float() * 50)

    rows = torch.arange(10)[None].repeat(3, 1)
    assert llm.perplexity(Echo(), rows) == pytest.approx(1.0, abs=1e-6)


def test_llm_data_aware_criterion_calibrates_on_the_copy(qb, tiny_llama) -> None:
    llm = importlib.import_module("llm")
    crits = llm.criteria()
    if "act" not in crits:
        pytest.skip("this depgraph has no ActivationWeightImportance")
    crit = crits["act+bc"]
    imp = crit.make()
    calib = torch.randint(0, 64, (4, 8))
    crit.prepare(tiny_llama, imp, calib)
    pruned = llm.pruned_copy(tiny_llama, imp, 0.25, 0.0, calib[:1], crit)
    assert pruned.model.layers[0].mlp.down_proj.in_features == 48
    assert pruned.model.layers[0].mlp.down_proj.bias is not None  # the compensation went into a bias
    assert llm.check_reload(pruned, calib[:1]) < 1e-5  # the config says mlp_bias=True: from_pretrained keeps it
    assert tiny_llama.model.layers[0].mlp.down_proj.in_features == 64


def test_llm_heads_go_with_their_query_heads_and_reload(qb, tiny_llama) -> None:
    llm = importlib.import_module("llm")
    example = torch.randint(0, 64, (1, 8))
    crit = llm.criteria()["magnitude"]
    pruned = llm.pruned_copy(tiny_llama, crit.make(), 0.25, 0.5, example, crit)
    attn = pruned.model.layers[1].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.out_features) == (16, 8, 32)
    assert pruned.model.layers[1].mlp.down_proj.in_features == 48
    assert pruned.config.hidden_size == 32 and pruned.config.num_key_value_heads == 1
    assert llm.check_reload(pruned, example) < 1e-5


# ----------------------------------------------------------------------------- rendering saved results
def test_llm_render_from_saved_rows(qb, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    llm = importlib.import_module("llm")
    rows = [llm.Row("act", t, 0.0, 0.3, t, ppl, "text", 1.0) for t, ppl in ((0.1, 30.0), (0.2, 60.0))]
    state = {"base_ppl": 20.0, "base_params": 1000, "base_sample": "base text", "reload_note": "",
             "settings": {"eval_tokens": 64, "context": 16, "calib_tokens": 32},
             "rows": [llm.asdict(r) for r in rows]}
    (tmp_path / "llm.json").write_text(llm.json.dumps(state))
    table = llm.render(tmp_path, "llm")
    assert "| act | 20.0% (20%) | 0 of 3 | 0.300 | 60.00 | 3.00x |" in table
    assert "- act, 20%: 'text'" in table and (tmp_path / "llm.png").exists()


def test_vision_render_gathers_parts(qb, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    vision = importlib.import_module("vision")
    vision.criteria()
    base = {"acc": 90.0, "macs": 3e7, "params": 272000, "latency": 100.0}
    settings = {"speedup": 2.0, "ft_epochs": 0.25, "ft_lr": 0.02, "latency_batch": 64, "test_images": 10000}
    for k, (label, mode) in enumerate((("Taylor", "local"), ("group L2", "local")), start=1):
        row = vision.Row(label, mode, 0.28, 90.0, 15.0, 89.5, 2.07, 1.2, 130000, 1.0)
        part = {"base": base, "settings": settings, "rows": [vision.asdict(row)]}
        (tmp_path / f"vision-part{k}of2.json").write_text(vision.json.dumps(part))
    lines = vision.render(tmp_path).splitlines()
    assert lines[-2].startswith("| group L2 | local") and lines[-1].startswith("| Taylor | local")  # plan order
    assert "| -75.00 | 89.50 | -0.50 | 2.07x | 1.20x |" in lines[-1]
    assert (tmp_path / "vision.png").exists() and (tmp_path / "vision.md").read_text().strip() == "\n".join(lines)


# ----------------------------------------------------------------------------- recovery through the CLI
def test_normalized_model_takes_images_in_0_1(qb) -> None:
    net = qb.resnet.resnet20().eval()
    wrapped = qb.resnet.Normalized(net, 0.3, 0.4).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net((x - 0.3) / 0.4))
    assert {n for n, _ in wrapped.named_buffers()} >= {"mean", "std"}  # saved with the model


def test_recover_cli_benchmarks_render_their_tables(qb, tmp_path: Path) -> None:
    rl = importlib.import_module("recover_llm")
    state = {"settings": {"eval_tokens": 2048, "context": 512, "steps": 8, "batch_size": 4, "seq_len": 128,
                          "train_tokens": 4096, "lr": 3e-4, "warmup_steps": 2, "temperature": 2.0},
             "stages": {"prune": {"command": "depgraph prune base --target params=0.8", "seconds": 90.0}},
             "models": {"unpruned": {"ppl": 20.0, "params": 100}, "pruned": {"ppl": 60.0, "params": 80},
                        "pruned + recovered": {"ppl": 30.0, "params": 80}}}
    md = rl.markdown(state)
    assert "| pruned + recovered | 0.0 M (80.0%) | 30.00 | 1.50x |" in md
    assert "| prune | `depgraph prune base --target params=0.8` | 1.5 min |" in md
    state["stages"]["recover"] = {"command": "depgraph recover pruned", "seconds": 600.0, "threads": 1,
                                  "stopped": "stopped by the 5-minute limit; checkpoint: step 6 saved to r"}
    md = rl.markdown(state)
    assert "| recover | `depgraph recover pruned` (1 thread) | 10.0 min |" in md
    assert md.rstrip().endswith("recover: stopped by the 5-minute limit; checkpoint: step 6 saved to r")
    assert "Training text" not in md and "continues from" not in md
    state["settings"].update(train_held_out_rest=True, data_tokens=600000)
    assert "Training text: the calibration half plus the held-out articles after the measured and the " \
           "--keep-best ones (600000 tokens in all, whole articles)." in rl.markdown(state)
    assert "also trains on" not in rl.markdown(state)
    state["settings"].update(extra_text="/work/foldoc.txt", extra_tokens=1078538)
    assert "The recovery (not the teacher correction) also trains on foldoc.txt (1078538 more tokens), appended " \
           "to that text." in rl.markdown(state)
    assert "moving average" not in rl.markdown(state)
    state["settings"]["ema_decay"] = 0.99
    assert "plus next-token loss, ending on the moving average of the weights (decay 0.99)." in rl.markdown(state)
    state["settings"]["extra_only"] = True
    assert "The recovery (not the teacher correction) trains on foldoc.txt alone (1078538 tokens), not on that " \
           "text." in rl.markdown(state) and "also trains on" not in rl.markdown(state)
    with pytest.raises(SystemExit):
        rl.main(["--extra-only", "--work", str(tmp_path)])
    state["settings"]["start"] = "/work/recovered.pth"
    assert "This recovery continues from an earlier one's result" in rl.markdown(state)
    rr = importlib.import_module("recover_resnet_cli")
    rows = [{"model": "unpruned", "recovery": "none", "acc": 90.0, "macs_speedup": 1.0},
            {"model": "unpruned", "recovery": "labels only", "acc": 90.2, "macs_speedup": 1.0, "seconds": 5.0},
            {"model": "pruned", "recovery": "distillation (T=4) + labels", "acc": 89.9, "macs_speedup": 2.0,
             "seconds": 6.0}]
    md = rr.markdown({"settings": {"test_images": 100, "steps": 8, "batch_size": 4, "lr": 5e-4, "train_images": 40},
                      "stages": {"kd.pt": {"command": "depgraph recover pruned.pt", "seconds": 6.0}}, "rows": rows})
    assert "| pruned | distillation (T=4) + labels | 2.00x | 89.90 | -0.10 | -0.30 | 6 s |" in md
    assert "- `depgraph recover pruned.pt`" in md
    title = "recover kd.pt: 8 steps in 4.0 s on 1 process (1 CPU thread each), 40 samples"
    timing = rr.recover_timing(title)
    assert timing == {"train_seconds": 4.0, "threads": 1} and rr.recover_timing("no table") == {}
    md = rr.markdown({"settings": {"test_images": 100, "steps": 8, "batch_size": 4, "lr": 5e-4, "train_images": 40},
                      "stages": {"kd.pt": {"command": "depgraph recover pruned.pt", "seconds": 6.0, **timing}},
                      "rows": rows})
    assert "- `depgraph recover pruned.pt` — 6 s in all, training 4 s (0.50 s/step, 1 thread)" in md


def test_soup_table_marks_the_average_chosen_on_the_choice_text_only(qb) -> None:
    # the average with the lowest perplexity on the choice text is marked, whatever the measured tokens say
    sl = importlib.import_module("soup_llm")
    models = {"unpruned": {"ppl": 20.0, "val_ppl": 22.0, "params": 100},
              "a": {"file": "a.pth", "ppl": 30.0, "val_ppl": 29.0, "params": 80},
              "average of a + b": {"ppl": 29.0, "val_ppl": 28.5, "params": 80},
              "average of a + c": {"ppl": 28.0, "val_ppl": 28.7, "params": 80}}
    stages = {"average of a + b": {"command": "depgraph average a.pth b.pth --output s.pth", "seconds": 8.4}}
    md = sl.markdown({"settings": {"work": "/w", "machine": "2 cores", "context": 512, "eval_tokens": 8192},
                      "stages": stages, "models": models})
    assert "| average of a + b (lowest on the choice text) |  | 28.50 | 29.00 | 1.45x |" in md
    assert "| average of a + c |  | 28.70 | 28.00 | 1.40x |" in md and "| a | a.pth | 29.00 | 30.00 | 1.50x |" in md
    assert "| average of a + b | `depgraph average a.pth b.pth --output s.pth` | 8 s |" in md


def test_a_continued_run_lists_the_passes_that_made_its_start_in_order(qb) -> None:
    rl = importlib.import_module("recover_llm")
    stages = {"prune": {"command": "p"}, "recover that made the start": {"command": "stale"}, "recover": {"command": "r2"}}
    once = rl.start_stages(stages, {"prune": {"command": "p"}, "recover": {"command": "r1"}})
    assert list(once) == ["prune", "recover that made the start"] and once["recover that made the start"]["command"] == "r1"
    # the start's own stages already list how its start was made: the passes keep their order, the new one last
    made = {**once, "recover": {"command": "r2"}}
    twice = rl.start_stages(stages, made)
    assert [(k, v["command"]) for k, v in twice.items()] == [
        ("prune", "p"), ("recover that made the start (pass 1)", "r1"), ("recover that made the start (pass 2)", "r2")]
    assert rl.start_stages(stages, {}) == {"prune": {"command": "p"}}  # unknown start: no stale pass stays


def test_remove_stale_unlinks_a_shared_folder_and_keeps_what_it_points_at(qb, tmp_path: Path) -> None:
    # A second WORK links the first one's teacher: making it again must drop the link, not the teacher.
    rl = importlib.import_module("recover_llm")
    teacher = tmp_path / "first" / "corrected"
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"weights")
    link = tmp_path / "corrected"
    link.symlink_to(teacher, target_is_directory=True)
    rl.remove_stale(link)
    assert not link.is_symlink() and (teacher / "model.safetensors").read_bytes() == b"weights"
    rl.remove_stale(teacher)
    assert not teacher.exists()
    (tmp_path / "pruned.pth").write_bytes(b"x")
    rl.remove_stale(tmp_path / "pruned.pth")
    rl.remove_stale(tmp_path / "absent.pth")  # nothing there: nothing to do
    assert not (tmp_path / "pruned.pth").exists()


def test_held_out_rest_is_cut_between_whole_articles(qb) -> None:
    # --train-held-out-rest: the articles holding the measured tokens reach neither validation nor training,
    # validation holds at least its tokens, and every article lands whole on one side.
    rl = importlib.import_module("recover_llm")

    def words(text: str) -> dict:
        return {"input_ids": text.split()}

    articles = [" ".join(f"a{i}w{j}" for j in range(n)) for i, n in enumerate((6, 5, 4, 7, 3, 8, 2))]
    val, extra = rl.held_out_articles("\n\n".join(articles), words, measured_tokens=8, val_tokens=9)
    assert val.split("\n\n") == articles[2:4]  # articles 0-1 hold the 8 measured tokens; 2-3 give 11 >= 9
    assert extra.split("\n\n") == articles[4:]
    val, extra = rl.held_out_articles("\n\n".join(articles), words, measured_tokens=6, val_tokens=1)
    assert val == articles[1] and extra.split("\n\n") == articles[2:]  # the measured end on a boundary
    with pytest.raises(ValueError, match="cannot hold"):
        rl.held_out_articles("\n\n".join(articles), words, measured_tokens=20, val_tokens=20)


def test_recover_benchmarks_measure_a_folder_and_a_depgraph_file(qb, tmp_path) -> None:
    # The LLM benchmarks measure a save_pretrained folder and a depgraph.save file of the same base.
    from transformers import LlamaConfig, LlamaForCausalLM

    rl = importlib.import_module("recover_llm")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    base = tmp_path / "base"
    LlamaForCausalLM(cfg).eval().save_pretrained(base)
    pruned = LlamaForCausalLM(cfg).eval()
    for layer in pruned.model.layers:
        mlp = layer.mlp
        tp.prune_linear_out_channels(mlp.gate_proj, list(range(16)))
        tp.prune_linear_out_channels(mlp.up_proj, list(range(16)))
        tp.prune_linear_in_channels(mlp.down_proj, list(range(16)))
    tp.save(pruned, tmp_path / "pruned.pt")
    rows = torch.randint(0, 64, (2, 16))
    got = rl.measure_models({"unpruned": base, "pruned": tmp_path / "pruned.pt"}, rows, base)
    assert got["pruned"]["params"] == got["unpruned"]["params"] - 2 * 3 * 16 * 32
    assert all(1.0 < m["ppl"] < 1e4 and m["eval_seconds"] >= 0 for m in got.values())
    assert got["pruned"]["ppl"] != got["unpruned"]["ppl"]


def test_blockwise_table_sorts_rows_and_states_the_order_of_each(qb) -> None:
    bl = importlib.import_module("blockwise_llm")
    row = dict(params=107_387_328, command="prune BASE ...", peak_bytes=4.2e9)
    state = {"settings": {"machine": "2 CPU cores", "threads": 2, "eval_tokens": 8192, "context": 512, "seq_len": 512},
             "unpruned": {"ppl": 20.0, "params": 134_515_008},
             "rows": {"512 blockwise": dict(row, windows=512, order="blockwise", ppl=30.0, seconds=600.0),
                      "64 blockwise": dict(row, windows=64, order="blockwise", ppl=40.0, seconds=120.0),
                      "64 one pass": dict(row, windows=64, order="one pass", ppl=44.0, seconds=60.0)}}
    lines = bl.markdown(state).splitlines()
    table = [line for line in lines if line.startswith("| 64") or line.startswith("| 512")]
    assert table == ["| 64 | one pass | 107.4 M | 44.00 | 2.20x | 1.0 min | 4.20 GB |",
                     "| 64 | blockwise | 107.4 M | 40.00 | 2.00x | 2.0 min | 4.20 GB |",
                     "| 512 | blockwise | 107.4 M | 30.00 | 1.50x | 10.0 min | 4.20 GB |"]
    assert "(unpruned: 20.00)" in lines[0]
    args = bl.prune_args(Path("B"), Path("t.txt"), Path("o.pth"), 64, 512, "blockwise", 2)
    assert args[-1] == "--blockwise" and "--blockwise" not in bl.prune_args(Path("B"), Path("t.txt"), Path("o.pth"),
                                                                             64, 512, "one pass", 2)
