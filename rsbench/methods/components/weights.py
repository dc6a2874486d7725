"""Where each pretrained weight a method asks for comes from, and whether this machine already has it.

The one place that knows how timm, transformers and open_clip find their weights, so that a run can
decide before any cell starts (engine/preflight.py) instead of each cell spending a minute in hub
retries offline:
- a timm tag: its pretrained_cfg, read the way timm's builder reads it: the Hugging Face hub repo
  (`hf_hub_id`) when huggingface_hub is installed, else its `url` into torch hub's checkpoints folder
  (also first when TIMM_USE_OLD_CACHE is set and that file is there);
- a transformers model id: config.json (and model.safetensors when pretrained) in the hub cache;
- an open_clip tag: its pretrained config's hub repo/file, else its URL into ~/.cache/clip;
- a local file or folder the user gave: it exists.
Methods declare what they need with these functions (RetrievalMethod.required_weights).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ...errors import UserError

_TRUE = ("1", "on", "yes", "true")
PROBE_TIMEOUT_S = 3.0  # the one reachability check of a run: a reachable hub answers in well under a second


@dataclass(frozen=True)
class WeightNeed:
    """One weight a cell loads before it can train, where it is (or would be), and what avoids it."""

    what: str  # "timm weights resnet152.a1h_in1k"
    where: str  # the cache or file it is read from ("Hugging Face cache /root/.cache/huggingface/hub")
    local: bool  # a local file or a filled cache holds it: no network needed
    url: str = ""  # where it would be downloaded from ('' = nowhere: a path the user gave)
    fixes: tuple[str, ...] = ()  # alternatives that avoid it, each 1+ model options ("checkpoint=FILE pretrained=")
    hub: bool = False  # read through huggingface_hub (which asks the network even when cached, unless offline)
    missing: str = "not found"  # why it cannot be had when not local and nothing serves it


# ---- caches --------------------------------------------------------------------------------------

def hf_cache_dir() -> str:
    """huggingface_hub's cache folder (HF_HUB_CACHE, or HF_HOME/hub, read when it was first imported)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hf_cached(repo: str, filenames: Iterable[str]) -> str | None:
    """The cached path of the first of `filenames` in hub repo `repo` ('repo@revision' allowed), or None."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=hf_cache_dir(), revision=revision or None)
        if isinstance(found, str):  # None: unknown; a sentinel object: known not to exist
            return found
    return None


def torch_hub_file(url: str) -> Path:
    """Where torch hub (and timm's URL weights) keep a downloaded file: <TORCH_HOME>/hub/checkpoints/<name>."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _hf_need(what: str, repo: str, files: tuple[tuple[str, ...], ...], fixes: tuple[str, ...]) -> WeightNeed:
    """A hub repo needing each group of `files` (any one name of a group will do) in the cache."""
    from huggingface_hub import constants

    local = all(hf_cached(repo, group) is not None for group in files)
    return WeightNeed(what, f"Hugging Face cache {hf_cache_dir()}", local,
                      f"{constants.ENDPOINT}/{repo.partition('@')[0]}", fixes, hub=True)


def _safe_first(filename: str, exts: tuple[str, ...]) -> tuple[str, ...]:
    """The names a library tries for `filename`: its .safetensors twin first (timm and open_clip do)."""
    twins = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}
    if filename in twins:
        return twins[filename], filename
    if filename.endswith(exts):
        return filename.rsplit(".", 1)[0] + ".safetensors", filename
    return (filename,)


# ---- what a method can ask for -------------------------------------------------------------------

def local_path(path: str, option: str) -> WeightNeed:
    """A file or folder the user named with `option`: there or not (nothing to download)."""
    p = Path(path).expanduser()
    return WeightNeed(f"{option}={path}", str(p), p.exists())


def timm_weight(name: str, fixes: tuple[str, ...]) -> WeightNeed | None:
    """timm's pretrained weights for `name` (with or without a tag); None when timm has none registered
    (create_backbone then reports the unknown name or tag itself)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        return None
    if cfg is None:
        return None
    what = f"timm weights {cfg.architecture}.{cfg.tag}" if cfg.tag else f"timm weights {name}"
    if cfg.file:
        return WeightNeed(what, str(cfg.file), Path(cfg.file).expanduser().is_file(), fixes=fixes)
    old_cache = os.environ.get("TIMM_USE_OLD_CACHE", "0").strip() not in ("", "0") and bool(cfg.url) \
        and torch_hub_file(cfg.url).is_file()
    if cfg.hf_hub_id and not old_cache and _has_hf_hub():
        name_ = cfg.hf_hub_filename or "pytorch_model.bin"
        group = (name_,) if name_.endswith(".safetensors") else _safe_first(name_, (".bin",))
        return _hf_need(what, cfg.hf_hub_id, (group,), fixes)
    if cfg.url:
        f = torch_hub_file(cfg.url)
        return WeightNeed(what, f"torch hub cache {f}", f.is_file(), cfg.url, fixes)
    return None


def hf_model_weight(repo: str, pretrained: bool, fixes: tuple[str, ...]) -> WeightNeed:
    """A transformers model by hub id: its config (and tokenizer) always, its safetensors weights when pretrained."""
    files: tuple[tuple[str, ...], ...] = (("config.json",),)
    if pretrained:  # hf_text loads with use_safetensors=True
        files += (("model.safetensors", "model.safetensors.index.json"),)
    return _hf_need(f"transformers model {repo}", repo, files, fixes)


def text_model_weight(name: str, pretrained: bool) -> WeightNeed:
    """What hf_text.load_text_model(name) reads: the packaged MiniLM, a local folder, or a hub model."""
    from .hf_text import MINILM_ALIASES, MINILM_PACKAGE, minilm_dir

    fixes = ("text_model=FOLDER", "text_model=minilm")
    if name in MINILM_ALIASES:
        try:
            return WeightNeed(f"text model {name}", str(minilm_dir()), True)
        except UserError:
            return WeightNeed(f"text model {name}", MINILM_PACKAGE, False, fixes=("text_model=FOLDER",),
                              missing=f"the {MINILM_PACKAGE} package is not installed (pip install it)")
    if Path(name).expanduser().exists():
        return local_path(name, "text_model")
    try:
        return hf_model_weight(name, pretrained, fixes)
    except ValueError:  # not a hub id ('/models/bert', 'a/b/c'): a folder that is not there
        return local_path(name, "text_model")


def openclip_weight(arch: str, tag: str, fixes: tuple[str, ...]) -> WeightNeed | None:
    """An open_clip pretrained tag of `arch`; None when open_clip does not know it (the build says so)."""
    from open_clip import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        return None
    what = f"open_clip weights {arch} '{tag}'"
    if cfg.get("file"):
        return WeightNeed(what, str(cfg["file"]), Path(cfg["file"]).expanduser().is_file(), fixes=fixes)
    if cfg.get("hf_hub") and _has_hf_hub():
        repo, filename = os.path.split(cfg["hf_hub"])
        return _hf_need(what, repo, (_safe_first(filename or "open_clip_pytorch_model.bin", (".bin", ".pth")),),
                        fixes)
    if cfg.get("url"):
        f = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])  # open_clip's download folder
        return WeightNeed(what, f"open_clip cache {f}", f.is_file(), cfg["url"], fixes)
    return None


def backbone_needs(cfg: Any) -> list[WeightNeed]:
    """A timm image backbone (fields backbone, pretrained, backbone_weights, as most methods name them)."""
    if cfg.backbone_weights:
        return [local_path(cfg.backbone_weights, "backbone_weights")]
    if not cfg.pretrained:
        return []
    need = timm_weight(cfg.backbone, ("backbone_weights=FILE", "pretrained=false"))
    return [need] if need else []


def tower_needs(cfg: Any) -> list[WeightNeed]:
    """A CLIP tower from zoo/weights_dir, hf_folder, or open_clip model/checkpoint/pretrained (first set wins,
    as clip_tower.build_tower reads them)."""
    from .openclip_tower import DEFAULT_MODEL
    from .zoo_catalogue import find_weights, get_entry

    if getattr(cfg, "zoo", ""):
        return [WeightNeed(f"zoo:{cfg.zoo}", str(find_weights(get_entry(cfg.zoo), cfg.weights_dir)), True)]
    if getattr(cfg, "hf_folder", ""):
        return [local_path(cfg.hf_folder, "hf_folder")]
    if cfg.checkpoint:
        return [local_path(cfg.checkpoint, "checkpoint")]
    if not cfg.pretrained:
        return []
    arch = (cfg.model or DEFAULT_MODEL).replace("/", "-")
    need = openclip_weight(arch, cfg.pretrained, ("checkpoint=FILE pretrained=",))  # the tag's file, fetched elsewhere
    return [need] if need else []


def _has_hf_hub() -> bool:
    import importlib.util

    return importlib.util.find_spec("huggingface_hub") is not None


# ---- network -------------------------------------------------------------------------------------

def hubs_offline() -> str:
    """The variable that puts the hubs offline ('' when none does): HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return ""


def go_offline() -> None:
    """Tell huggingface_hub (and so timm, transformers, open_clip) to read its cache without asking the
    network: its flag is read at import, so set both the variable (for child processes) and the flag."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def host_of(url: str) -> str:
    p = urlparse(url)
    return f"{p.scheme}://{p.netloc}"


def reachable(urls: Iterable[str], timeout: float = PROBE_TIMEOUT_S) -> dict[str, bool]:
    """host -> whether it answers an HTTP request (any status) within `timeout` seconds, all hosts at once.

    Each probe runs in a daemon thread, so a resolver or a proxy that hangs costs at most `timeout`.
    """
    import time
    import urllib.error
    import urllib.request

    result: dict[str, bool] = {}

    def probe(host: str) -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(host, method="HEAD"), timeout=timeout).close()
            result[host] = True
        except urllib.error.HTTPError:  # it answered (404, 405...): the network is there
            result[host] = True
        except (OSError, ValueError):
            result[host] = False

    hosts = sorted({host_of(u) for u in urls})
    threads = [threading.Thread(target=probe, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return {h: result.get(h, False) for h in hosts}
