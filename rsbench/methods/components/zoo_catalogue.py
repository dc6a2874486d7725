"""The checkpoint zoo as data: one entry per published CLIP-family checkpoint, and finding its file.

Each entry fixes what a checkpoint needs to be scored as its authors scored it: the architecture
WITH its activation (OpenAI-initialised weights were trained with QuickGELU; open_clip >= 2.29 no longer
forces it for a plain 'ViT-B-32', so the entry names 'ViT-B-32-quickgelu'), the input size, resize/crop
and mean/std, where the authors publish the file, its licence and the numbers they report. Adding a
checkpoint is adding one ZooEntry here; rsbench/methods/zoo.py turns every entry into a `zoo:<name>`
method and docs/clip_models.md explains how to get each file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError, unknown

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint. `files`: accepted names under the weights folder (first = canonical)."""

    name: str
    family: str
    loader: str  # openclip | hf_clip | hf_siglip
    arch: str  # open_clip architecture (with -quickgelu where the weights need it); '' for HF folders
    activation: str  # quick_gelu | gelu | gelu_pytorch_tanh (what the weights were trained with)
    files: tuple[str, ...]
    image_size: int
    resize: str  # how the authors preprocess: "shortest side to size, center crop" etc.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # where the authors publish the file
    license: str
    init: str  # what the weights were initialised from (decides the activation)
    published: tuple[tuple[str, float, str], ...] = ()  # (dataset, mR, selection) as the authors report
    sha256: str = ""  # of the canonical file, where known ('' = not published)

    @property
    def method_name(self) -> str:
        return f"zoo:{self.name}"


_RC = "https://huggingface.co/chendelong/RemoteCLIP (files RemoteCLIP-<arch>.pt)"
_GEO = "https://huggingface.co/Zilun/GeoRSCLIP (folder ckpt/)"
_SKY = "https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt/<name>.zip (unzip; SkyScript README)"
_CROP = "resize shortest side to image_size (bicubic), center crop"

ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("remoteclip-rn50", "RemoteCLIP", "openclip", "RN50-quickgelu", "quick_gelu",
             ("RemoteCLIP-RN50.pt",), 224, _CROP, OPENAI_MEAN, OPENAI_STD, _RC, "Apache-2.0", "OpenAI CLIP RN50",
             (("rsicd", 30.58, "test"), ("rsitmd", 46.21, "test"))),
    ZooEntry("remoteclip-vit-b-32", "RemoteCLIP", "openclip", "ViT-B-32-quickgelu", "quick_gelu",
             ("RemoteCLIP-ViT-B-32.pt",), 224, _CROP, OPENAI_MEAN, OPENAI_STD, _RC, "Apache-2.0",
             "OpenAI CLIP ViT-B/32", (("rsicd", 35.26, "test"), ("rsitmd", 49.38, "test"), ("ucm", 56.36, "test"))),
    ZooEntry("remoteclip-vit-l-14", "RemoteCLIP", "openclip", "ViT-L-14-quickgelu", "quick_gelu",
             ("RemoteCLIP-ViT-L-14.pt",), 224, _CROP, OPENAI_MEAN, OPENAI_STD, _RC, "Apache-2.0",
             "OpenAI CLIP ViT-L/14", (("rsicd", 36.35, "test"), ("rsitmd", 50.52, "test"))),
    ZooEntry("georsclip-vit-b-32", "GeoRSCLIP", "openclip", "ViT-B-32-quickgelu", "quick_gelu",
             ("RS5M_ViT-B-32.pt",), 224, _CROP, OPENAI_MEAN, OPENAI_STD, _GEO, "CC-BY-4.0 (RS5M; see the HF card)",
             "OpenAI CLIP ViT-B/32", (("rsicd", 26.06, "zero-shot"), ("rsitmd", 35.33, "zero-shot"))),
    ZooEntry("georsclip-vit-b-32-ret2", "GeoRSCLIP", "openclip", "ViT-B-32-quickgelu", "quick_gelu",
             ("RS5M_ViT-B-32_RET-2.pt",), 224, _CROP, OPENAI_MEAN, OPENAI_STD, _GEO,
             "CC-BY-4.0 (RS5M; see the HF card)", "GeoRSCLIP ViT-B/32 fine-tuned on RSICD+RSITMD (RET-2)",
             (("rsicd", 38.87, "not stated"), ("rsitmd", 51.81, "not stated"))),
    ZooEntry("georsclip-vit-b-32-rsicd", "GeoRSCLIP", "openclip", "ViT-B-32-quickgelu", "quick_gelu",
             ("RS5M_ViT-B-32_RSICD.pt",), 224, _CROP, OPENAI_MEAN, OPENAI_STD, _GEO,
             "CC-BY-4.0 (RS5M; see the HF card)", "GeoRSCLIP ViT-B/32 fine-tuned on RSICD",
             (("rsicd", 38.00, "test"),)),
    ZooEntry("georsclip-vit-l-14", "GeoRSCLIP", "openclip", "ViT-L-14-quickgelu", "quick_gelu",
             ("RS5M_ViT-L-14.pt",), 224, _CROP, OPENAI_MEAN, OPENAI_STD, _GEO, "CC-BY-4.0 (RS5M; see the HF card)",
             "OpenAI CLIP ViT-L/14"),
    ZooEntry("georsclip-vit-l-14-336", "GeoRSCLIP", "openclip", "ViT-L-14-336-quickgelu", "quick_gelu",
             ("RS5M_ViT-L-14-336.pt",), 336, _CROP, OPENAI_MEAN, OPENAI_STD, _GEO,
             "CC-BY-4.0 (RS5M; see the HF card)", "OpenAI CLIP ViT-L/14@336"),
    ZooEntry("georsclip-vit-h-14", "GeoRSCLIP", "openclip", "ViT-H-14", "gelu",
             ("RS5M_ViT-H-14.pt",), 224, _CROP, OPENAI_MEAN, OPENAI_STD, _GEO, "CC-BY-4.0 (RS5M; see the HF card)",
             "LAION-2B open_clip ViT-H-14 (GELU)", (("rsicd", 28.48, "zero-shot"), ("rsitmd", 40.38, "zero-shot"))),
    ZooEntry("skyclip-vit-b-32", "SkyCLIP", "openclip", "ViT-B-32", "gelu",
             ("SkyCLIP_ViT_B32_top50pct/epoch_20.pt", "SkyCLIP_ViT_B32_top50pct.pt"), 224, _CROP,
             OPENAI_MEAN, OPENAI_STD, _SKY, "not stated in the SkyScript README", "open_clip laion2b_e16 ViT-B-32"),
    ZooEntry("skyclip-vit-l-14", "SkyCLIP", "openclip", "ViT-L-14-quickgelu", "quick_gelu",
             ("SkyCLIP_ViT_L14_top30pct/epoch_20.pt", "SkyCLIP_ViT_L14_top30pct.pt"), 224, _CROP,
             OPENAI_MEAN, OPENAI_STD, _SKY, "not stated in the SkyScript README", "OpenAI CLIP ViT-L/14"),
    ZooEntry("openai-vit-b-32", "CLIP (OpenAI)", "openclip", "ViT-B-32-quickgelu", "quick_gelu",
             ("vit_base_patch32_clip_224.openai/open_clip_pytorch_model.bin", "openai-ViT-B-32.bin"), 224, _CROP,
             OPENAI_MEAN, OPENAI_STD, "https://huggingface.co/timm/vit_base_patch32_clip_224.openai", "MIT",
             "OpenAI", (("rsicd", 15.04, "zero-shot"), ("rsitmd", 23.89, "zero-shot"))),
    ZooEntry("openai-vit-l-14", "CLIP (OpenAI)", "openclip", "ViT-L-14-quickgelu", "quick_gelu",
             ("vit_large_patch14_clip_224.openai/open_clip_pytorch_model.bin", "openai-ViT-L-14.bin"), 224, _CROP,
             OPENAI_MEAN, OPENAI_STD, "https://huggingface.co/timm/vit_large_patch14_clip_224.openai", "MIT",
             "OpenAI"),
    ZooEntry("clip-rsicd-v2", "CLIP-rsicd (flax-community)", "hf_clip", "", "quick_gelu",
             ("clip-rsicd-v2",), 224, _CROP, OPENAI_MEAN, OPENAI_STD,
             "https://huggingface.co/flax-community/clip-rsicd-v2 (a transformers folder)", "see the HF card",
             "OpenAI CLIP ViT-B/32 (transformers), fine-tuned on RSICD+UCM+Sydney",
             (("rsicd", 30.14, "off-the-shelf (VT-RSBS re-eval)"),)),
    ZooEntry("git-rsclip", "Git-RSCLIP", "hf_siglip", "", "gelu_pytorch_tanh",
             ("Git-RSCLIP",), 256, "resize to image_size x image_size (bicubic), no crop", HALF, HALF,
             "https://huggingface.co/lcybuaa/Git-RSCLIP (a transformers SigLIP folder)", "Apache-2.0 (HF card)",
             "Google SigLIP large-patch16-256"),
)


def zoo_entries() -> tuple[ZooEntry, ...]:
    return ZOO


def get_entry(name: str) -> ZooEntry:
    """The entry called `name` (with or without the 'zoo:' prefix); UserError with a suggestion."""
    key = name.removeprefix("zoo:")
    for e in ZOO:
        if e.name == key:
            return e
    raise unknown("zoo checkpoint", key, [e.name for e in ZOO])


def entry_for_file(path: str | Path) -> ZooEntry | None:
    """The entry whose file this is (matched on its last path parts), or None."""
    p = Path(path)
    for e in ZOO:
        for f in e.files:
            parts = Path(f).parts
            if tuple(p.parts[-len(parts):]) == parts:
                return e
    return None


def find_weights(entry: ZooEntry, weights_dir: str | Path) -> Path:
    """The entry's file (or HF folder) inside `weights_dir`; a one-line UserError naming what to download."""
    folder = Path(weights_dir).expanduser()
    if not str(weights_dir) or not folder.is_dir():
        where = f"'{weights_dir}' is not a folder" if str(weights_dir) else "no weights folder given"
        raise UserError(f"zoo:{entry.name}: {where}; pass --weights-dir DIR (or --set weights_dir=DIR) holding "
                        f"{entry.files[0]} from {entry.source}")
    for f in entry.files:
        cand = folder / f
        if cand.is_file() if entry.loader == "openclip" else cand.is_dir():
            return cand
    raise UserError(f"zoo:{entry.name}: {folder / entry.files[0]} not found; download {entry.files[0]} "
                    f"from {entry.source} into {folder}")
