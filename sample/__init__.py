"""nanoloom sampling: pure sampling functions, token/text generators, and a Hugging Face-shaped pipeline.

>>> from sample import pipeline
>>> generator = pipeline("text-generation", model="runs/shakespeare")
>>> generator("Once upon a time,", max_new_tokens=50, seed=0)
>>> t5 = pipeline("text2text-generation", model="runs/t5")  # a T5 checkpoint: prompt in, output out
>>> t5("Once upon a time,", max_new_tokens=50, num_beams=4)
"""

from sample.generate import beam_search, complete, generate_tokens, stream
from sample.pipeline import Text2TextGenerationPipeline, TextGenerationPipeline, pipeline
from sample.sampling import sample_next

__all__ = [
    "Text2TextGenerationPipeline",
    "TextGenerationPipeline",
    "beam_search",
    "complete",
    "generate_tokens",
    "pipeline",
    "sample_next",
    "stream",
]
