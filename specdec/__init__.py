"""specdec: exact speculative decoding for GPT-SoVITS."""
from specdec.api import engine_for, generate, generate_batch
from specdec.engine import Engine, GenerationOutput, Request
from specdec.errors import SpecdecError
from specdec.models.checkpoint import load_gpt, save_gpt
from specdec.models.gpt import GPT, GPTConfig
from specdec.models.int8 import quantize_gpt
from specdec.sampling import SamplingParams
from specdec.stats import SpecStats
from specdec.upstream import install
from specdec.pipeline import TTS, stream, synthesize
from specdec.voices import Voice

__all__ = ["Engine", "GPT", "GPTConfig", "GenerationOutput", "Request", "SamplingParams", "SpecStats",
           "SpecdecError", "TTS", "Voice", "engine_for", "generate", "generate_batch", "install", "load_gpt",
           "quantize_gpt", "save_gpt", "stream", "synthesize"]
__version__ = "0.1.0"
