"""CLIP models through open_clip: zero-shot chest X-ray classifiers from text prompts, and a backbone to
fine-tune (linear head, full, LoRA).

Names (usable wherever a checkpoint is, and as ``--arch`` / ``--init`` of training)::

    clip:<open_clip model>/<pretrained tag>   e.g. clip:ViT-B-32/laion2b_s34b_b79k, clip:ViT-B-32/openai
    clip:hf-hub:<org>/<repo>                  an open_clip checkpoint on the Hugging Face hub, e.g. BiomedCLIP
                                              (clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)
    clip:local-dir:<folder>                   a folder as open_clip reads it: open_clip_config.json + weights

* **Weights** come from open_clip's own caches: the Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME``)
  for tags open_clip fetches from the hub (most, ``openai`` included), open_clip's URL cache
  (``~/.cache/clip``, moved by ``CXR_CLIP_CACHE_DIR``, passed to open_clip as ``cache_dir``) for tags with
  a URL only. A missing file is fetched by open_clip's own downloader when the host answers; offline,
  one ConfigError names the file, the folder and the variable that moves it. Never a random model.
* **Safe loading**: the file is read by us, safetensors with safetensors, anything else with torch's
  ``weights_only`` unpickler (a pickle that needs code is refused and nothing in it runs), then put
  through open_clip's own state-dict conversions (``convert_state_dict``, ``resize_pos_embed``...).
* **The classifier** (:class:`CLIPClassifier`) is open_clip's image tower plus one linear layer on the
  L2-normalised image embedding. Zero-shot, that layer holds the text embeddings: for each label the
  mean embedding of several "present" prompts and of several "absent" prompts (renormalised, as the
  CLIP paper averages templates); the row is ``logit_scale * (present - absent)``, so its output is the
  log-odds of CLIP's softmax over the (present, absent) pair. ``scoring="minmax"`` instead min-max
  scales ``present - absent`` over the image's labels (seed 002's normalisation): 1 for the label
  the image matches best, 0 for the worst, so the numbers rank labels within one image and are not
  probabilities. The card says which.
* **Rebuilding** a saved model needs no download: the card's spec holds open_clip's image-tower config.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError

from . import names as names_
from . import weights
from .card import Card, save_checkpoint
from .clip_names import EXTRA_ENV, LISTED, PREFIX, is_clip, slug  # noqa: F401 - names without torch, re-exported
from .family import ModelFamily, register
from .wrappers import HeadSwapReport, scale_maps

__reexported__ = (is_clip, slug)  # clip.is_clip / clip.slug stay where callers look for them

LIBRARY = names_.OPEN_CLIP
CACHE_ENV = "CXR_CLIP_CACHE_DIR"
HF_ENV = "HF_HUB_CACHE (or HF_HOME)"
SCORINGS = ("softmax", "minmax")
PRESENT = ("a chest X-ray showing {label}.", "a chest radiograph with {label}.",
           "{label} is present on this chest X-ray.", "findings consistent with {label}.")
ABSENT = ("a chest X-ray with no {label}.", "a chest radiograph without {label}.",
          "no {label} is seen on this chest X-ray.", "no evidence of {label}.")
# labels whose negation reads badly through the templates
SPECIAL = {"no finding": {"present": ["a normal chest X-ray.", "a chest radiograph with no abnormal findings."],
                          "absent": ["an abnormal chest X-ray.", "a chest radiograph with abnormal findings."]}}
LICENCE_NOTE = ("open_clip's code is MIT-licensed; each weight set has its own licence and training data (e.g. "
                "LAION-2B, OpenAI's WIT, PMC-15M for BiomedCLIP): check them before any use beyond research. "
                "General-purpose CLIP weights never saw curated chest X-ray labels. Not a medical device.")
HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


# ------------------------------------------------------------------------------------ names
def _schema(body: str) -> tuple[str | None, str]:
    for s in ("hf-hub:", "local-dir:"):
        if body.lower().startswith(s):
            return s[:-1], body[len(s):].strip()
    return None, body


def clip_ref(ref) -> str:
    """The canonical ``clip:`` name ``ref`` stands for; ConfigError for an unknown model or tag."""
    import open_clip

    text = str(ref).strip()
    body = text[len(PREFIX):].strip()
    schema, ident = _schema(body)
    if schema == "hf-hub":
        if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", ident):
            raise ConfigError(f"{text!r}: an hf-hub name is clip:hf-hub:<org>/<repo>.")
        return f"{PREFIX}hf-hub:{ident}"
    if schema == "local-dir":
        folder = Path(ident).expanduser()
        if not ident:
            raise ConfigError(f"{text!r}: a local folder is clip:local-dir:<folder with open_clip_config.json>.")
        return f"{PREFIX}local-dir:{folder.resolve()}"
    model, _, tag = body.partition("/")
    models = {m.lower(): m for m in open_clip.list_models()}
    if model.strip().lower() not in models:
        near = [m for m in open_clip.list_models() if model.split("-")[0].lower() in m.lower()][:8]
        raise ConfigError(f"Unknown open_clip model {model!r} in {text!r}. open_clip knows e.g. "
                          f"{', '.join(near) or 'ViT-B-32, ViT-B-16, ViT-L-14'}; names are clip:<model>/<pretrained tag>, "
                          "e.g. clip:ViT-B-32/laion2b_s34b_b79k.")
    model = models[model.strip().lower()]
    tag = tag.strip().lower()
    tags = open_clip.list_pretrained_tags_by_model(model)
    if not tag:
        return f"{PREFIX}{model}"  # the architecture only (random weights, e.g. as --arch with --pretrained none)
    if tag not in tags:
        raise ConfigError(f"open_clip has no pretrained tag {tag!r} for {model}; its tags: {', '.join(tags) or 'none'}.")
    return f"{PREFIX}{model}/{tag}"


def parts(name: str) -> tuple[str | None, str, str]:
    """(schema, model or identifier, tag) of a canonical name."""
    body = name[len(PREFIX):]
    schema, ident = _schema(body)
    if schema:
        return schema, ident, ""
    model, _, tag = body.partition("/")
    return None, model, tag


def has_weights(name: str) -> bool:
    schema, _, tag = parts(name)
    return bool(schema or tag)


def listed_names() -> list[str]:
    """The CLIP names for the model pickers: :data:`LISTED` (canonical already: a test checks each against
    open_clip's registry, so listing them imports nothing) plus ``$CXR_CLIP_MODELS`` (checked with open_clip)."""
    extra = [x.strip() for x in os.environ.get(EXTRA_ENV, "").split(",") if x.strip()]
    out = list(LISTED)
    for x in extra:
        try:
            key = clip_ref(x)
        except ConfigError:
            continue
        if key not in out and has_weights(key):
            out.append(key)
    return out


# --------------------------------------------------------------------------- configuration
def _hf_cache() -> Path:
    return weights.hf_cache_dir()


def url_cache_dir() -> Path:
    """open_clip's cache for URL downloads: ``$CXR_CLIP_CACHE_DIR`` or open_clip's ``~/.cache/clip``."""
    return Path(os.environ.get(CACHE_ENV) or os.path.expanduser("~/.cache/clip")).expanduser()


def _hf_cached(repo: str, file: str) -> Path | None:
    import huggingface_hub

    hit = huggingface_hub.try_to_load_from_cache(repo, file, cache_dir=_hf_cache())
    return Path(hit) if isinstance(hit, str) else None


def _hf_path(repo: str, file: str) -> Path:
    return _hf_cache() / f"models--{repo.replace('/', '--')}" / "snapshots" / "<commit>" / file


def open_clip_config(name: str) -> dict:
    """open_clip's full config of the model ``{"model_cfg", "preprocess_cfg"}``, from the package (built-in
    names), the folder (local-dir) or the hub cache (hf-hub); ConfigError when it is not on this machine."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    schema, ident, tag = parts(name)
    pre = {k: v for k, v in vars(PreprocessCfg()).items()}
    if schema is None:
        cfg = open_clip.get_model_config(ident)
        if cfg is None:
            raise ConfigError(f"open_clip has no config for {ident}.")
        if tag:
            p = open_clip.get_pretrained_cfg(ident, tag) or {}
            pre.update({k: p[k] for k in pre if k in p})
            if p.get("quick_gelu"):  # weights trained with QuickGELU (OpenAI's): build the tower with it
                cfg["quick_gelu"] = True
        pre["size"] = cfg["vision_cfg"].get("image_size", 224)
        return {"model_cfg": copy.deepcopy(cfg), "preprocess_cfg": pre}
    if schema == "local-dir":
        path = Path(ident) / "open_clip_config.json"
    else:
        path = _hf_cached(ident, "open_clip_config.json")
        if path is None:
            st = status(name)
            raise ConfigError(missing_message(st, " (its open_clip_config.json is not in the hub cache either)"))
    try:
        full = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Could not read open_clip's config {path} for {name} ({type(exc).__name__}: {exc}).") from exc
    if "model_cfg" not in full:
        raise ConfigError(f"{path} has no model_cfg: it is not an open_clip config.")
    pre.update(full.get("preprocess_cfg") or {})
    pre["size"] = full["model_cfg"].get("vision_cfg", {}).get("image_size", pre.get("size", 224))
    return {"model_cfg": full["model_cfg"], "preprocess_cfg": pre}


def vision_spec(name: str) -> dict:
    """What rebuilding the image tower needs (stored in the card's model spec): no download ever."""
    cfg = open_clip_config(name)
    m = cfg["model_cfg"]
    pre = cfg["preprocess_cfg"]
    return {"embed_dim": int(m["embed_dim"]), "vision_cfg": copy.deepcopy(m["vision_cfg"]),
            "quick_gelu": bool(m.get("quick_gelu", False)), "image_size": int(_side(pre.get("size", 224))),
            "mean": [float(v) for v in pre.get("mean")], "std": [float(v) for v in pre.get("std")]}


def _side(size) -> int:
    return int(size[-1] if isinstance(size, (list, tuple)) else size)


# ------------------------------------------------------------------------- weight location
def weights_location(name: str) -> weights.WeightsLocation:
    """Where open_clip looks for the weights of ``name``."""
    import open_clip

    schema, ident, tag = parts(name)
    if schema is None and not tag:
        raise ConfigError(f"{name} names an architecture without pretrained weights; add a tag "
                          f"(clip:{ident}/<tag>, tags: {', '.join(open_clip.list_pretrained_tags_by_model(ident))}) "
                          "or choose --pretrained none.")
    if schema == "local-dir":
        folder = Path(ident)
        found = None
        if folder.is_dir():
            from open_clip.factory import _find_checkpoint_in_dir

            found = _find_checkpoint_in_dir(folder)
        file = Path(found).name if found else "open_clip_model.safetensors"
        return weights.WeightsLocation(LIBRARY, file, folder / file, folder, "", "(none: a local folder)", bool(found),
                               note=" The folder also needs open_clip_config.json.")
    if schema == "hf-hub":
        repo, files = ident, list(HF_WEIGHTS)
    else:
        cfg = open_clip.get_pretrained_cfg(ident, tag)
        if cfg.get("file"):
            p = Path(cfg["file"])
            return weights.WeightsLocation(LIBRARY, p.name, p, p.parent, "", "(none: a file named in open_clip's config)",
                                   p.is_file())
        hub = cfg.get("hf_hub", "")
        if not hub:
            folder = url_cache_dir()
            f = weights.url_file(cfg["url"])
            return weights.WeightsLocation(LIBRARY, f, folder / f, folder, cfg["url"],
                                   f"{CACHE_ENV} (cxrcore's; passed to open_clip as cache_dir; default ~/.cache/clip)",
                                   (folder / f).is_file())
        repo, filename = os.path.split(hub.rstrip("/") if hub.endswith("/") else hub)
        if hub.endswith("/"):
            repo, filename = hub.rstrip("/"), ""
        if filename:
            files = [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
            files.append(filename)
        else:
            files = list(HF_WEIGHTS)
    for f in files:
        hit = _hf_cached(repo, f)
        if hit is not None:
            return weights.WeightsLocation(LIBRARY, f, hit, _hf_cache(), f"https://huggingface.co/{repo}", HF_ENV, True, repo)
    return weights.WeightsLocation(LIBRARY, files[-1], _hf_path(repo, files[-1]), _hf_cache(),
                           f"https://huggingface.co/{repo}/resolve/main/{files[-1]}", HF_ENV, False, repo,
                           note=(f" ({' or '.join(files)}: open_clip takes the safetensors file first)"
                                 if len(files) > 1 else ""))


def status(name: str) -> dict:
    """library_status for a CLIP name (nothing is read or fetched)."""
    loc = weights_location(name)
    return {"name": name, "title": f"{name} (open_clip, pretrained)", "library": LIBRARY, "cached": bool(loc.cached),
            "file": loc.file, "folder": str(loc.folder), "path": str(loc.path), "url": loc.url, "env": loc.env,
            "hf_repo": loc.hf_repo, "datasets": [], "note": loc.note}


def missing_message(st: dict, reason: str = "") -> str:
    if st.get("hf_repo"):
        repo = st["hf_repo"]
        where = (f"Put the file {st['file']} of {repo} into the folder {st['folder']} as open_clip's hub cache keeps "
                 f"it: {st['path']} (plus {st['folder']}/models--{repo.replace('/', '--')}/refs/main holding <commit>; "
                 f"e.g. `hf download {repo} {st['file']} --cache-dir <folder>` on a machine that is online, then copy "
                 f"the folder){st.get('note', '')}.")
    elif st.get("url"):
        where = (f"Put the file {st['file']} into the folder {st['folder']} (download it from {st['url']} on a "
                 f"machine that is online).")
    else:
        where = f"Put the file {st['file']} into the folder {st['folder']}{st.get('note', '')}."
    return (f"The open_clip weights for {st['name']} are not on this machine{reason}. {where} "
            f"{st['env']} moves that folder.")


def fetch_weights(name: str) -> Path:
    """The cached weight file of ``name``; fetched first by open_clip's own downloader when missing and the
    host answers; LibraryWeightsMissing (a ConfigError) naming file, folder and variable otherwise."""
    import open_clip

    st = status(name)
    if st["cached"]:
        return Path(st["path"])
    schema, ident, tag = parts(name)
    if schema == "local-dir" or not st["url"]:
        raise weights.LibraryWeightsMissing(missing_message(st), st)
    if not weights.online(st["url"]):
        host = st["url"].split("/")[2]
        raise weights.LibraryWeightsMissing(missing_message(st, f" and {host} cannot be reached (offline?)"), st)
    try:
        if schema == "hf-hub":
            from open_clip.pretrained import download_pretrained_from_hf

            download_pretrained_from_hf(ident, filename="open_clip_config.json", cache_dir=str(_hf_cache()))
            path = download_pretrained_from_hf(ident, cache_dir=str(_hf_cache()))
        else:
            cfg = open_clip.get_pretrained_cfg(ident, tag)
            folder = _hf_cache() if cfg.get("hf_hub") else url_cache_dir()
            path = open_clip.download_pretrained(cfg, cache_dir=str(folder))
    except Exception as exc:  # noqa: BLE001 - network / disk errors of any kind
        raise weights.LibraryWeightsMissing(missing_message(st, f"; downloading it failed ({type(exc).__name__}: "
                                                        f"{str(exc)[:200]})"), st) from exc
    return Path(path)


# ------------------------------------------------------------------------------- building
def build_clip(name: str, model_cfg: dict) -> nn.Module:
    """open_clip's CLIP / CustomTextCLIP for ``model_cfg`` with random weights, no tower weights fetched
    (what ``open_clip.create_model(..., load_weights=False)`` builds, without its hub calls)."""
    from open_clip import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise ConfigError(f"{name} is a CoCa model (captioning); cxr takes contrastive CLIP models only.")
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    hf_text = "hf_model_name" in cfg.get("text_cfg", {})
    if hf_text:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    custom = cfg.pop("custom_text", False) or hf_text
    try:
        return (CustomTextCLIP if custom else CLIP)(**cfg)
    except OSError as exc:  # a hub text model's config not cached
        raise ConfigError(f"Could not build {name}'s text tower ({str(exc)[:300]}); its Hugging Face config must be in "
                          f"the hub cache ({_hf_cache()}).") from exc


def load_pretrained(name: str) -> tuple[nn.Module, dict]:
    """(open_clip model with the cached pretrained weights, its config). Raises ConfigError /
    CheckpointError naming the file when the weights are missing, refused or do not fit."""
    from open_clip.factory import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    path = fetch_weights(name)
    cfg = open_clip_config(name)
    model = build_clip(name, cfg["model_cfg"])
    state = weights.read_tensors(path, name, LIBRARY)
    try:
        state = convert_state_dict(model, state)
        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        if "logit_scale" in state and model.logit_scale.ndim != state["logit_scale"].ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        if getattr(model, "logit_bias", None) is not None and "logit_bias" not in state:
            state["logit_bias"] = torch.zeros_like(state["logit_scale"])
        state.pop("text.transformer.embeddings.position_ids", None)
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"The weights in {path} do not fit open_clip's {name} ({str(exc)[:300]}); the file may "
                              "belong to another model or be damaged: delete it and download it again.") from exc
    return model.eval(), cfg


class CLIPClassifier(nn.Module):
    """open_clip's image tower + a linear head on the L2-normalised image embedding, behind timm's interface
    (forward_features -> tokens (B, 1 + N, width); forward_head; get_classifier; reset_classifier)."""

    library = LIBRARY

    def __init__(self, arch: str, visual: nn.Module, embed_dim: int, num_labels: int, scoring: str = "softmax"):
        super().__init__()
        if scoring not in SCORINGS:
            raise ConfigError(f"CLIP scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}.")
        self.arch = arch
        self.visual = visual
        self.scoring = scoring
        self.head = nn.Linear(int(embed_dim), int(num_labels))
        self.timm_tower = hasattr(visual, "trunk")
        self.token_features = True
        self.num_prefix_tokens = int(getattr(visual.trunk, "num_prefix_tokens", 1)) if self.timm_tower else 1
        self.in_chans = 3
        self.head_swap_report = None
        self.trained_on = None

    # -- features ---------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        if self.timm_tower:
            return v.trunk.forward_features(x)
        if getattr(v, "attn_pool", None) is not None:
            raise ConfigError(f"{self.arch}: image towers with attentional pooling are not supported.")
        return v.transformer(v._embeds(x))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image embedding (projected into CLIP's joint space, not normalised) from the tokens."""
        v = self.visual
        if self.timm_tower:
            return v.head(v.trunk.forward_head(tokens, pre_logits=True))
        pooled, _ = v._pool(tokens)
        return pooled @ v.proj if v.proj is not None else pooled

    def patch_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each patch token projected into the joint space (B, N, D), normalised; class token removed."""
        v = self.visual
        patches = tokens[:, self.num_prefix_tokens:]
        if self.timm_tower:
            # timm's forward_features already ends with its norm; its forward_head adds fc_norm, then open_clip's head
            out = v.head(getattr(v.trunk, "fc_norm", nn.Identity())(patches))
        else:
            out = v.ln_post(patches)
            out = out @ v.proj if v.proj is not None else out
        return F.normalize(out, dim=-1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        e = F.normalize(self.embed(x), dim=-1)
        if pre_logits:
            return e
        return self.score(self.head(e))

    def score(self, d: torch.Tensor) -> torch.Tensor:
        """The head's outputs as logits: as they are (softmax over the pair = sigmoid of the log-odds), or
        min-max over the image's labels (seed 002), returned as the logit of that [0, 1] value."""
        if self.scoring == "softmax" or d.shape[1] < 2:
            return d
        lo, hi = d.min(1, keepdim=True).values, d.max(1, keepdim=True).values
        p = ((d - lo) / (hi - lo).clamp_min(1e-6)).clamp(1e-4, 1 - 1e-4)
        return torch.logit(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        old = self.head
        self.head = nn.Linear(old.in_features, int(num_classes), device=old.weight.device, dtype=old.weight.dtype)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def cam_layer(self) -> nn.Module:
        """The last block's first norm (its patch tokens carry gradient; see cxrcore.explain.cam.target_layer)."""
        if self.timm_tower:
            return self.visual.trunk.blocks[-1].norm1
        return self.visual.transformer.resblocks[-1].ln_1

    # -- heatmaps ---------------------------------------------------------------------------------
    extra_cam_methods = ("PatchTextSimilarity",)

    def extra_cam(self, method: str, x: torch.Tensor, labels: list[int] | None = None):
        """Logits and the similarity map of each patch token (projected into the joint space) to each
        label's head row: for a zero-shot model, the text embedding of "present" minus "absent" (B, L, h, w),
        scaled to [0, 1] after a ReLU (regions that speak for the label)."""
        if method not in self.extra_cam_methods:
            raise ValueError(f"Unknown CLIP heatmap method {method!r}.")
        with torch.no_grad():
            tokens = self.forward_features(x)
            logits = self.forward_head(tokens)
            pe = self.patch_embeddings(tokens)
            w = self.head.weight if labels is None else self.head.weight[list(labels)]
            sim = torch.einsum("bnd,ld->bln", pe.float(), w.float())
        n = sim.shape[-1]
        side = int(round(n ** 0.5))
        maps = sim.reshape(sim.shape[0], sim.shape[1], side, n // side)
        return logits, scale_maps(maps.cpu().numpy())


def build_vision(arch: str, vspec: dict, num_labels: int, scoring: str = "softmax") -> CLIPClassifier:
    from open_clip.model import _build_vision_tower

    vc = vspec.get("vision_cfg") or {}
    if isinstance(vc.get("layers"), (list, tuple)):
        raise ConfigError(f"{arch} has a ResNet image tower (open_clip's ModifiedResNet); cxr takes CLIP models "
                          "with a vision transformer (ViT-*, or a timm ViT tower such as BiomedCLIP's).")

    visual = _build_vision_tower(vspec["embed_dim"], copy.deepcopy(vspec["vision_cfg"]), vspec.get("quick_gelu", False))
    return CLIPClassifier(arch, visual, vspec["embed_dim"], num_labels, scoring)


def _kwargs(kwargs: dict | None) -> str:
    kwargs = dict(kwargs or {})
    scoring = kwargs.pop("scoring", "softmax")
    if kwargs:
        raise ConfigError(f"CLIP models take one option, scoring ({' or '.join(SCORINGS)}); remove {sorted(kwargs)}.")
    return scoring


def build(arch: str, num_labels: int, mode: str, kwargs: dict | None = None,
          labels: list[str] | None = None, prompts: dict | None = None) -> CLIPClassifier:
    """build_model for ``clip:`` names: random weights (mode none) or open_clip's pretrained weights (hub),
    the head then made from the text prompts of ``labels`` (zero-shot; random rows without labels)."""
    scoring = _kwargs(kwargs)
    name = clip_ref(arch)
    if mode != "hub":
        return build_vision(name, vision_spec(name), num_labels, scoring)
    clip_model, cfg = load_pretrained(name)
    m = cfg["model_cfg"]
    model = CLIPClassifier(name, clip_model.visual, int(m["embed_dim"]), num_labels, scoring)
    if labels is not None:
        w, used = zero_shot_weights(name, clip_model, labels, prompts)
        with torch.no_grad():
            model.head.weight.copy_(w)
            model.head.bias.zero_()
        model.head_swap_report = HeadSwapReport(copied={x: f"text prompts for {x}" for x in labels})
        model.prompts = used
        model.logit_scale = float(clip_model.logit_scale.detach().exp().clamp(max=100))
    model.trained_on = {"kind": "library", "datasets": [f"open_clip {name[len(PREFIX):]} (image-text pretraining)"],
                        "summary": f"open_clip {name[len(PREFIX):]}: image-text pretraining, no chest X-ray labels"}
    return model


# ------------------------------------------------------------------------------- zero-shot
def label_text(label: str) -> str:
    return label.replace("_", " ").replace("-", " ").strip().lower()


def prompts_for(labels: list[str], templates: dict | None = None) -> dict[str, dict[str, list[str]]]:
    """{label: {"present": [...], "absent": [...]}}: ``templates`` may give "present" / "absent" template lists
    (with ``{label}``) for every label, and "labels": {label: {"present": [...], "absent": [...]}} overrides."""
    from ..labels import canonical

    templates = dict(templates or {})
    present = list(templates.get("present") or PRESENT)
    absent = list(templates.get("absent") or ABSENT)
    for t in present + absent:
        if "{label}" not in t:
            raise ConfigError(f"The prompt template {t!r} has no {{label}} in it.")
    own = {canonical(k): v for k, v in (templates.get("labels") or {}).items()}
    out = {}
    for x in labels:
        c = canonical(x)
        if c in own:
            p, a = list(own[c].get("present") or []), list(own[c].get("absent") or [])
            if not p or not a:
                raise ConfigError(f"The prompts for {x} need at least one 'present' and one 'absent' text.")
        elif c in SPECIAL and not templates.get("present"):
            p, a = list(SPECIAL[c]["present"]), list(SPECIAL[c]["absent"])
        else:
            p = [t.format(label=label_text(x)) for t in present]
            a = [t.format(label=label_text(x)) for t in absent]
        out[x] = {"present": p, "absent": a}
    return out


@torch.no_grad()
def zero_shot_weights(name: str, clip_model: nn.Module, labels: list[str], templates: dict | None = None):
    """(head weight (L, D), prompts used): ``logit_scale * (mean present - mean absent)`` text embeddings."""
    import open_clip

    used = prompts_for(labels, templates)
    try:
        tok = open_clip.get_tokenizer(name[len(PREFIX):], cache_dir=str(_hf_cache()))
    except Exception as exc:  # noqa: BLE001 - a hub tokenizer not cached
        raise ConfigError(f"Could not load {name}'s tokenizer ({type(exc).__name__}: {str(exc)[:200]}); it must be in "
                          f"the hub cache ({_hf_cache()}).") from exc

    def mean_embedding(texts: list[str]) -> torch.Tensor:
        e = clip_model.encode_text(tok(texts), normalize=True).float().mean(0)
        return e / e.norm()

    scale = float(clip_model.logit_scale.exp().clamp(max=100))
    rows = [scale * (mean_embedding(used[x]["present"]) - mean_embedding(used[x]["absent"])) for x in labels]
    return torch.stack(rows), used


# ----------------------------------------------------------------------- card and checkpoint
def default_labels() -> list[str]:
    from ..labels import NIH14

    return list(NIH14)


def library_version() -> str:
    import open_clip

    return str(open_clip.__version__)


def scoring_note(scoring: str) -> str:
    if scoring == "minmax":
        return ("min-max over this image's labels of the (present - absent) similarity (seed 002): the best-matching "
                "label gets 1 and the worst 0; a ranking within the image, not a probability")
    return ("softmax over each label's (present, absent) prompt pair with CLIP's logit scale: "
            "p = exp(s*sim_present) / (exp(s*sim_present) + exp(s*sim_absent))")


def card_for(name: str, labels: list[str] | None = None, scoring: str = "softmax", prompts: dict | None = None,
             source: dict | None = None, logit_scale: float | None = None):
    """The card of a zero-shot CLIP model (no weight file needed)."""
    from ..data.preprocess import Preprocess

    labels = list(labels or default_labels())
    if scoring not in SCORINGS:
        raise ConfigError(f"CLIP scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}.")
    vs = vision_spec(name)
    cfg = open_clip_config(name)["preprocess_cfg"]
    prep = Preprocess(size=vs["image_size"], fit="crop", norm="stats", mean=tuple(vs["mean"]), std=tuple(vs["std"]),
                      stats_from="model", channels=3)
    used = prompts if prompts and set(prompts) == set(labels) else prompts_for(labels, prompts)
    st = status(name)
    library = {"name": LIBRARY, "version": library_version(), "model": name[len(PREFIX):], "file": st["file"],
               "url": st["url"], "default_thresholds": {x: 0.5 for x in labels}, "threshold_origin": "0.5 (no operating points)",
               "zero_shot": {"prompts": used, "scoring": scoring, "scoring_note": scoring_note(scoring),
                             "templates_averaged": "per label, the mean of the normalised text embeddings of its prompts",
                             **({"logit_scale": logit_scale} if logit_scale else {})},
               "preprocess_cfg": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
               "licence": LICENCE_NOTE, **(source or {})}
    spec = {"library": LIBRARY, "arch": name, "kwargs": {"scoring": scoring}, "pretrained": "hub", "open_clip": vs}
    notes = [
        f"Zero-shot open_clip {library_version()} model {name[len(PREFIX):]}: no chest X-ray labels were used; "
        "each label is scored from text prompts.",
        "Scores: " + scoring_note(scoring) + ".",
        f"Preprocessing as open_clip's: 3 channels, center crop to a square, {vs['image_size']} px, "
        f"CLIP mean {tuple(round(v, 4) for v in vs['mean'])} / sd {tuple(round(v, 4) for v in vs['std'])}.",
        "Thresholds: 0.5 until you save your own (zero-shot scores are rarely calibrated: tune them on a validation split).",
        LICENCE_NOTE,
    ]
    return Card(labels=labels, model=spec, preprocess=prep.to_dict(), thresholds={x: 0.5 for x in labels},
                training={"library": library}, data={}, name=name, notes=notes,
                trained_on={"kind": "library", "datasets": [f"open_clip {name[len(PREFIX):]} image-text pretraining"],
                            "summary": f"open_clip {name[len(PREFIX):]} image-text pretraining (zero-shot from text "
                                       "prompts; no chest X-ray labels)"})


def make_zero_shot(name: str, out: str | os.PathLike, labels: list[str] | None = None, scoring: str = "softmax",
                   templates: dict | None = None, source: dict | None = None) -> Path:
    """Write a zero-shot checkpoint (safetensors + card) of ``name`` for ``labels`` with ``templates``."""
    name = clip_ref(name)
    if not has_weights(name):
        raise ConfigError(f"{name} has no pretrained tag: a zero-shot model needs pretrained weights.")
    labels = list(labels or default_labels())
    if not labels:
        raise ConfigError("A zero-shot model needs at least one label.")
    model = build(name, len(labels), "hub", {"scoring": scoring}, labels=labels, prompts=templates)
    src = dict(source or {})
    card = card_for(name, labels, scoring, model.prompts, src, logit_scale=model.logit_scale)
    return save_checkpoint(out, model.state_dict(), card)


def model_from_spec(spec: dict, num_labels: int) -> CLIPClassifier:
    """Rebuild a saved CLIP classifier (random weights; the checkpoint fills them): never a download."""
    scoring = _kwargs(spec.get("kwargs"))
    vs = spec.get("open_clip")
    arch = str(spec["arch"])
    if not vs:
        vs = vision_spec(clip_ref(arch))
    return build_vision(arch, vs, num_labels, scoring)


def describe(card) -> dict:
    """What a page shows next to a CLIP model's predictions."""
    lib = (card.training or {}).get("library") or {}
    zs = lib.get("zero_shot") or {}
    out = {"source": f"open_clip {lib.get('version', '')}, {lib.get('model', '')}" + (f" ({lib['url']})" if lib.get("url") else ""),
           "licence": lib.get("licence", LICENCE_NOTE)}
    if zs:
        out["scoring"] = zs.get("scoring_note", zs.get("scoring", ""))
        first = next(iter((zs.get("prompts") or {}).items()), None)
        if first:
            out["prompts"] = (f"{len(zs['prompts'])} labels, e.g. {first[0]}: present {first[1]['present'][:2]} … / "
                              f"absent {first[1]['absent'][:2]} … (all on the card)")
    return out


class ClipFamily(ModelFamily):
    """CLIP image towers through open_clip (names: see the module docstring)."""

    name = LIBRARY
    prefixes = names_.PREFIXES[names_.OPEN_CLIP]
    hint = "clip:<model>/<tag> for open_clip"
    order = 3

    def names(self) -> list[str]:
        return [x[len(PREFIX):] for x in listed_names()]

    def parse(self, arch: str, name: str) -> str:
        return clip_ref(arch)[len(PREFIX):]

    def auto_pretrained(self, arch: str) -> str:
        return "hub" if has_weights(clip_ref(arch)) else "none"  # a name with a pretrained tag names pretrained weights

    def weights_location(self, arch: str, name: str) -> weights.WeightsLocation:
        return weights_location(PREFIX + name)

    def build(self, arch: str, name: str, num_labels: int, mode: str, kwargs: dict,
              labels: list[str] | None) -> nn.Module:
        # image tower + linear head; with pretrained weights and labels: the zero-shot head
        return build(PREFIX + name, num_labels, mode, kwargs, labels)

    def spec(self, arch: str, pretrained: str, kwargs: dict) -> dict:
        ref = clip_ref(arch)  # open_clip's image-tower config: rebuilt offline, whatever is registered
        return {"library": self.name, "arch": ref, "kwargs": dict(kwargs), "pretrained": pretrained,
                "open_clip": vision_spec(ref)}

    def from_spec(self, spec: dict, num_labels: int) -> nn.Module:
        return model_from_spec(spec, num_labels)

    def facts(self, arch: str, name: str, out: dict) -> dict:
        vs = vision_spec(PREFIX + name)  # a ViT's fixed patch grid: its own size only
        out.update(input_size=vs["image_size"], fixed_size=True, mean=tuple(vs["mean"]), std=tuple(vs["std"]))
        return out

    def preprocess(self, arch: str, channels: int, facts) -> dict:
        vs = vision_spec(clip_ref(arch))  # CLIP's own mean / sd (open_clip's preprocess config), 3 channels
        return {"norm": "stats", "mean": tuple(vs["mean"]), "std": tuple(vs["std"]), "stats_from": "model"}

    def check_size(self, arch: str, kwargs: dict, size: int, channels: int, facts) -> None:
        side = facts()["input_size"]  # CLIP's positional embedding: its own size only
        if int(size) != side:
            raise ConfigError(f"{arch} takes {side} px images only (its patch grid is fixed); set the image size to {side}.")


FAMILY = register(ClipFamily())
