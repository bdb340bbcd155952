"""Decoding of user media (images, videos, PDF pages) into arrays and PIL images, with typed refusals."""
