"""ViT weights as users have them: checkpoint files, Hugging Face folders and the hub.

* :func:`load_state_dict` reads a PyTorch or safetensors checkpoint (``weights_only``), a
  ``transformers`` ``Dinov2Model`` folder or its ``model.safetensors`` (keys mapped to
  timm's names), unwrapping the usual training wrappers.
* :func:`architecture` reads what a state dict is (patch size, width, depth, LayerScale,
  registers, MLP width, position grid) from its tensors' shapes; :func:`mismatches` compares
  two; :func:`infer_model` names the timm model a checkpoint is, so ``--model`` can be left out.
* :func:`pretrained_weights` finds a timm model's released weights in the local Hugging Face
  or torch hub cache, or downloads them (through ``huggingface_hub``, which caches them) unless
  ``HF_HUB_OFFLINE`` is set.

torch is imported by the functions that need it, never by importing this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .base import MissingFileError

__all__ = ["Architecture", "architecture", "infer_model", "load_state_dict", "mismatches",
           "pretrained_weights", "from_transformers"]

# Checkpoint wrappers, most preferred first: DINO training checkpoints hold "teacher" and
# "student"; the teacher is the one evaluated.
_WRAPPER_KEYS = ("teacher", "model", "state_dict", "model_ema", "state_dict_ema", "module",
                 "student", "net", "backbone")
_STRIP_PREFIXES = ("module.", "_orig_mod.")
# Files a Hugging Face model folder keeps its weights in, most preferred first.
_HF_FILES = ("model.safetensors", "pytorch_model.bin")

_log = logging.getLogger(__name__)


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"ViT weights need torch ({err}); install it with pip install 'uniap[vit]', or use "
            "the default features (features='default')"
        ) from err
    return torch


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint into a flat ``{name: tensor}`` state dict in timm's names, on the CPU.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` file; a PyTorch file (``.pth``, ``.pt``, ``.bin``, ...) read with
        ``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain
        containers only, never arbitrary pickled code (``argparse.Namespace``, which DINO
        training checkpoints hold in ``"args"``, is allowed); or a Hugging Face model folder
        (``save_pretrained``'s ``model.safetensors`` or ``pytorch_model.bin``).

    Returns
    -------
    dict of str to torch.Tensor
        The state dict.  Wrappers are unwrapped (the first of ``"teacher"``, ``"model"``,
        ``"state_dict"``, ``"model_ema"``, ``"state_dict_ema"``, ``"module"``, ``"student"``,
        ``"net"``, ``"backbone"`` holding a dict); ``"module."`` and ``"_orig_mod."`` prefixes
        are stripped; if some keys start with ``"backbone."`` only those are kept, without the
        prefix (DINO keeps its projection head beside the backbone).  A ``transformers``
        DINOv2 state dict (``embeddings.*``, ``encoder.layer.N.*``) is renamed to timm's
        names, its query, key and value projections fused into ``qkv``
        (:func:`from_transformers`).

    Raises
    ------
    MissingFileError
        If the path does not exist (also a FileNotFoundError and a ValueError).
    ValueError
        If the file cannot be read as a checkpoint, holds no tensors, or is a folder holding
        no Hugging Face weights file.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "w.pth")
    >>> torch.save({"teacher": {"module.backbone.cls_token": torch.zeros(1, 1, 4)}}, path)
    >>> list(load_state_dict(path))
    ['cls_token']
    """
    torch = _torch()
    path = Path(path)
    if not path.exists():
        raise MissingFileError(2, "weights file not found", str(path))
    if path.is_dir():
        found = next((path / name for name in _HF_FILES if (path / name).is_file()), None)
        if found is None:
            raise ValueError(
                f"weights {str(path)!r} is a directory without a Hugging Face weights file "
                f"({' or '.join(_HF_FILES)}); pass a checkpoint file or a save_pretrained folder"
            )
        path = found
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError as err:
                raise ImportError(
                    f"reading {str(path)!r} needs the safetensors package: pip install safetensors"
                ) from err
            obj = load_file(str(path), device="cpu")
        else:
            import argparse

            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise
    except Exception as err:  # zip/pickle/header errors of every kind
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot read weights {str(path)!r} as a PyTorch or safetensors checkpoint: {reason}"
        ) from err
    state = _unwrap(obj, torch)
    if not state:
        raise ValueError(f"weights {str(path)!r} hold no tensors (found {type(obj).__name__})")
    return from_transformers(state)


def read_hf_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``config.json`` of a Hugging Face model folder (or beside a file in one), or None."""
    path = Path(path)
    candidate = (path if path.is_dir() else path.parent) / "config.json"
    try:
        with open(candidate, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _unwrap(obj: Any, torch) -> dict[str, Any]:
    """The tensor dict inside common checkpoint wrappers, with wrapper prefixes stripped."""
    for _ in range(4):  # wrappers nest at most a few levels deep
        if not isinstance(obj, dict) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        return {}
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


# transformers' Dinov2Model names (both the 4.x "attention.attention.query" and the 5.x
# "attention.q_proj" layouts) -> timm's VisionTransformer names.
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = {
    "norm1": "norm1", "norm2": "norm2",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2",  # SwiGLU (ViT-g)
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
}
_HF_QKV = {"attention.attention.query": 0, "attention.attention.key": 1,
           "attention.attention.value": 2, "attention.q_proj": 0, "attention.k_proj": 1,
           "attention.v_proj": 2}
_HF_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def from_transformers(state: dict[str, Any]) -> dict[str, Any]:
    """A ``transformers`` DINOv2 state dict in timm's names; any other state dict unchanged.

    ``embeddings.*``, ``encoder.layer.N.*`` and ``layernorm.*`` (optionally under a
    ``dinov2.`` prefix, as ``Dinov2ForImageClassification`` saves them) become
    ``cls_token``, ``pos_embed``, ``reg_token``, ``patch_embed.proj``, ``blocks.N.*`` and
    ``norm``; the separate query, key and value projections are concatenated into timm's
    fused ``attn.qkv``; ``mask_token`` (used only for masked training) is dropped.

    Examples
    --------
    >>> import torch
    >>> hf = {"embeddings.cls_token": torch.zeros(1, 1, 2), "layernorm.weight": torch.ones(2),
    ...       **{f"encoder.layer.0.attention.{n}.weight": torch.eye(2)
    ...          for n in ("q_proj", "k_proj", "v_proj")}}
    >>> sorted((k, tuple(v.shape)) for k, v in from_transformers(hf).items())
    [('blocks.0.attn.qkv.weight', (6, 2)), ('cls_token', (1, 1, 2)), ('norm.weight', (2,))]
    """
    if any(k.startswith("dinov2.embeddings.") for k in state):
        state = {k[len("dinov2."):]: v for k, v in state.items() if k.startswith("dinov2.")}
    if not any(k.startswith("embeddings.patch_embeddings.") or k.startswith("encoder.layer.")
               for k in state):
        return state
    torch = _torch()
    out: dict[str, Any] = {}
    qkv: dict[tuple[int, str], list] = {}
    for key, value in state.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        match = _HF_LAYER_KEY.match(key)
        if match is None:
            if key != "embeddings.mask_token":
                out[key] = value  # reported as unexpected when loaded
            continue
        block, name, kind = int(match.group(1)), match.group(2), match.group(3)
        if name in _HF_QKV:
            qkv.setdefault((block, kind), [None, None, None])[_HF_QKV[name]] = value
        elif f"{name}.{kind}" in _HF_LAYER:  # layer_scale1.lambda1
            out[f"blocks.{block}.{_HF_LAYER[f'{name}.{kind}']}"] = value
        elif name in _HF_LAYER:
            out[f"blocks.{block}.{_HF_LAYER[name]}.{kind}"] = value
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        if any(p is None for p in parts):
            raise ValueError(f"a transformers DINOv2 checkpoint with layer {block}'s query, key "
                             "and value incomplete")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out


@dataclass(frozen=True)
class Architecture:
    """What a ViT state dict is, read from its tensors' shapes (None: not found in it).

    Attributes
    ----------
    patch : int or None
        Patch size (the patch embedding's kernel).
    width : int or None
        Embedding dimension.
    depth : int or None
        Number of blocks.
    layerscale : bool or None
        Whether blocks scale their branches (DINOv2, DINOv3: ``ls1.gamma`` / ``gamma_1``).
    registers : int or None
        Register tokens.
    mlp : int or None
        Output width of the first MLP layer (4 x width for a plain ViT).
    grid : int or None
        Side of the (square) position-embedding grid; None for models without one (RoPE).
    qkv_bias : bool or None
        Whether the attention's query/key/value projection has a bias (``qkv.bias``, or
        DINOv3's ``q_bias`` / ``v_bias``).
    """

    patch: int | None = None
    width: int | None = None
    depth: int | None = None
    layerscale: bool | None = None
    registers: int | None = None
    mlp: int | None = None
    grid: int | None = None
    qkv_bias: bool | None = None

    def describe(self) -> str:
        """``"patch 14, width 384, depth 12, LayerScale, 37x37 position grid"``."""
        parts = []
        if self.patch is not None:
            parts.append(f"patch {self.patch}")
        if self.width is not None:
            parts.append(f"width {self.width}")
        if self.depth is not None:
            parts.append(f"depth {self.depth}")
        if self.layerscale is not None:
            parts.append("LayerScale" if self.layerscale else "no LayerScale")
        if self.registers:
            parts.append(f"{self.registers} registers")
        if self.mlp is not None:
            parts.append(f"MLP {self.mlp}")
        if self.grid is not None:
            parts.append(f"{self.grid}x{self.grid} position grid")
        if self.qkv_bias is not None:
            parts.append("qkv bias" if self.qkv_bias else "no qkv bias")
        return ", ".join(parts) or "no ViT parameters recognised"


def architecture(state: dict[str, Any]) -> Architecture:
    """The :class:`Architecture` of a state dict in timm's names.

    Examples
    --------
    >>> import timm
    >>> net = timm.create_model("vit_small_patch14_dinov2", depth=2, embed_dim=24, num_heads=2)
    >>> architecture(net.state_dict()).describe()
    'patch 14, width 24, depth 2, LayerScale, MLP 96, 37x37 position grid, qkv bias'
    """
    def shape(key: str) -> tuple[int, ...] | None:
        value = state.get(key)
        return None if value is None else tuple(int(s) for s in value.shape)

    proj = shape("patch_embed.proj.weight")
    patch = width = None
    if proj is not None and len(proj) == 4:
        width, patch = proj[0], proj[-1] if proj[-1] == proj[-2] else None
    blocks = {int(m.group(1)) for k in state for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    depth = max(blocks) + 1 if blocks else None
    layerscale = None
    if 0 in blocks:
        layerscale = any(k in state for k in ("blocks.0.ls1.gamma", "blocks.0.gamma_1"))
    reg = shape("reg_token") or shape("register_tokens") or shape("storage_tokens")
    registers = reg[1] if reg is not None and len(reg) == 3 else (0 if proj is not None else None)
    fc1 = shape("blocks.0.mlp.fc1.weight") or shape("blocks.0.mlp.w12.weight")
    mlp = fc1[0] if fc1 is not None else None
    grid = None
    pos = shape("pos_embed")
    if pos is not None and len(pos) == 3:
        for tokens in (pos[1], pos[1] - 1):  # with or without the class token's position
            side = math.isqrt(max(tokens, 0))
            if side and side * side == tokens:
                grid = side
                break
    qkv_bias = None
    if any(k.startswith("blocks.0.attn.") for k in state):
        qkv_bias = any(f"blocks.0.attn.{n}" in state for n in ("qkv.bias", "q_bias", "v_bias"))
    return Architecture(patch, width, depth, layerscale, registers, mlp, grid, qkv_bias)


def mismatches(checkpoint: Architecture, model: Architecture) -> list[str]:
    """What differs between two architectures, ignoring what either does not know.

    The position grid is left out: a checkpoint's grid is matched by building the model at
    that size (``img_size``), not by changing the model.

    Examples
    --------
    >>> mismatches(Architecture(patch=14, layerscale=True), Architecture(patch=8, layerscale=False))
    ['patch size 14 (model: 8)', 'LayerScale (model: none)']
    """
    out = []
    for f in fields(Architecture):
        a, b = getattr(checkpoint, f.name), getattr(model, f.name)
        if f.name == "grid" or a is None or b is None or a == b:
            continue
        if f.name in ("layerscale", "qkv_bias"):
            what = {"layerscale": "LayerScale", "qkv_bias": "qkv bias"}[f.name]
            out.append(f"{what} (model: none)" if a else f"no {what} (model: {what})")
        else:
            label = {"patch": "patch size", "mlp": "MLP width"}.get(f.name, f.name)
            out.append(f"{label} {a} (model: {b})")
    return out


def _meta_architecture(name: str, timm, torch, **kwargs: Any) -> Architecture | None:
    """A timm model's architecture, built on the meta device (no memory, no init cost)."""
    try:
        with torch.device("meta"):
            net = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception:  # a name this timm cannot build with these arguments
        return None
    return architecture(net.state_dict())


def _candidates(timm) -> list[str]:
    """timm's self-supervised ViT releases a checkpoint is most likely to be, DINO first."""
    names = [n for n in timm.list_pretrained("vit_*") if re.search(r"\.(dino|lvd)", n)]
    order = {"dino": 0, "lvd142m": 1, "lvd1689m": 2}
    return sorted(names, key=lambda n: (order.get(n.split(".", 1)[1].split("_")[0], 3), n))


def infer_model(state: dict[str, Any], hf_config: dict[str, Any] | None = None
                ) -> tuple[str, dict[str, Any]] | None:
    """The timm model (name, extra keyword arguments) whose architecture ``state`` has.

    A released DINO, DINOv2 or DINOv3 model of equal patch size, width, depth, LayerScale,
    registers and MLP width is named as it is; otherwise a model of the closest family is
    built with the checkpoint's sizes (``embed_dim``, ``depth``, ``num_heads`` from a
    Hugging Face ``config.json`` when there is one, else width / 64, ``mlp_ratio``,
    ``reg_tokens``).  ``img_size`` is added when the checkpoint's position grid differs from
    the model's default.  None when ``state`` holds no ViT patch embedding.

    Examples
    --------
    >>> import timm
    >>> net = timm.create_model("vit_small_patch14_dinov2", depth=2, embed_dim=128, num_heads=2)
    >>> infer_model(net.state_dict())
    ('vit_small_patch14_dinov2', {'patch_size': 14, 'embed_dim': 128, 'depth': 2, 'num_heads': 2, 'mlp_ratio': 4.0})
    """
    import timm

    torch = _torch()
    arch = architecture(state)
    if arch.patch is None or arch.width is None or arch.depth is None:
        return None
    for name in _candidates(timm):
        if f"patch{arch.patch}" not in name:
            continue
        known = _meta_architecture(name, timm, torch)
        if known is not None and not mismatches(arch, known):
            return name, _grid_kwargs(arch, known)
    # No release matches: the family's generic model with the checkpoint's sizes.
    if arch.layerscale:
        base = f"vit_small_patch14_{'reg4_' if arch.registers else ''}dinov2"
    else:
        base = "vit_small_patch16_224"
    heads = None
    if hf_config and isinstance(hf_config.get("num_attention_heads"), int):
        heads = hf_config["num_attention_heads"]
    if not heads or arch.width % heads:
        heads = max(1, arch.width // 64)
        while arch.width % heads:
            heads -= 1
    kwargs: dict[str, Any] = {"patch_size": arch.patch, "embed_dim": arch.width,
                              "depth": arch.depth, "num_heads": heads}
    if arch.mlp is not None:
        kwargs["mlp_ratio"] = arch.mlp / arch.width
    if arch.registers and arch.registers != 4:
        kwargs["reg_tokens"] = arch.registers
    built = _meta_architecture(base, timm, torch, **kwargs)
    if built is None or mismatches(arch, built):
        return None
    return base, {**kwargs, **_grid_kwargs(arch, built)}


def _grid_kwargs(arch: Architecture, model: Architecture) -> dict[str, Any]:
    """``{"img_size": ...}`` when the checkpoint's position grid is not the model's."""
    if arch.grid is None or model.grid is None or arch.grid == model.grid or arch.patch is None:
        return {}
    return {"img_size": arch.grid * arch.patch}


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network (read now, not at import)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def pretrained_weights(model_name: str, cfg: dict[str, Any]) -> Path:
    """A timm model's released weights: from the local caches, else downloaded and cached.

    Looks in the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) for the model's
    ``hf_hub_id``, then in the torch hub cache for its ``url``'s file; when neither holds them
    and ``HF_HUB_OFFLINE`` is not set, downloads them with ``huggingface_hub``
    (``hf_hub_download``: progress bar, cached for next time) or, for a model with only a
    URL, into the torch hub cache.

    Parameters
    ----------
    model_name : str
        The timm model name (for messages).
    cfg : dict
        The model's ``pretrained_cfg``.

    Raises
    ------
    ValueError
        Nothing cached and offline, or the download failed; the message names the Hugging
        Face repository, the original release's file and how to pass weights by hand.
    """
    torch = _torch()
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(_HF_FILES)
    revision = cfg.get("hf_hub_revision")
    hub_file = None
    if url:
        from urllib.parse import urlparse

        name = os.path.basename(urlparse(url).path)
        if name and not name.endswith(".npz"):
            hub_file = Path(torch.hub.get_dir()) / "checkpoints" / name
    if hub_id:
        found = _hf_download(hub_id, names, revision, local_only=True)
        if found is not None:
            return found
    if hub_file is not None and hub_file.is_file():
        return hub_file
    reason = "not in the local caches"
    if offline():
        reason += " and HF_HUB_OFFLINE is set"
    elif hub_id:
        try:
            found = _hf_download(hub_id, names, revision, local_only=False)
        except Exception as err:  # network, authentication, disk: all say why in one line
            reason = f"not cached, and downloading {hub_id} failed: {_first_line(err)}"
        else:
            if found is not None:
                _log.info("downloaded %s weights to %s", model_name, found)
                return found
            reason = f"not cached, and {hub_id} has none of {', '.join(names)}"
    elif hub_file is not None:
        try:
            hub_file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(hub_file), progress=True)
            return hub_file
        except Exception as err:
            reason = f"not cached, and downloading {url} failed: {_first_line(err)}"
    where = [f"the Hugging Face repository {hub_id}"] if hub_id else []
    if url:
        where.append(f"the original release {url}")
    source = " or ".join(where) if where else "no known source for this model"
    raise ValueError(
        f"no weights for {model_name!r}: {reason}.  They come from {source}; download them "
        "while online (unset HF_HUB_OFFLINE) or pass a checkpoint file or Hugging Face folder "
        "as weights=FILE (CLI: --weights FILE), or use the default features (--features default)."
    )


def _hf_download(hub_id: str, names: list[str], revision: str | None, local_only: bool) -> Path | None:
    """The first of ``names`` in the repository (cache only when ``local_only``), or None."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for name in names:
        try:
            found = hf_hub_download(hub_id, name, revision=revision, local_files_only=local_only)
        except LocalEntryNotFoundError:  # not cached (or, online, the Hub out of reach)
            if local_only:
                continue
            raise
        except EntryNotFoundError:  # the repository has no such file: try the next name
            continue
        if found and os.path.isfile(found):
            return Path(found)
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
