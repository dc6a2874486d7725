"""Parts that methods are built from: backbones, text towers, vocabulary, losses."""
