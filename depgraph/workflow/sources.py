"""Load the model to prune: a torchvision/timm name with its weights, a Hugging Face folder, a saved module.

    load_source("resnet50", weights="r50.pth")     torchvision (or timm) architecture + a state dict,
                                                   a depgraph pruned file (tp.save) or a checkpoint dict
    load_source("resnet50", weights="pretrained")  the library's own weights, only from the local cache
    load_source("./my-llama")                      a save_pretrained folder: the class its config names
    load_source("org/model")                       a hub id already in the local Hugging Face cache
    load_source("whole.pt", trust_pickle=True)     a module saved whole with torch.save (runs pickle)

Nothing is downloaded. Every failure is a :class:`~depgraph.errors.SourceError`
naming the file or name and what to give instead, raised before any pruning work.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import SourceError
from .inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from .keep import hf_kept_layers

__all__ = ["Source", "load_source", "find_classifier", "build_vision_model", "unknown_model_message", "FAMILIES"]

#: ``Source.family`` values: how the model was built, hence how it is saved.
FAMILIES = ("torchvision", "timm", "hf", "module")

_FIND_NAMES = (
    "find model names with\n"
    "  python -c \"import torchvision; print(torchvision.models.list_models())\"\n"
    "  python -c \"import timm; print(timm.list_models('*vit*'))\""
)


@dataclass
class Source:
    """A loaded model and what the later steps need to know about it.

    Unpacks as ``model, family, example_inputs = load_source(...)``.

    Attributes:
        model: the model, in eval mode, on the requested device.
        family: one of :data:`FAMILIES`.
        example_inputs: a random batch of the model's input (what the graph is traced with).
        spec: the model's input (:class:`~depgraph.workflow.InputSpec`), for calibration data.
        name: the name or path given.
        weights: where the weights came from (a path, ``"pretrained (cache)"`` or ``"random"``).
        folder: the Hugging Face folder (``hf``) or the pickled file (``module``).
        builder: Python that builds the unpruned definition (``torchvision``/``timm``/``module``),
            which ``tp.load`` needs to read the pruned weights back.
        task: the transformers class the config names (``hf``), e.g. ``"LlamaForCausalLM"``.
        keep: layers whose outputs are never pruned (classifier, embeddings, LM head).
    """

    model: nn.Module
    family: str
    example_inputs: Any
    spec: InputSpec
    name: str
    weights: str = "random"
    folder: Path | None = None
    builder: str | None = None
    task: str | None = None
    keep: list[nn.Module] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.family, self.example_inputs))

    @property
    def is_language_model(self) -> bool:
        """Whether the model reads token ids (its default recipe and calibration data are text)."""
        return self.spec.kind == "text"


def load_source(
    spec: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    *,
    trust_pickle: bool = False,
    input_size: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    batch_size: int = 1,
    seq_len: int = 32,
    device: str | torch.device = "cpu",
) -> Source:
    """Build the model named by ``spec`` with its weights, without downloading anything.

    Args:
        spec: a torchvision or timm model name, a Hugging Face ``save_pretrained`` folder or a hub id
            in the local cache, or a file holding a whole module saved with ``torch.save``.
        weights: for a torchvision/timm name: a state dict file, a ``tp.save`` file of a pruned model,
            a checkpoint dict holding a ``state_dict``/``model`` entry, a whole pickled model (with
            ``trust_pickle``), or ``"pretrained"`` for the library's own weights when they are in the
            local cache. None: random weights (the figures then show the architecture only).
        trust_pickle: allow unpickling a whole saved module (it runs code from the file).
        input_size: height and width of image inputs (default: the model's own).
        input_shape: per-sample input shape of a pickled module (default: guessed from its first layer).
        batch_size: batch of the example input.
        seq_len: tokens of a language model's example input.
        device: where the model and example input go.

    Returns:
        A :class:`Source`.

    Raises:
        SourceError: unknown name, missing/unreadable weights, weights of another architecture,
            a pickled file without ``trust_pickle``, a hub id not in the local cache.

    Example:
        >>> model, family, example = load_source("resnet18", weights="resnet18.pth")
    """
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        if weights is not None:
            raise SourceError(f"{text} is a folder, which holds its own weights: drop weights={os.fspath(weights)!r}")
        source = _hf_folder(path, text, seq_len, input_size)
    elif path.is_file():
        source = _module_file(path, trust_pickle, input_shape, input_size, seq_len)
        if weights is not None:
            _load_weights(source.model, Path(weights), trust_pickle)
            source.weights = os.fspath(weights)
    else:
        source = _named(text, weights, trust_pickle, input_size, seq_len)
    source.model = source.model.to(device).eval()
    source.example_inputs = source.spec.example(batch_size, device)
    return source


# -- torchvision / timm -----------------------------------------------------------------------------
def build_vision_model(name: str, num_classes: int | None = None,
                       ) -> tuple[nn.Module, str, str, tuple[int, int, int], Any] | None:
    """``(model, family, builder code, (C, H, W), pretrained config)`` of a torchvision/timm name, or None.

    ``num_classes`` (None: the library's default) sizes the classifier, as the user trained it.
    """
    classes = f", num_classes={num_classes}" if num_classes is not None else ""
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision

        if name in torchvision.models.list_models():
            # segmentation and detection builders would download ImageNet backbone weights by default
            builder = torchvision.models.get_model_builder(name)
            backbone = "weights_backbone" in inspect.signature(builder).parameters
            extra = {"weights_backbone": None} if backbone else {}
            code = (f"torchvision.models.get_model({name!r}, weights=None"
                    f"{', weights_backbone=None' if backbone else ''}{classes})")
            return builder(weights=None, **extra, **kwargs).eval(), "torchvision", code, (3, 224, 224), None
    if importlib.util.find_spec("timm") is not None:
        import timm

        if timm.is_model(name):
            model = timm.create_model(name, pretrained=False, **kwargs).eval()
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            size = tuple(cfg.get("input_size", (3, 224, 224)))
            code = f"timm.create_model({name!r}, pretrained=False{classes})"
            return model, "timm", code, size, cfg  # type: ignore[return-value]
    return None


def _classes_in_file(model: nn.Module, path: Path, trust_pickle: bool) -> int | None:
    """The class count a weights file's classifier was trained for, when it differs from ``model``'s."""
    head = find_classifier(model)
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor) or not path.is_file():
        return None
    name = next(n for n, m in model.named_modules() if m is head)
    data = _read_file(path, trust_pickle)
    if isinstance(data, nn.Module):
        data = data.state_dict()
    if not isinstance(data, dict) or str(data.get("format", "")).startswith("depgraph.pruned/"):
        return None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    w = data.get(f"{name}.weight", data.get(f"module.{name}.weight"))
    if isinstance(w, torch.Tensor) and w.dim() >= 1 and w.shape[0] != head.weight.shape[0]:
        return int(w.shape[0])
    return None


def _named(name: str, weights: Any, trust_pickle: bool, input_size: int | None, seq_len: int) -> Source:
    built = build_vision_model(name)
    if built is None:
        folder = _cached_hub_folder(name)
        if folder is not None:
            if weights is not None:
                raise SourceError(f"{name} is a Hugging Face checkpoint, which holds its own weights: drop weights=")
            return _hf_folder(folder, name, seq_len, input_size)
        raise SourceError(unknown_model_message(name))
    if weights is not None and os.fspath(weights) != "pretrained":
        classes = _classes_in_file(built[0], Path(weights), trust_pickle)
        if classes is not None:  # trained for another number of classes: build the classifier that size
            built = build_vision_model(name, num_classes=classes)
    model, family, code, (c, h, w), cfg = built  # type: ignore[misc]
    if input_size is not None:
        h = w = input_size
    mean = tuple((cfg or {}).get("mean", IMAGENET_MEAN))
    std = tuple((cfg or {}).get("std", IMAGENET_STD))
    source = Source(model, family, None, InputSpec("image", (c, h, w), mean=mean, std=std), name,
                    builder=code, keep=[m for m in [find_classifier(model)] if m is not None])
    if weights is not None and os.fspath(weights) == "pretrained":
        source.weights = _load_cached_pretrained(model, family, name)
    elif weights is not None:
        _load_weights(model, Path(weights), trust_pickle)
        source.weights = os.fspath(weights)
    return source


def unknown_model_message(name: str) -> str:
    """The refusal of an unknown name: the closest known names and how to list them all."""
    known: list[str] = []
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision

        known += torchvision.models.list_models()
    if importlib.util.find_spec("timm") is not None:
        import timm

        known += timm.list_models()
    close = difflib.get_close_matches(name, list(dict.fromkeys(known)), n=5)
    hint = f"did you mean: {', '.join(close)}?\n" if close else ""
    return (f"unknown model {name!r}: not a torchvision or timm name, not a folder or file, and not a Hugging Face "
            f"hub id in the local cache (nothing is downloaded).\n{hint}{_FIND_NAMES}")


def find_classifier(model: nn.Module) -> nn.Module | None:
    """The layer producing the logits: timm's ``get_classifier()``, else the last Linear, else the last conv."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    for kind in (nn.Linear, nn.modules.conv._ConvNd):
        layers = [m for m in model.modules() if isinstance(m, kind)]
        if layers:
            return layers[-1]
    return None


def _read_file(path: Path, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise SourceError(f"weights file {os.fspath(path)!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # torch's zip format, or a bare pickle
        raise SourceError(f"cannot read {os.fspath(path)!r} as a torch file (it is neither torch.save's zip "
                          "format nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_pickle:
            raise SourceError(
                f"{os.fspath(path)!r} holds pickled objects (a whole saved model?); unpickling runs code from the "
                "file, so it is only done when you trust it: pass trust_pickle=True (--trust-pickle)") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError ... for a non-torch file
        raise SourceError(f"cannot read {os.fspath(path)!r} as a torch file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:  # the pickle names the class by module; that module is not importable here
        raise SourceError(f"{os.fspath(path)!r} is a pickled model whose code is in module {e.name!r}, which "
                          "cannot be imported here: run from the folder that defines it, or add that folder "
                          "to PYTHONPATH") from None
    except AttributeError as e:  # the module imports but no longer defines the class
        raise SourceError(f"{os.fspath(path)!r} is a pickled model whose class is no longer where it was saved "
                          f"from ({e}): unpickling needs the same code") from None


def _load_weights(model: nn.Module, path: Path, trust_pickle: bool) -> None:
    """A state dict, a depgraph pruned file, a checkpoint dict or a whole model, into ``model``."""
    from ..serialization import load_state_dict

    data = _read_file(path, trust_pickle)
    if isinstance(data, nn.Module):
        data = data.state_dict()
    if isinstance(data, dict) and str(data.get("format", "")).startswith("depgraph.pruned/"):
        try:
            load_state_dict(model, data)
        except Exception as e:  # noqa: BLE001 - re-raised as the source's error, model definition named
            raise SourceError(f"{os.fspath(path)!r} is a depgraph pruned file of another model "
                              f"({type(model).__name__} refuses it): {e}") from None
        return
    if isinstance(data, dict):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
        if all(isinstance(k, str) and k.startswith("module.") for k in data):
            data = {k[len("module."):]: v for k, v in data.items()}  # saved from DataParallel/DDP
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise SourceError(f"{os.fspath(path)!r} is not a state dict (a dict of tensors): it holds "
                          f"{type(data).__name__}")
    result = _fit(model, data, path)
    if result:
        raise SourceError(result)


def _fit(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or wrong):
        model.load_state_dict(state)
        return ""
    lines = [f"{os.fspath(path)!r} does not fit {type(model).__name__} (weights of another model or another "
             "number of classes?):"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong)):
        if items:
            lines.append(f"  {label} ({len(items)}): " + ", ".join(items[:4]) + (" ..." if len(items) > 4 else ""))
    return "\n".join(lines)


def _hf_hub_cache() -> str | None:
    """The Hugging Face hub cache folder as the environment says *now* (``HF_HUB_CACHE``, else ``HF_HOME/hub``).

    ``huggingface_hub`` reads these variables once, when it is imported; reading them
    at each call lets a program (or a test) point at another cache afterwards. None:
    the library's default.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _torch_hub_file(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url`` (``$TORCH_HOME/hub/checkpoints/<name>``)."""
    from torch.hub import get_dir

    return Path(get_dir()) / "checkpoints" / os.path.basename(url)


def _load_cached_pretrained(model: nn.Module, family: str, name: str) -> str:
    """The library's own weights from the local cache (torch hub / Hugging Face hub), never downloaded.

    torchvision keeps them in the torch hub cache (``$TORCH_HOME/hub/checkpoints``); timm in the
    Hugging Face hub cache under the model's ``hf_hub_id`` (``$HF_HOME/hub``), older timm
    weights in the torch hub cache under the file name of their ``url``.
    """
    if family == "torchvision":
        import torchvision

        file = _torch_hub_file(torchvision.models.get_model_weights(name).DEFAULT.url)
        if not file.is_file():
            raise SourceError(f"the pretrained weights of {name} are not in the local cache ({file}); nothing is "
                              "downloaded: give a weights file instead")
        _load_weights(model, file, False)
        return f"pretrained ({file})"
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    hub_id = cfg.get("hf_hub_id")
    file = None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [n for n in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin") if n]
        for fname in names:
            found = try_to_load_from_cache(hub_id, fname, cache_dir=_hf_hub_cache())
            if isinstance(found, str):
                file = Path(found)
                break
    if file is None and cfg.get("url") and _torch_hub_file(cfg["url"]).is_file():
        file = _torch_hub_file(cfg["url"])
    if file is None:
        where = f"{hub_id} in the Hugging Face cache" if hub_id else "no hub id"
        if cfg.get("url"):
            where += f", {_torch_hub_file(cfg['url'])}"
        raise SourceError(f"the pretrained weights of {name} are not in the local Hugging Face cache "
                          f"({where}); nothing is downloaded: give a weights file instead")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        problem = _fit(model, load_file(file), file)
        if problem:
            raise SourceError(problem)
    else:
        _load_weights(model, file, False)
    return f"pretrained ({file})"


# -- whole pickled module ---------------------------------------------------------------------------
def _module_file(path: Path, trust_pickle: bool, input_shape: tuple[int, ...] | None,
                 input_size: int | None, seq_len: int) -> Source:
    data = _read_file(path, trust_pickle)
    if not isinstance(data, nn.Module):
        if isinstance(data, dict) and "format" in data:
            kind = "a depgraph pruned file"
        elif isinstance(data, dict):
            kind = "a state dict (weights without the architecture)"
        else:
            kind = f"a {type(data).__name__}"
        raise SourceError(f"{os.fspath(path)!r} holds {kind}, not a whole model: give the model's name and this "
                          "file as its weights (--weights), or a file written by torch.save(model, path)")
    spec = _guess_spec(data, input_shape, input_size, seq_len, path)
    code = f"torch.load({os.fspath(path)!r}, weights_only=False)"
    return Source(data, "module", None, spec, os.fspath(path), weights=os.fspath(path), folder=path,
                  builder=code, keep=[m for m in [find_classifier(data)] if m is not None])


def _guess_spec(model: nn.Module, shape: tuple[int, ...] | None, size: int | None, seq_len: int,
                path: Path) -> InputSpec:
    if shape is not None:
        return InputSpec("image" if len(shape) == 3 else "tensor", tuple(shape))
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))), None)
    if isinstance(first, nn.Conv2d):
        return InputSpec("image", (first.in_channels, size or 224, size or 224), mean=None, std=None)
    if isinstance(first, nn.Linear):
        return InputSpec("tensor", (first.in_features,))
    if isinstance(first, nn.Embedding):
        return InputSpec("text", (seq_len,), vocab_size=first.num_embeddings)
    raise SourceError(f"cannot tell what {os.fspath(path)!r}'s {type(model).__name__} takes as input: give "
                      "input_shape (--input-shape C,H,W)")


# -- Hugging Face -----------------------------------------------------------------------------------
def _cached_hub_folder(name: str) -> Path | None:
    if name.count("/") != 1 or importlib.util.find_spec("huggingface_hub") is None:
        return None
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, local_files_only=True, cache_dir=_hf_hub_cache())
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), malformed id ...
        return None
    return Path(folder) if (Path(folder) / "config.json").is_file() else None


def _hf_folder(folder: Path, name: str, seq_len: int, input_size: int | None) -> Source:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise SourceError(f"{folder} is a folder without config.json: give a folder written by save_pretrained")
    if importlib.util.find_spec("transformers") is None:
        raise SourceError(f"{folder} is a Hugging Face checkpoint; install transformers: pip install 'depgraph[hf]'")
    import transformers

    arch = (json.loads(config_file.read_text()).get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if arch else transformers.AutoModel
    if cls is None:
        raise SourceError(f"{folder}/config.json names the class {arch!r}, which this transformers "
                          f"({transformers.__version__}) does not have")
    try:
        model = cls.from_pretrained(folder, local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot load {folder} with {cls.__name__}.from_pretrained: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return Source(model, "hf", None, _hf_spec(model, folder, seq_len, input_size), name, weights=str(folder),
                  folder=folder, task=type(model).__name__, keep=hf_kept_layers(model))


def _hf_spec(model: nn.Module, folder: Path, seq_len: int, input_size: int | None) -> InputSpec:
    config = model.config
    key = getattr(model, "main_input_name", "input_ids")
    if key == "input_ids":
        return InputSpec("text", (seq_len,), key=key, tokenizer=str(folder),
                         vocab_size=getattr(config, "vocab_size", None))
    if key == "pixel_values":
        vision = getattr(config, "vision_config", config)
        size = input_size or getattr(vision, "image_size", 224)
        size = size if isinstance(size, int) else int(size[0])
        c = getattr(vision, "num_channels", 3)
        pre = folder / "preprocessor_config.json"
        prep = json.loads(pre.read_text()) if pre.is_file() else {}
        mean = tuple(prep.get("image_mean", (0.5,) * c))
        std = tuple(prep.get("image_std", (0.5,) * c))
        return InputSpec("image", (c, size, size), key=key, mean=mean, std=std)
    if key == "input_values":  # raw audio (wav2vec2, HuBERT): one second at 16 kHz
        return InputSpec("tensor", (16000,), key=key)
    if key == "input_features":  # log-mel features (Whisper, speech encoders)
        bins = getattr(config, "num_mel_bins", 80)
        return InputSpec("tensor", (bins, 3000), key=key)
    raise SourceError(f"{type(model).__name__} takes {key!r}, an input depgraph cannot make an example of")
