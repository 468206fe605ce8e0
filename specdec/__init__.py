"""specdec: exact speculative decoding for GPT-SoVITS."""
import os
import sys

if "torch" not in sys.modules:
    # GNU OpenMP (torch's threads and specdec's CPU kernels) spins ~300k pauses before a waiting thread sleeps; on a
    # machine busy with other work that makes a parallel op cost a scheduler time slice. Beside a 2-thread job
    # (2026-11-26, 2 cores) the v2 shape's AR ran 39-43 tok/s at 1000 spins but 35 or under 1.3 at the default, the
    # demo voice 298-355 against 308 or 4.6; idle, v2 is unchanged and the demo ~10% slower. Only read when libgomp
    # loads (with torch); an explicit GOMP_SPINCOUNT wins.
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
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
