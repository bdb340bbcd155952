"""omniret: train, ingest, serve and search multimodal (text, image, video, PDF page) embedding models."""

__version__ = "0.1.0"
