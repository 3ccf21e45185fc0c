"""Architecture families as data: where the decoder layers are, which linears a layer has, what feeds them.

Quantizers (RTN, GPTQ, AWQ) walk a model layer by layer. Model families differ only in *names*, so each
family is one `ArchFamily` row in `FAMILIES`, not an if-ladder repeated in every algorithm (STYLE.md rule 7).

A `ScaleGroup` is AutoAWQ's triple (previous op, linears it feeds, module whose output to compare). AWQ
multiplies the input channels of `linears` by s and folds 1/s into `prev_op`, so the float model is unchanged:

    y = W (x)  =  (W·diag(s)) (diag(s)⁻¹ x)        x = prev_op(...), W: (out_features, in_features)

Folding 1/s into `prev_op` depends on what it is:
  * RMSNorm, Llama style, y = x̂ · w               ->  w ← w / s                (`norm_offset` 0)
  * RMSNorm, Gemma style, y = x̂ · (1 + w)          ->  w ← (1 + w) / s − 1      (`norm_offset` 1)
  * LayerNorm (OPT), y = x̂ · w + b                 ->  w ← w / s, b ← b / s     (`norm_has_bias`)
  * a Linear (v_proj -> o_proj, up_proj -> down_proj) ->  scale its output rows: W_prev ← diag(1/s) W_prev.
    v -> o is valid only when v's out_features equal o's in_features (no grouped-query mismatch), so
    `scale_groups(layer, family)` drops it otherwise. up -> down is valid because the MLP is
    act(gate(x)) * up(x): up's output enters down_proj linearly.

Gemma 3 layers have two norms around each block (`post_attention_layernorm` normalises the attention
*output*, so it feeds no linear; `pre_feedforward_layernorm` feeds gate/up) and `q_norm`/`k_norm`
(RMSNorm over head_dim after q_proj/k_proj), which would cancel any scale folded into q/k output rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = [
    "ArchFamily",
    "FAMILIES",
    "ScaleGroup",
    "decoder_layers",
    "decoder_linears",
    "family_of",
    "input_groups",
    "linear_layers",
    "scale_groups",
]


@dataclass(frozen=True)
class ScaleGroup:
    prev_op: str  # module (inside the decoder layer) whose output is the input of every linear in `linears`
    linears: tuple[str, ...]  # dotted names inside the decoder layer, all reading the same input
    inspect: str  # module whose output AWQ compares before/after scaling (a block, or the single linear)
    needs_matching_shapes: bool = False  # prev_op is a Linear whose out_features must equal in_features

    def __post_init__(self):
        if not self.linears:
            raise ValueError("ScaleGroup.linears must name at least one linear")


@dataclass(frozen=True)
class ArchFamily:
    name: str  # short family name, e.g. "llama"
    model_types: tuple[str, ...]  # config.model_type values that belong to this family
    layers_path: str  # attribute path from the *ForCausalLM module to the nn.ModuleList of decoder layers
    linears: tuple[str, ...]  # every linear of one decoder layer, in forward order
    scale_groups: tuple[ScaleGroup, ...]  # AWQ scale groups, in forward order
    norm_offset: float = 0.0  # the norm computes x̂ · (norm_offset + weight): 0 Llama, 1 Gemma
    norm_has_bias: bool = False  # LayerNorm with bias (OPT) instead of RMSNorm
    notes: str = ""  # what is unusual about this family

    def __post_init__(self):
        for group in self.scale_groups:
            unknown = set(group.linears) - set(self.linears)
            if unknown:
                raise ValueError(f"{self.name}: scale group names unknown linears {sorted(unknown)}")


_LLAMA_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_V_TO_O = ScaleGroup(
    "self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", needs_matching_shapes=True
)
_UP_TO_DOWN = ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj")

FAMILIES: tuple[ArchFamily, ...] = (
    ArchFamily(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        layers_path="model.layers",
        linears=_LLAMA_LINEARS,
        scale_groups=(
            ScaleGroup("input_layernorm", _QKV, "self_attn"),
            _V_TO_O,
            ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
            _UP_TO_DOWN,
        ),
        notes="Llama, SmolLM2, Mistral, Qwen2 (q/k/v carry a bias), Qwen3 (q_norm/k_norm after q/k).",
    ),
    ArchFamily(
        name="gemma3",
        model_types=("gemma3_text", "gemma3"),
        layers_path="model.layers",
        linears=_LLAMA_LINEARS,
        scale_groups=(
            ScaleGroup("input_layernorm", _QKV, "self_attn"),
            _V_TO_O,
            ScaleGroup("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
            _UP_TO_DOWN,
        ),
        norm_offset=1.0,
        notes=(
            "RMSNorm multiplies by (1 + weight). post_attention_layernorm and post_feedforward_layernorm "
            "normalise block outputs and feed no linear; q_norm/k_norm follow q_proj/k_proj. "
            "Gemma3ForConditionalGeneration keeps the text layers at model.language_model.layers."
        ),
    ),
    ArchFamily(
        name="opt",
        model_types=("opt",),
        layers_path="model.decoder.layers",
        linears=(
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
        ),
        scale_groups=(
            ScaleGroup("self_attn_layer_norm", _QKV, "self_attn"),
            ScaleGroup(
                "self_attn.v_proj", ("self_attn.out_proj",), "self_attn.out_proj", needs_matching_shapes=True
            ),
            ScaleGroup("final_layer_norm", ("fc1",), "fc1"),
            ScaleGroup("fc1", ("fc2",), "fc2"),
        ),
        norm_has_bias=True,
        notes="LayerNorm with bias; fc1 -> ReLU -> fc2 (ReLU(s·z) = s·ReLU(z) for s > 0, so fc1 -> fc2 folds).",
    ),
)

_ALT_LAYER_PATHS = ("model.language_model.layers",)  # multimodal wrappers around a text decoder


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def family_of(model: nn.Module) -> ArchFamily:
    """The `ArchFamily` row for a Hugging Face model, chosen by `model.config.model_type`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise ValueError(f"no architecture table for model_type {model_type!r}; known model types: {known}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers, in order (e.g. 30 LlamaDecoderLayer for SmolLM2-135M)."""
    family = family_of(model)
    for path in (family.layers_path, *_ALT_LAYER_PATHS):
        try:
            layers = _get(model, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"{type(model).__name__}: no decoder layers at {family.layers_path!r}")


def linear_layers(layer: nn.Module, family: ArchFamily) -> dict[str, nn.Linear]:
    """Map dotted name -> nn.Linear for every linear of one decoder layer, in forward order.

    >>> # linear_layers(decoder_layers(m)[0], family_of(m))["mlp.down_proj"].weight.shape  # (576, 1536)
    """
    out = {}
    for name in family.linears:
        module = _get(layer, name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{family.name}: {name} is a {type(module).__name__}, expected nn.Linear")
        out[name] = module
    return out


def scale_groups(layer: nn.Module, family: ArchFamily) -> list[ScaleGroup]:
    """The family's scale groups that apply to this layer (drops v -> o when the shapes do not match)."""
    groups = []
    for group in family.scale_groups:
        if group.needs_matching_shapes:
            prev = _get(layer, group.prev_op)
            if any(_get(layer, name).in_features != prev.out_features for name in group.linears):
                continue
        groups.append(group)
    return groups


def input_groups(layer: nn.Module, family: ArchFamily) -> list[dict[str, nn.Linear]]:
    """The layer's linears grouped by the tensor they read, in forward order: for Llama
    [{q, k, v}, {o}, {gate, up}, {down}]. Taken from the family's scale groups (every linear in one reads the
    same input; v -> o counts here even where AWQ cannot fold it); a linear in none is a group of its own."""
    linears = linear_layers(layer, family)
    groups, placed = [], set()
    for group in family.scale_groups:
        groups.append({name: linears[name] for name in group.linears})
        placed.update(group.linears)
    groups += [{name: linear} for name, linear in linears.items() if name not in placed]
    order = list(linears)
    return sorted(groups, key=lambda g: min(order.index(name) for name in g))


def decoder_linears(model: nn.Module, skip=()) -> dict[str, nn.Linear]:
    """Full module name (as model.named_modules() gives it) -> nn.Linear, for every linear of every decoder
    layer in forward order, less those whose name is in `skip` or ends with '.' + an entry of it."""
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise ValueError(f"skip must be a tuple of names such as ('mlp.down_proj',), got {skip!r}")
    names = {module: name for name, module in model.named_modules()}
    family = family_of(model)
    linears = (linear for layer in decoder_layers(model) for linear in linear_layers(layer, family).values())
    pairs = ((names[linear], linear) for linear in linears)
    return {n: m for n, m in pairs if not any(n == s or n.endswith("." + s) for s in skip)}
