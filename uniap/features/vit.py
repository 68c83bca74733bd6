"""Patch features from a timm Vision Transformer (DINO ViT-S/8 by default).

torch and timm are imported when a :class:`VitFeatures` is built, never when this module is
imported.  Weights come from a file or Hugging Face folder the caller names (the model is
inferred from it when not named), or are the model's release, from the local Hugging Face /
torch hub cache or downloaded unless ``HF_HUB_OFFLINE`` is set (:mod:`uniap.features.weights`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import FeatureGrid, working_shape
from .image import ImageLike, load_image
from .weights import (
    architecture,
    infer_model,
    load_state_dict,
    mismatches,
    pretrained_weights,
    read_hf_config,
)

__all__ = ["DEFAULT_MODEL", "VitFeatures", "load_state_dict"]

DEFAULT_MODEL = "vit_small_patch8_224.dino"
LAYER_OUTPUTS = ("tokens", "keys")
DTYPES = ("float32", "float16", "bfloat16")

_log = logging.getLogger(__name__)


def _import_torch_timm():
    try:
        import timm
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"VitFeatures needs torch and timm ({err}); install them with "
            "pip install 'uniap[vit]', or use the default features (features='default')"
        ) from err
    return torch, timm


class VitFeatures:
    """Patch tokens or attention keys of the last block of a timm Vision Transformer.

    Parameters
    ----------
    model : str, optional
        Any timm ViT-style model name (``timm.list_models("vit_*")``; DeiT, EVA, register
        and DINOv3 variants work too), with or without a pretrained tag.  Built with
        ``timm.create_model(model, pretrained=False, num_classes=0, dynamic_img_size=True,
        **model_kwargs)``, so images of any size work (position embeddings are interpolated).
        When None: the model ``weights`` hold, read from their shapes
        (:func:`uniap.features.weights.infer_model`: DINO, DINOv2 and DINOv3 releases by name,
        other sizes as their family's model), else ``"vit_small_patch8_224.dino"``.
    weights : str or path-like, optional
        A checkpoint file (``.pth``, ``.pt``, ``.bin`` or ``.safetensors``; see
        :func:`load_state_dict` for the wrappers and prefixes understood, e.g. DINO's released
        ``dino_deitsmall8_pretrain.pth``, a full DINO ``checkpoint.pth``, DINOv2's
        ``dinov2_vits14_pretrain.pth``), or a Hugging Face ``transformers`` ``Dinov2Model``
        folder or its ``model.safetensors`` (keys mapped to timm's).  Weights whose patch
        size, width, depth, LayerScale, registers or MLP differ from a named ``model`` are
        refused (the message names the model they fit); a different position grid is matched
        by building the model at the checkpoint's size.  When None, the model's released
        weights are taken from the local Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``)
        or torch hub cache, or downloaded through ``huggingface_hub`` (and cached) unless
        ``HF_HUB_OFFLINE`` is set.
    layer_output : {"tokens", "keys"}, default "tokens"
        ``"tokens"``: the patch tokens after the last block and the final norm (C = embed dim).
        ``"keys"``: the attention keys of the last block (the ``k`` part of its ``qkv``
        projection, after the model's key norm if any, before any rotary position embedding,
        heads concatenated), as used by the released S2-UniSeg code, UnSAM and CutLER.  CLS and
        register tokens are dropped either way.
    device : str, default "cpu"
        torch device, e.g. ``"cuda"`` or ``"cuda:1"``.
    max_side : int, optional
        Shrink images whose longer side exceeds this before the model sees them.  Attention
        costs grow with the square of the token count: with patch 8, a 1024-pixel side is
        already 128 tokens along it.
    dtype : {"float32", "float16", "bfloat16"}, default "float32"
        The model's parameter dtype (half precision only makes sense on a GPU).  Features are
        returned as float32 either way.
    **model_kwargs
        Passed to ``timm.create_model`` (``depth``, ``embed_dim``, ``num_heads``,
        ``img_size``, ...), for models not registered under a name of their own.

    Raises
    ------
    ValueError
        Unknown model name, a model that is not a ViT with square patches, an unknown
        ``layer_output`` or ``dtype``, weights that cannot be read or do not fit the model (the
        differences, the right ``model`` or the missing parameter names are given), or no
        weights given and none cached or downloadable (the message says where they come from
        and how to pass ``weights``).
    MissingFileError
        If ``weights`` names a file that does not exist.
    ImportError
        If torch or timm is not installed.

    Notes
    -----
    Preprocessing: the image (uint8 RGB) is scaled to [0, 1]; resized (antialiased bilinear)
    so that each side is rounded down to a multiple of the patch size (after the ``max_side``
    scaling; at least one patch), so the grid is ``(H // p, W // p)``: 481x321 becomes 480x320
    with patch 8 and the grid is 60x40; then normalised with the mean and std of the model's
    pretrained configuration.  The grid's ``fit`` is ``"resize"`` unless the sides were
    already multiples of the patch size (then ``"pad"``, with nothing padded);
    :meth:`FeatureGrid.to_image` maps cells back to the original pixels either way.  The model
    runs under ``torch.inference_mode()``.

    Examples
    --------
    A randomly initialised tiny model saved to a file and loaded back (real use passes a
    downloaded checkpoint, e.g. ``VitFeatures(weights="dino_deitsmall8_pretrain.pth")``):

    >>> import tempfile, os, numpy as np, torch, timm
    >>> kw = dict(depth=1, embed_dim=24, num_heads=2)
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.pth")
    >>> tiny = timm.create_model("vit_tiny_patch16_224", num_classes=0, **kw)
    >>> torch.save(tiny.state_dict(), path)
    >>> vit = VitFeatures("vit_tiny_patch16_224", weights=path, layer_output="keys", **kw)
    >>> grid = vit(np.zeros((100, 70, 3), np.uint8))
    >>> grid.features.shape, grid.image_shape, grid.fit
    ((6, 4, 24), (96, 64), 'resize')
    """

    def __init__(
        self,
        model: str | None = None,
        weights: str | os.PathLike | None = None,
        layer_output: str = "tokens",
        device: str = "cpu",
        max_side: int | None = None,
        dtype: str = "float32",
        **model_kwargs: Any,
    ) -> None:
        if layer_output not in LAYER_OUTPUTS:
            raise ValueError(f"layer_output must be one of {LAYER_OUTPUTS}, got {layer_output!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if max_side is not None and (isinstance(max_side, bool) or int(max_side) != max_side
                                     or max_side < 1):
            raise ValueError(f"max_side must be None or an integer >= 1, got {max_side!r}")
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"model must be a timm model name, got {model!r}")
        torch, timm = _import_torch_timm()
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got "
                             f"{device!r}") from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
        if model is not None and not timm.is_model(model):
            raise ValueError(
                f"unknown timm model {model!r}; list the available ones with "
                "timm.list_models('vit_*')"
            )
        state = load_state_dict(weights) if weights is not None else None
        named = model is not None
        if model is None:
            model = DEFAULT_MODEL
            inferred = infer_model(state, read_hf_config(weights)) if state is not None else None
            if inferred is not None:
                model, extra = inferred
                model_kwargs = {**extra, **model_kwargs}
                _log.info("weights %s are %s: using timm model %s %s", weights,
                          architecture(state).describe(), model, extra or "")
        elif state is not None and "img_size" not in model_kwargs:
            model_kwargs = {**model_kwargs, **_grid_of(state, model, model_kwargs, timm, torch)}
        try:
            net = timm.create_model(
                model, pretrained=False, num_classes=0, dynamic_img_size=True, **model_kwargs
            )
        except (TypeError, ValueError, AssertionError, RuntimeError) as err:
            if "dynamic_img_size" in str(err):
                raise ValueError(
                    f"timm model {model!r} is not a Vision Transformer with patch tokens "
                    "(it does not take dynamic_img_size)"
                ) from err
            raise ValueError(
                f"cannot build timm model {model!r} with {model_kwargs}: {err}"
            ) from err
        _check_vit(net, model)
        if state is None:
            source = pretrained_weights(model, dict(net.pretrained_cfg))
            state = load_state_dict(source)
            weights_name = str(source)
        else:
            weights_name = str(weights)
            _check_architecture(net, state, model, weights_name, named)
        _load_into(net, state, model, weights_name, torch)

        self.model_name = model
        self.model_kwargs = dict(model_kwargs)
        self.weights = weights_name
        self.layer_output = layer_output
        self.device = dev
        self.max_side = None if max_side is None else int(max_side)
        self.dtype = dtype
        self.model = net.to(device=self.device, dtype=getattr(torch, dtype)).eval()
        p = net.patch_embed.patch_size
        self.patch_size = int(p[0]) if isinstance(p, (tuple, list)) else int(p)
        data_cfg = timm.data.resolve_model_data_config(net)
        self.mean = tuple(float(m) for m in data_cfg["mean"])
        self.std = tuple(float(s) for s in data_cfg["std"])
        self.name = f"vit:{model}:{layer_output}"

    def __repr__(self) -> str:
        return (f"VitFeatures(model={self.model_name!r}, weights={self.weights!r}, "
                f"layer_output={self.layer_output!r}, device={str(self.device)!r}, "
                f"max_side={self.max_side!r}, dtype={self.dtype!r})")

    def __call__(self, image: ImageLike) -> FeatureGrid:
        """Compute the feature grid of one image.

        Parameters
        ----------
        image : str, path-like or ndarray
            Anything :func:`uniap.features.load_image` accepts.

        Returns
        -------
        FeatureGrid
            ``features`` of shape (h, w, C), float32, with ``(h * p, w * p)`` the resized
            image's shape (see Notes of the class).
        """
        (grid, _), = self.batch_grids([image])
        return grid

    def batch_grids(self, images: Sequence[ImageLike]) -> list[tuple[FeatureGrid, Any]]:
        """Feature grids of several images, one forward pass per working shape.

        Each image is preprocessed as by :meth:`__call__` (see Notes of the class); images of
        equal working shape run as one batch.

        Parameters
        ----------
        images : sequence of str, path-like or ndarray
            Anything :func:`uniap.features.load_image` accepts, of any sizes.

        Returns
        -------
        list of (FeatureGrid, torch.Tensor)
            Per image, in order: its grid (features on the host) and the same features,
            (h, w, C) float32, on :attr:`device` (the host tensor shares the grid's memory).
        """
        import torch

        rgbs = [load_image(image) for image in images]
        shapes = [tuple(working_shape(rgb.shape[:2], self.patch_size, self.max_side, always=True)
                        or rgb.shape[:2]) for rgb in rgbs]
        out: list[Any] = [None] * len(rgbs)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, shape in enumerate(shapes):
            groups.setdefault(shape, []).append(i)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        p = self.patch_size
        for shape, members in groups.items():
            batch = torch.cat([self._resized(rgbs[i], shape, torch) for i in members])
            feats = self._forward(((batch - mean) / std).to(getattr(torch, self.dtype)), torch)
            h, w = shape[0] // p, shape[1] // p
            if feats.shape[1] != h * w:
                raise ValueError(
                    f"{self.model_name!r} returned {feats.shape[1]} patch tokens for a "
                    f"{shape[0]}x{shape[1]} image, expected {h}x{w}"
                )
            feats = feats.reshape(len(members), h, w, -1).float().contiguous()
            host = feats.cpu().numpy()
            for j, i in enumerate(members):
                grid = FeatureGrid(host[j], p, shape, name=self.name,
                                   original_shape=rgbs[i].shape[:2], resized_shape=shape)
                out[i] = (grid, feats[j].clone() if self.device.type != "cpu" else torch.from_numpy(grid.features))
        return out

    def _resized(self, rgb: np.ndarray, shape: tuple[int, int], torch) -> Any:
        """(1, 3, H, W) float image in [0, 1] at the working shape, on the device."""
        x = torch.as_tensor(np.array(rgb, copy=not rgb.flags.writeable), device=self.device)
        x = x.permute(2, 0, 1)[None].float().div_(255.0)
        if tuple(shape) != tuple(rgb.shape[:2]):
            x = torch.nn.functional.interpolate(
                x, size=shape, mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        return x

    def batch_features(self, images: Any) -> Any:
        """Patch features of a batch of same-size images, computed and returned on the device.

        The training loop's path: no resizing, no host round trip, one forward pass.

        Parameters
        ----------
        images : torch.Tensor, uint8, (B, H, W, 3)
            RGB images whose sides are multiples of :attr:`patch_size` (on any device; moved
            to :attr:`device`).

        Returns
        -------
        torch.Tensor, float32, (B, H / p, W / p, C)
            On :attr:`device`; an ordinary tensor (not an inference-mode one), so it can enter
            autograd graphs as a constant.

        Raises
        ------
        TypeError
            If ``images`` is not a uint8 torch tensor.
        ValueError
            If its shape is not (B, H, W, 3) with H and W multiples of the patch size.
        """
        import torch

        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise TypeError(f"images must be a uint8 torch.Tensor, got {type(images).__name__}"
                            + (f" of {images.dtype}" if isinstance(images, torch.Tensor) else ""))
        p = self.patch_size
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"images must be (B, H, W, 3) with H and W multiples of {p}, "
                             f"got {tuple(images.shape)}")
        b, height, width = images.shape[:3]
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        feats = self._forward(((x - mean) / std).to(getattr(torch, self.dtype)), torch)
        return feats.reshape(b, height // p, width // p, -1).float().clone()

    def _forward(self, x, torch):
        """(B, h*w, C) patch tokens or keys for a normalised (B, 3, H, W) batch."""
        model = self.model
        captured = {}
        handle = None
        if self.layer_output == "keys":
            attn = model.blocks[-1].attn
            fused = getattr(attn, "qkv", None) is not None
            proj = attn.qkv if fused else getattr(attn, "k_proj", None)
            if proj is None:
                raise ValueError(
                    f"layer_output='keys' is not supported for {self.model_name!r}: its last "
                    "attention block has neither a qkv nor a k_proj projection; use 'tokens'"
                )

            def hook(module, inputs, output):
                captured["out"] = output

            handle = proj.register_forward_hook(hook)
        try:
            with torch.inference_mode():
                tokens = model.forward_features(x)
        finally:
            if handle is not None:
                handle.remove()
        n_prefix = int(getattr(model, "num_prefix_tokens", 0))
        if self.layer_output == "tokens":
            return tokens[:, n_prefix:]
        if "out" not in captured:
            raise ValueError(
                f"layer_output='keys' is not supported for {self.model_name!r}: its last "
                "attention block does not call its key projection as a module; use 'tokens'"
            )
        out = captured["out"]
        B, N = out.shape[:2]
        heads = int(getattr(attn, "num_heads", 1))
        if fused:
            k = out.reshape(B, N, 3, heads, -1)[:, :, 1]  # (B, N, heads, head_dim)
        else:
            k = out.reshape(B, N, heads, -1)
        k_norm = getattr(attn, "k_norm", None)
        if k_norm is not None:
            with torch.inference_mode():
                k = k_norm(k.transpose(1, 2)).transpose(1, 2)
        return k.reshape(B, N, -1)[:, n_prefix:]


def _check_vit(net, model_name: str) -> None:
    """Reject models that are not plain ViTs with square patches and attention blocks."""
    ok = all(hasattr(net, a) for a in ("patch_embed", "blocks", "forward_features"))
    p = getattr(getattr(net, "patch_embed", None), "patch_size", None)
    if not ok or p is None:
        raise ValueError(
            f"timm model {model_name!r} is not a Vision Transformer with patch tokens "
            "(needs patch_embed, blocks and forward_features)"
        )
    if isinstance(p, (tuple, list)) and len({int(s) for s in p}) != 1:
        raise ValueError(f"timm model {model_name!r} has non-square patches {tuple(p)}")
    attn = getattr(net.blocks[-1], "attn", None)
    if attn is None:
        raise ValueError(f"timm model {model_name!r}: its last block has no attention module")


def _grid_of(state: dict[str, Any], model: str, model_kwargs: dict, timm, torch) -> dict:
    """``{"img_size": ...}`` building ``model`` at the checkpoint's position grid, if it differs."""
    ckpt = architecture(state)
    if ckpt.grid is None or ckpt.patch is None:
        return {}
    try:
        with torch.device("meta"):
            net = timm.create_model(model, pretrained=False, num_classes=0, **model_kwargs)
    except Exception:  # reported when the model is built for real
        return {}
    own = architecture(net.state_dict())
    if own.grid is None or own.grid == ckpt.grid or own.patch != ckpt.patch:
        return {}
    return {"img_size": ckpt.grid * ckpt.patch}


def _check_architecture(net, state: dict[str, Any], model: str, where: str, named: bool) -> None:
    """Refuse weights of another architecture than ``net``'s, naming the model they fit."""
    ckpt = architecture(state)
    differences = mismatches(ckpt, architecture(net.state_dict()))
    if not differences:
        return
    inferred = infer_model(state, read_hf_config(where))
    if inferred is None:
        hint = "no timm model of that shape was found; name one with model= (CLI: --model)"
    else:
        name, extra = inferred
        args = "".join(f", {k}={v!r}" for k, v in extra.items())
        hint = (f"They fit {name!r}{' with' + args[1:] if args else ''}: pass model={name!r}"
                f" (CLI: --model {name})"
                + (", or leave the model out to have it inferred" if named else ""))
    raise ValueError(
        f"weights {where!r} do not fit timm model {model!r}: they are a ViT with "
        f"{ckpt.describe()}; {'; '.join(differences)}.  {hint}"
    )


def _load_into(net, state: dict[str, Any], model_name: str, where: str, torch) -> None:
    """Load ``state`` into ``net`` through timm's checkpoint filter; every parameter must load."""
    import sys

    if where.endswith(".npz"):  # pragma: no cover - JAX checkpoints are read by timm itself
        net.load_pretrained(where)
        return
    pos = state.get("pos_embed")
    own = getattr(net, "pos_embed", None)
    if (pos is not None and own is not None and getattr(net, "no_embed_class", False)
            and pos.ndim == 3 and pos.shape[1] == own.shape[1] + 1):
        state = {**state, "pos_embed": pos[:, 1:]}  # DINOv2's register models: no class position
    filter_fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, net)
        except Exception as err:
            raise ValueError(
                f"weights {where!r} do not fit timm model {model_name!r}: {err}"
            ) from err
    classifier = net.pretrained_cfg.get("classifier") or "head"
    for name in (classifier,) if isinstance(classifier, str) else tuple(classifier):
        state.pop(f"{name}.weight", None)  # the model is built without a classifier
        state.pop(f"{name}.bias", None)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        detail = "; ".join(lines[:3]) or str(err).splitlines()[0]
        raise ValueError(
            f"weights {where!r} do not fit timm model {model_name!r}: {detail}"
        ) from err
    if result.missing_keys:
        missing = result.missing_keys
        raise ValueError(
            f"weights {where!r} do not fit timm model {model_name!r}: {len(missing)} of "
            f"{len(net.state_dict())} parameters missing, e.g. {', '.join(missing[:5])}"
        )
    if result.unexpected_keys:
        _log.info("ignored %d unexpected keys in %s (e.g. %s)", len(result.unexpected_keys),
                  where, ", ".join(result.unexpected_keys[:5]))
