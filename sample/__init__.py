"""nanoloom sampling: the decoding controls, one generation core for GPT and T5, and a Hugging Face-shaped pipeline.

>>> from sample import pipeline
>>> generator = pipeline("text-generation", model="runs/shakespeare")
>>> generator("Once upon a time,", max_new_tokens=50, seed=0)
>>> t5 = pipeline("text2text-generation", model="runs/t5")  # a T5 checkpoint: prompt in, output out
>>> t5("Once upon a time,", max_new_tokens=50, num_beams=4)
"""

from sample.generate import Completion, beam_search, complete, generate, generate_tokens, infill, stream
from sample.pipeline import Text2TextGenerationPipeline, TextGenerationPipeline, pipeline
from sample.sampling import GenerationConfig, sample_next

__all__ = [
    "Completion",
    "GenerationConfig",
    "Text2TextGenerationPipeline",
    "TextGenerationPipeline",
    "beam_search",
    "complete",
    "generate",
    "generate_tokens",
    "infill",
    "pipeline",
    "sample_next",
    "stream",
]
