"""What transformers' models are, apart from the intervention (``mesa_viz.runtime``
imports this, never the reverse): their parts and shapes, the families run
exactly or refused, loading the default, any HF model and tiny test models."""

from .compat import TESTED, check_transformers
from .families import CHANNELS, REFUSED_FAMILIES, SUPPORTED_FAMILIES, find_rotary
from .loading import DEFAULT_MODEL, default_tokenizer, load_model, notebook_model
from .parts import (ModelDims, decoder_layers, model_device, model_dims,
                    model_dtype, model_name, model_type, train_length_fields, train_length_of,
                    train_length_source)
from .tiny import TINY_FAMILIES, TINY_TRAIN_LENGTH, tiny_model, tiny_tokenizer

__all__ = ["load_model", "default_tokenizer", "notebook_model", "tiny_model", "tiny_tokenizer",
           "DEFAULT_MODEL", "TINY_TRAIN_LENGTH", "TINY_FAMILIES", "train_length_of",
           "train_length_source", "train_length_fields", "find_rotary", "decoder_layers", "model_type", "model_name",
           "model_device", "model_dtype", "ModelDims", "model_dims", "SUPPORTED_FAMILIES",
           "REFUSED_FAMILIES", "CHANNELS", "check_transformers", "TESTED"]
