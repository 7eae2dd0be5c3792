"""Eve: embeddings of crops and points of images (Eden's "Eve"), similarity maps, the tools of
the Eve benchmark. ``load_eve_model`` + ``embed_boxes`` are the entry points."""

from medfoundry.embed.encoder import EveModel, embed_boxes, load_eve_model, load_images

__all__ = ["EveModel", "embed_boxes", "load_eve_model", "load_images"]
