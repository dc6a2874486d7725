"""VSE++ (Faghri et al., BMVC 2018): CNN image encoder + GRU text encoder, hardest-negative triplet.

The classic reference row of every RS retrieval table. Image: timm backbone, global pool, linear
projection. Text: word embeddings -> GRU, last real hidden state, linear projection. Both
L2-normalised; score = cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..contracts import require_at_least
from .base import Batch, LossOutput, MethodContext, RetrievalMethod, Tokenizer, same_image_mask
from .components.backbones import create_backbone
from .components.triplet import hinge_triplet
from .components.vocab import Vocabulary, VocabularyState, WordTokenizer
from .components.weights import WeightNeed, backbone_needs
from .registry import register_method


@dataclass
class VSEConfig:
    backbone: str = "resnet152"
    pretrained: bool = True
    backbone_weights: str = ""
    backbone_partial: bool = False  # accept a backbone_weights file that covers only part of the backbone
    embed_dim: int = 1024
    word_dim: int = 300
    hidden_dim: int = 1024
    margin: float = 0.2
    hardest: bool = True  # VSE++ max-violation; False = sum over negatives (VSE0)
    # Sum over negatives for the first N training steps, then hardest: from random init the
    # max-violation loss alone tends to collapse (the VSE++ paper starts from ImageNet weights).
    hardest_after_steps: int = 0
    min_word_count: int = 1
    max_words: int = 48

    def validate(self) -> None:
        """Checked at resolution (rsbench.config.schema.check_fields), before any data is loaded."""
        require_at_least(self, "model.", {"embed_dim": 1, "word_dim": 1, "hidden_dim": 1, "max_words": 1})


@register_method(
    "vsepp",
    "VSE++: CNN + GRU dual encoder, hinge triplet on hardest negatives (Faghri et al. 2018)",
    presets={
        "small": {"backbone": "resnet18", "pretrained": False, "embed_dim": 256, "word_dim": 128,
                  "hidden_dim": 256, "hardest_after_steps": 150, "train.image_size": 64, "train.epochs": 5,
                  "train.batch_size": 32, "train.lr": 5e-4, "train.augment": "flip"},
        "paper": {"backbone": "resnet152", "pretrained": True, "train.image_size": 224, "train.resize": 256,
                  "train.epochs": 30, "train.batch_size": 128, "train.lr": 2e-4, "train.lr_step": 15,
                  "train.lr_gamma": 0.1, "train.augment": "crop,flip"},
    },
    display_name="VSE++",
)
class VSEPP(VocabularyState, RetrievalMethod):
    config_cls = VSEConfig

    @classmethod
    def required_weights(cls, config: VSEConfig) -> list[WeightNeed]:
        return backbone_needs(config)

    def __init__(self, config: VSEConfig, context: MethodContext):
        super().__init__(config, context)
        c = config
        self.vocab = Vocabulary.build(context.train_captions, min_count=c.min_word_count)
        self.cnn = create_backbone(c.backbone, pretrained=c.pretrained, weights=c.backbone_weights or None,
                                   partial=c.backbone_partial, num_classes=0)
        self.img_fc = nn.Linear(self.cnn.num_features, c.embed_dim)
        self.embed = nn.Embedding(len(self.vocab), c.word_dim, padding_idx=0)
        self.gru = nn.GRU(c.word_dim, c.hidden_dim, batch_first=True)
        self.txt_fc = nn.Linear(c.hidden_dim, c.embed_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # saved, so resume agrees

    def image_backbone(self) -> nn.Module:
        return self.cnn

    def tokenizer(self) -> Tokenizer:
        return WordTokenizer(self.vocab, self.config.max_words)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.img_fc(self.cnn(images)), dim=-1)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embed(text["input_ids"])
        packed = pack_padded_sequence(x, text["lengths"].cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return F.normalize(self.txt_fc(h[-1]), dim=-1)

    def training_loss(self, batch: Batch) -> LossOutput:
        img = self.encode_images(batch.images)
        txt = self.encode_texts(batch.text)
        scores = img.float() @ txt.float().T
        hardest = self.config.hardest and int(self.train_steps) >= self.config.hardest_after_steps
        if self.training:
            self.train_steps += 1
        # same_image_mask includes the diagonal: positives are never negatives.
        loss = hinge_triplet(scores, same_image_mask(batch.image_ids), self.config.margin, hardest)
        return LossOutput(loss, {"triplet": loss.detach(), "hardest": torch.tensor(float(hardest))})
